"""The `vinbig images` and `vinbig folds` subcommands of the data stage."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vinbig.artifacts import config_path
from vinbig.options import Outcome

logger = logging.getLogger("vinbig")


def cmd_images(args: argparse.Namespace, cfg: dict) -> Outcome:
    from folds import convert_images

    result = convert_images(args.src, args.out, **cfg["images"])
    saved = config_path(args.out, "images")
    if result.errors and not cfg["images"]["allow_errors"]:
        logger.error("%d file(s) could not be converted, listed in %s (use --allow-errors to exit 0)",
                     result.errors, result.errors_csv)
        return Outcome(1, saved)
    return Outcome(0, saved)


def cmd_folds(args: argparse.Namespace, cfg: dict) -> Outcome:
    from folds import make_folds

    make_folds(args.train_csv, args.out, **cfg["folds"])
    return Outcome(0, config_path(args.out, "folds"))


def register(add) -> None:
    """Add this stage's subcommands with ``add(name, func, help, description, options=...)``: each reads every key
    of its section (``convert_images(**cfg["images"])``, ``make_folds(**cfg["folds"])``)."""
    p = add("images", cmd_images, "convert DICOMs to 8-bit PNGs and meta.csv",
            "Convert every .dicom/.dcm under --src to <image_id>.png (long side --size, aspect kept) with "
            "the file's modality and VOI transforms, MONOCHROME1 inverted. Writes meta.csv (sizes for mapping "
            "boxes back) and errors.csv (files that could not be read, with the reason). Rerunning skips "
            "images already done, also after a run stopped by a full disk, a killed worker process or SIGTERM; a "
            "rerun with another --size, --voi or --percentiles converts every image again. Exits 1 when a file "
            "failed, unless --allow-errors.", options=["images"])
    p.add_argument("--src", required=True, type=Path, metavar="DIR", help="folder searched for DICOM files")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for PNGs, meta.csv, errors.csv")

    p = add("folds", cmd_folds, "validate train.csv, fuse the readers' boxes, split into folds",
            "Validate train.csv (stops naming the row and column of every fault; exact duplicate rows are "
            "reported and counted once), check every box against the size of its image once `vinbig images` has "
            "written WORK/images/train/meta.csv (--outside-boxes), fuse the three readers' boxes per image and "
            "class with weighted boxes fusion into WORK/labels.csv, split the images into folds stratified on class "
            "presence into WORK/folds.csv, and keep every reader's own boxes of those images in WORK/readers.csv "
            "(for detector runs with labels per_reader or their own exclude_readers / reader_weights). The three "
            "files are replaced together.", options=["folds"])
    p.add_argument("--train-csv", required=True, type=Path, dest="train_csv", metavar="PATH",
                   help="the competition's train.csv")
    p.add_argument("--out", required=True, type=Path, metavar="WORK", help="work folder")
