"""The `vinbig` command line: parse, resolve the config, call one stage function, report.

Options given on the command line override the config (file, then ``--set``); the resolved
config of a stage is saved next to its outputs as ``config_<stage>.yaml``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from vinbig import log
from vinbig.artifacts import ArtifactError, config_path
from vinbig.config import ConfigError, default_config_path, load_config, save_config

logger = logging.getLogger("vinbig")


# Modules that add the later stages' subcommands: each has ``register(add)``, where ``add(name, func,
# help, description)`` returns the subparser to fill. They must import nothing heavy (torch, ultralytics)
# at module level, so that ``vinbig --help`` stays fast.
STAGE_COMMANDS = ("detector.cli", "classifier.cli", "fusion.cli", "vinbig.demo", "vinbig.kaggle")


class UserError(RuntimeError):
    """An error the user can fix; printed without a traceback."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only where it tells something: not None, False, an empty list or a count's 0,
    and not when the help text already names the default (options that fall back to the config say so)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if (d is None or d is False or d == [] or d is argparse.SUPPRESS or "default" in text
                or isinstance(action, argparse._CountAction)):
            return text
        return super()._get_help_string(action)


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("configuration and output")
    g.add_argument("--config", metavar="FILE", type=Path, default=None,
                   help=f"YAML config with the keys to change; the others keep the defaults of "
                        f"{default_config_path()} (without --config, vinbig demo starts from configs/demo.yaml)")
    g.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override one config key, value read as YAML (repeatable), e.g. --set images.size=512")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    g.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    return p


def resolve(args: argparse.Namespace, section: str, names: Sequence[str]) -> dict:
    """The config with the command-line options `names` (None when not given) written into `section`."""
    cfg = load_config(args.config, args.overrides)
    for name in names:
        value = getattr(args, name)
        if value is not None:
            cfg[section][name] = value
    return cfg


# --------------------------------------------------------------------------- subcommands


def cmd_synth(args: argparse.Namespace) -> int:
    from vinbig.synth import make_dataset

    cfg = resolve(args, "synth", ["n_train", "n_test", "seed", "size", "workers"])
    summary = make_dataset(args.out, **cfg["synth"])
    save_config(cfg, config_path(args.out, "synth"), ["synth"])
    logger.info("synthetic dataset in %s: %s", args.out, ", ".join(f"{k} {v}" for k, v in summary.items()))
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    from folds import convert_images

    cfg = resolve(args, "images", ["size", "workers", "allow_errors"])
    save_config(cfg, config_path(args.out, "images"), ["images"])
    summary = convert_images(args.src, args.out, **cfg["images"])
    if summary["errors"] and not cfg["images"]["allow_errors"]:
        logger.error("%d file(s) could not be converted, listed in %s (use --allow-errors to exit 0)",
                     summary["errors"], summary["errors_csv"])
        return 1
    return 0


def cmd_folds(args: argparse.Namespace) -> int:
    from folds import make_folds

    cfg = resolve(args, "folds", ["n_folds", "seed", "iou_thr", "exclude_readers"])
    save_config(cfg, config_path(args.out, "folds"), ["folds"])
    make_folds(args.train_csv, args.out, **cfg["folds"])
    return 0


def _readers(text: str) -> list[str]:
    return [r.strip() for r in text.split(",") if r.strip()]


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="vinbig",
        description="Chest X-ray abnormality detection for the VinBigData competition: "
        "synthetic data, DICOM conversion, reader consolidation and folds, YOLOv8 detectors, a 'No finding' "
        "classifier, box fusion and the submission.",
        epilog="Run 'vinbig COMMAND --help' for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable, help: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=description,
                           formatter_class=_HelpFormatter)
        p.set_defaults(func=func)
        return p

    p = add("synth", cmd_synth, "write a synthetic dataset in the Kaggle layout",
            "Write train/*.dicom, test/*.dicom, train.csv and sample_submission.csv in the layout of the "
            "Kaggle competition: chest-like radiographs with class-specific lesions, three readers per image, "
            "mixed photometry, bit depths, VOI tags and JPEG 2000 compression. Deterministic for a seed.")
    p.add_argument("--out", required=True, type=Path, metavar="DATA", help="dataset folder to write")
    p.add_argument("--n-train", type=int, dest="n_train", help="train images (config synth.n_train)")
    p.add_argument("--n-test", type=int, dest="n_test", help="test images (config synth.n_test)")
    p.add_argument("--seed", type=int, help="random seed (config synth.seed)")
    p.add_argument("--size", type=int, help="median image height in px; 2430 for real-size (config synth.size)")
    p.add_argument("--workers", type=int, help="processes, 0 = one per core (config synth.workers)")

    p = add("images", cmd_images, "convert DICOMs to 8-bit PNGs and meta.csv",
            "Convert every .dicom/.dcm under --src to <image_id>.png (long side --size, aspect kept) with "
            "the file's modality and VOI transforms, MONOCHROME1 inverted. Writes meta.csv (sizes for mapping "
            "boxes back) and errors.csv (files that could not be read, with the reason). Rerunning skips "
            "images already done. Exits 1 when a file failed, unless --allow-errors.")
    p.add_argument("--src", required=True, type=Path, metavar="DIR", help="folder searched for DICOM files")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for PNGs, meta.csv, errors.csv")
    p.add_argument("--size", type=int, help="long side of the PNG in px (config images.size)")
    p.add_argument("--workers", type=int, help="processes, 0 = one per core (config images.workers)")
    p.add_argument("--allow-errors", action="store_const", const=True, dest="allow_errors",
                   help="exit 0 even when some files failed")

    p = add("folds", cmd_folds, "validate train.csv, fuse the readers' boxes, split into folds",
            "Validate train.csv (stops naming the row and column of every fault), fuse the three readers' "
            "boxes per image and class with weighted boxes fusion into WORK/labels.csv, and split the images "
            "into folds stratified on class presence into WORK/folds.csv.")
    p.add_argument("--train-csv", required=True, type=Path, dest="train_csv", metavar="PATH",
                   help="the competition's train.csv")
    p.add_argument("--out", required=True, type=Path, metavar="WORK", help="work folder")
    p.add_argument("--n-folds", type=int, dest="n_folds", help="number of folds (config folds.n_folds)")
    p.add_argument("--seed", type=int, help="split seed (config folds.seed)")
    p.add_argument("--iou-thr", type=float, dest="iou_thr", help="WBF IoU threshold (config folds.iou_thr)")
    p.add_argument("--exclude-readers", type=_readers, dest="exclude_readers", metavar="R8,R9",
                   help="comma-separated readers to ignore (config folds.exclude_readers)")
    for module in STAGE_COMMANDS:
        importlib.import_module(module).register(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.setup(-1 if args.quiet else args.verbose)
    try:
        return args.func(args)
    except (ConfigError, ArtifactError, UserError) as e:
        logger.error("%s", e)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted; rerun the same command to continue")
        return 130


if __name__ == "__main__":
    sys.exit(main())
