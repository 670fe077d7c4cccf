"""The `vinbig` command line: parse, resolve the config, call one command, save its config, report.

Each stage package has a command module (``folds.cli``, ``detector.cli``, ...) whose ``register(add)`` adds its
subcommands. A command names the config sections it uses: every key of those sections is an option of it
(:mod:`vinbig.options`), and its resolved config (defaults, ``--config``, ``--set``, options) is saved as
``config_<name>.yaml`` where its :class:`~vinbig.options.Outcome` says, once it has succeeded.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterable, Sequence

from vinbig import log
from vinbig.config import default_config_path, save_config
from vinbig.errors import VinbigError
from vinbig.options import Outcome, add_settings, resolve

logger = logging.getLogger("vinbig")

# Modules that add subcommands: each has ``register(add)``. They must import nothing heavy (torch,
# ultralytics) at module level, so that ``vinbig --help`` stays fast.
COMMAND_MODULES = ("vinbig.app.synth", "folds.cli", "detector.cli", "classifier.cli", "fusion.cli",
                   "vinbig.app.demo", "vinbig.app.kaggle", "vinbig.app.runs",
                   "vinbig.app.predict")


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

    def add(name: str, func: Callable, help: str, description: str, sections: Sequence[str] = (),
            aliases: dict[str, str] | None = None, reads: Sequence[str] = (),
            extra: Callable[[argparse.Namespace], Iterable[Path]] | None = None) -> argparse.ArgumentParser:
        """A subcommand calling ``func(args, cfg)`` with an option for every key of `sections` (`aliases`: more
        flags, e.g. ``{"--batch": "predict_batch"}``); `reads`: other sections it uses, saved with its config but
        set with ``--set`` only; `extra(args)` names config files read before ``--set``."""
        p = sub.add_parser(name, parents=[common], help=help, description=description,
                           formatter_class=_HelpFormatter)
        for section in sections:
            add_settings(p, section, aliases or {})
        p.set_defaults(func=func, sections=tuple(sections), saves=(*sections, *reads), extra=extra)
        return p

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(add)
    return parser


def run(args: argparse.Namespace) -> int:
    """Resolve the config, run the command, save the config where its outcome says."""
    cfg = resolve(args, args.extra(args) if args.extra else ())
    outcome = args.func(args, cfg)
    if not isinstance(outcome, Outcome):
        outcome = Outcome(int(outcome or 0))
    if outcome.config is not None:
        save_config(cfg, outcome.config, args.saves or None)
    return outcome.code


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``timeout``, ``docker stop``, a job scheduler, a closed terminal), raised as Ctrl-C is:
    the command stops its process pool and keeps what it finished."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, frame) -> None:
    for other in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(other, signal.SIG_DFL)  # a second signal ends the process at once (its workers follow it)
    raise Stopped(signum)


@contextlib.contextmanager
def _signals_as_interrupts():
    """SIGTERM and SIGHUP raise :class:`Stopped` in the main thread while the command runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.setup(-1 if args.quiet else args.verbose)
    try:
        with _signals_as_interrupts():
            return run(args)
    except VinbigError as e:
        logger.error("%s", e)
        return 2
    except OSError as e:  # a read-only folder, a full disk, a file where a folder should be
        where = f" {e.filename}" if e.filename else ""
        logger.error("cannot read or write%s: %s; check the path, its permissions and the free disk space",
                     where, e.strerror or e)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C: 130; SIGTERM: 143; SIGHUP: 129 (128 + the signal, as a shell reports it)
        signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
        how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        logger.error("%s; what finished is kept (converted images, a training's last epoch): rerun the same command "
                     "to go on from there (training: with --resume); a command that writes one file at the end "
                     "(predictions, fuse, tune, report) starts that file over", how)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
