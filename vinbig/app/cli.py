"""The `vinbig` command line: parse, resolve the config, call one command, save its config, report.

Each stage package has a command module (``folds.cli``, ``detector.cli``, ...) whose ``register(add)`` adds its
subcommands. A command declares the config keys it reads: each is an option of it (:mod:`vinbig.options`), and no
other key is; a flag it does not take is refused in one line that names the commands taking it, and a ``--set`` of a
key it does not read is applied but warned about. Its resolved config (defaults, ``--config``, ``--set``, options) is
resolved once and saved as ``config_<name>.yaml`` where its :class:`~vinbig.options.Outcome` says, once it has
succeeded.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterable, Sequence

from vinbig import log
from vinbig.config import default_config_path, parse_override, save_config
from vinbig.errors import VinbigError
from vinbig.options import Outcome, add_settings, resolve, setting_names

logger = logging.getLogger("vinbig")

# Modules that add subcommands: each has ``register(add)``. They must import nothing heavy (torch,
# ultralytics) at module level, so that ``vinbig --help`` stays fast.
COMMAND_MODULES = ("vinbig.app.synth", "folds.cli", "detector.cli", "classifier.cli", "vinbig.app.train", "fusion.cli",
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


class _CommandParser(argparse.ArgumentParser):
    """The parser of one command: an error is one line that names the command and where its options are listed."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} ('{self.prog} --help' lists its options)\n")


class _Parser(argparse.ArgumentParser):
    """`vinbig`: an option its command does not take is refused in one line naming the commands that take it."""

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            commands = _commands(self)
            commands[parsed.command].error(_not_taken(parsed.command, extras, commands))
        return parsed


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return dict(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)


