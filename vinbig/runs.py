"""Named runs: several detector and classifier models trained on one WORK's folds, fused as one ensemble.

The config's ``runs`` section names the runs of each stage, each as the keys of its stage's section that it
changes::

    runs:
      detector:
        s1024: {}                                  # the detector section as it is
        m640: {model: yolov8m.yaml, imgsz: 640}
        readers: {labels: per_reader}
      classifier:
        b0: {}

With no run named, each stage has one run, ``default``: the stage section as it is. A run's folds live in
``WORK/{stage}/{run}/fold{k}/`` and its predictions carry its name in their ``run`` column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

# the runs section is checked where a config is read (vinbig.config): the run names, and the weights naming runs
from vinbig.config import WEIGHTS, check_names, check_weights, declared, merge, run_names, weight_of, with_saved
from vinbig.errors import ConfigError

__all__ = ["STAGES", "WEIGHTS", "check_names", "check_weights", "declared", "one_run", "others", "run_argument",
           "run_config", "run_names", "select", "weight_of"]

STAGES = ("detector", "classifier")


def run_config(cfg: Mapping, stage: str, name: str, options: Mapping = {}, saved: Path | None = None,
               keep: Iterable[str] = ()) -> dict:
    """The `stage` section of run `name`: the section with the run's keys over it (unknown keys refused), then
    `options`, the keys given on the command line, which win over a run's keys as over the rest of the config.

    `saved`: the config the run's training saved beside its weights (``WORK/{stage}/{name}/fold0/config_{stage}.yaml``),
    whose `stage` section is read over `cfg`'s first, but for the keys of `keep` (``section.key``: those given on the
    command line, :func:`vinbig.options.explicit`), which keep `cfg`'s value: the section a config resolved with
    that file after its others would give, without resolving it again."""
    if saved is not None:
        cfg = with_saved(cfg, saved, stage, keep)
    runs = declared(cfg, stage)
    names = run_names(cfg, stage)
    if name not in names:
        raise ConfigError(f"{name!r} is not a {stage} run of the config; its runs are {', '.join(names)} "
                          f"(declare more under runs.{stage})")
    keys = runs.get(name) or {}
    if not isinstance(keys, Mapping):
        raise ConfigError(f"runs.{stage}.{name} must be a mapping of {stage} keys, e.g. {{imgsz: 640}}; got {keys!r}")
    return {**merge({stage: cfg[stage]}, {stage: dict(keys)}, f"runs.{stage}.{name}")[stage], **options}


def select(cfg: Mapping, stage: str, chosen: Iterable[str] | None = None) -> list[str]:
    """The runs a command works on: `chosen` (each checked against the config), else every run of `stage`."""
    names = run_names(cfg, stage)
    if not chosen:
        return names
    chosen = list(dict.fromkeys(chosen))
    for name in chosen:
        run_config(cfg, stage, name)
    return chosen


def others(cfg: Mapping, stage: str, chosen: Iterable[str]) -> list[str]:
    """The runs of `stage` not in `chosen`: those whose predictions a command on `chosen` keeps."""
    return [name for name in run_names(cfg, stage) if name not in set(chosen)]


def one_run(cfg: Mapping, stage: str, chosen: str | None) -> str:
    """The run a training command trains: `chosen`, else the only run of `stage`; several runs need --run."""
    if chosen:
        run_config(cfg, stage, chosen)
        return chosen
    names = run_names(cfg, stage)
    if len(names) > 1:
        raise ConfigError(f"the config has {len(names)} {stage} runs ({', '.join(names)}): give --run NAME")
    return names[0]


def run_argument(parser, stage: str, many: bool) -> None:
    """``--run NAME``: one run to train (`many` False) or runs to predict (repeatable)."""
    if many:
        parser.add_argument("--run", action="append", dest="runs", metavar="NAME",
                            help=f"only this {stage} run of the config's runs.{stage} (repeatable; default: every run)")
    else:  # --run-name: torchrun takes --run for an abbreviation of its own --run-path and stops
        parser.add_argument("--run", "--run-name", dest="run", metavar="NAME",
                            help=f"the {stage} run of the config's runs.{stage} to train (default: the only one; "
                                 "'default' when none is declared); under torchrun write --run-name")
