"""`vinbig synth`: a synthetic dataset in the Kaggle layout (the generator is :mod:`vinbig.synth`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vinbig.artifacts import config_path
from vinbig.options import Outcome

logger = logging.getLogger("vinbig")


def cmd_synth(args: argparse.Namespace, cfg: dict) -> Outcome:
    from vinbig.synth import claim, make_dataset

    result = make_dataset(args.out, **cfg["synth"])
    claim(args.out).add([config_path(args.out, "synth")])  # saved there once this returns
    logger.info("synthetic dataset in %s: %s", result.out, result)
    logger.info("the test images' truth is in %s, for the synthetic leaderboard only (no stage reads it): "
                "vinbig score --truth %s --submission WORK/submission.csv", result.truth, result.truth)
    return Outcome(0, config_path(args.out, "synth"))


def register(add) -> None:
    p = add("synth", cmd_synth, "write a synthetic dataset in the Kaggle layout",
            "Write train/*.dicom, test/*.dicom, train.csv and sample_submission.csv in the layout of the "
            "Kaggle competition: chest-like radiographs with class-specific lesions, three readers per image "
            "(the prolific R8, R9 and R10 with habits of their own), mixed photometry, bit depths, VOI tags and "
            "JPEG 2000 compression; and the test images' truth in private/test_labels.csv, which no stage reads, "
            "for 'vinbig score' (the synthetic leaderboard). Deterministic for a seed. DATA must be missing, empty "
            "or an earlier 'vinbig synth' output (its .vinbig-manifest.json): a real dataset or any other folder is refused "
            "and left as it is; a rerun removes the earlier run's DICOMs it does not write again, and only those.",
            options=["synth"])
    p.add_argument("--out", required=True, type=Path, metavar="DATA", help="dataset folder to write")