def _not_taken(command: str, extras: list[str], commands: dict[str, argparse.ArgumentParser]) -> str:
    """Why `extras` are refused by `command`: each flag with the commands that take it (and the config keys they set
    there), or a close option of `command`."""
    flags = [a.split("=")[0] for a in extras if a.startswith("--") or (a.startswith("-") and a[1:2].isalpha())]
    if not flags:
        return f"unrecognized arguments: {' '.join(extras)}"
    own = commands[command]._option_string_actions
    said = []
    for flag in dict.fromkeys(flags):
        takers = {name: p._option_string_actions[flag].dest for name, p in commands.items()
                  if name != command and flag in p._option_string_actions}
        if takers:
            keys = sorted({dest for dest in takers.values() if "." in dest})
            what = f" (it sets {', '.join(keys)} there)" if keys else ""
            said.append(f"{flag} is not an option of {command}; {', '.join(takers)} take{'s' * (len(takers) == 1)} "
                        f"it{what}")
        else:  # a typo: the closest option of the command, else of any command
            every: dict[str, list[str]] = {}
            for name, p in commands.items():
                for f in p._option_string_actions:
                    every.setdefault(f, []).append(name)
            close = (difflib.get_close_matches(flag, list(own), n=1, cutoff=0.8)
                     or difflib.get_close_matches(flag, list(every), n=1, cutoff=0.6))
            where = "" if not close or close[0] in own else f" (an option of {', '.join(every[close[0]])})"
            said.append(f"{flag} is not an option of any command"
                        + (f"; did you mean {close[0]}{where}?" if close else ""))
    return "; ".join(said)


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(
        prog="vinbig",
        description="Chest X-ray abnormality detection for the VinBigData competition: "
        "synthetic data, DICOM conversion, reader consolidation and folds, YOLO detectors, a 'No finding' "
        "classifier, box fusion and the submission.",
        epilog="Run 'vinbig COMMAND --help' for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_CommandParser)
    readers: dict[str, list[str]] = {}  # key -> the commands that read it (not those that pass every key on)

    def add(name: str, func: Callable, help: str, description: str, options: Sequence[str] = (),
            reads: Sequence[str] = (), aliases: dict[str, str] | None = None, saves: Sequence[str] | str | None = None,
            extra: Callable[[argparse.Namespace], Iterable[Path]] | None = None,
            config: Path | None = None) -> argparse.ArgumentParser:
        """A subcommand calling ``func(args, cfg)``.

        `options`: the config keys it reads that are options of it (``section.key``, or ``section`` for each key
        of it); `reads`: the other keys it reads, set with ``--set`` only (``runs.detector``; ``all``: every key,
        for a command that passes its config on); `aliases`: more flags, e.g. ``{"--batch": "predict_batch"}``;
        `saves`: the sections saved with its config (default: those of `options` and `reads`; ``"all"``: every
        section); `extra(args)`: config files read before ``--set``; `config`: its ``--config`` when none is given
        (default: configs/default.yaml alone)."""
        # no abbreviations: train-detector --conf (prediction's) is refused, not taken for --config
        p = sub.add_parser(name, parents=[common], help=help, description=description,
                           formatter_class=_HelpFormatter, allow_abbrev=False)
        read = setting_names([*options, *reads])
        add_settings(p, setting_names(options), aliases or {})
        if "all" not in reads:
            for key in read:
                readers.setdefault(key, []).append(name)
        if saves is None:
            saves = tuple(dict.fromkeys(key.split(".")[0] for key in read))
        # not set_defaults(config=...): the commands share the --config action, whose default that would change
        p.set_defaults(func=func, reads=frozenset(read), saves=None if saves == "all" else tuple(saves) or None,
                       extra=extra, readers=readers, default_config=config)
        return p

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(add)
    return parser


def _warn_unread(args: argparse.Namespace) -> None:
    """One warning for each key given with ``--set`` that the command does not read: its value is in the resolved
    config (saved where the command saves that section) but changes nothing here."""
    named = {f"{section}.{key}": text for text in args.overrides
             for section, keys in parse_override(text).items() for key in keys}
    for name, text in named.items():
        if name not in args.reads:
            takers = args.readers.get(name, [])
            logger.warning("--set %s: vinbig %s does not read %s, so it changes nothing here%s", text, args.command,
                           name, f" ({', '.join(takers)} read{'s' * (len(takers) == 1)} it)" if takers else "")


def run(args: argparse.Namespace, warn: bool = True) -> int:
    """Resolve the config (once), run the command, save the config where its outcome says. `warn` False: no
    warning for a ``--set`` the command does not read (a step of ``vinbig demo``, whose ``--set`` holds every
    stage's settings)."""
    if args.config is None:
        args.config = args.default_config  # the command's own default (vinbig demo: configs/demo.yaml), else None
    cfg = resolve(args, args.extra(args) if args.extra else ())
    if warn:
        _warn_unread(args)
    outcome = args.func(args, cfg)
    if not isinstance(outcome, Outcome):
        outcome = Outcome(int(outcome or 0))
    if outcome.config is not None:
        save_config(cfg, outcome.config, args.saves)
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


def main(argv: Sequence[str] | None = None, *, pipeline: bool = False) -> int:
    """Run ``vinbig ARGV``; the exit code. `pipeline`: the command is a step of a pipeline that gives every step the
    same ``--set`` (``vinbig demo``, a notebook), so a key it does not read is not warned about."""
    parser = build_parser()
    args = parser.parse_args(argv)
    log.setup(-1 if args.quiet else args.verbose)
    try:
        with _signals_as_interrupts():
            return run(args, warn=not pipeline)
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
        if args.command in ("train", "demo"):  # they resume the stopped folds themselves
            logger.error("%s; every training's last epoch is kept: rerun the same 'vinbig %s' to resume the stopped "
                         "folds", how, args.command)
        else:
            logger.error("%s; what finished is kept (converted images, a training's last epoch): rerun the same "
                         "command to go on from there (training: with --resume); a command that writes one file at "
                         "the end (predictions, fuse, tune, report) starts that file over", how)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
