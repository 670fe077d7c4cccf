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

import difflib
import math
from typing import Callable, Iterable, Mapping, Sequence

from vinbig.artifacts import DEFAULT_RUN, SAFE_ID
from vinbig.config import merge
from vinbig.errors import ConfigError

STAGES = ("detector", "classifier")


def declared(cfg: Mapping, stage: str) -> dict:
    """The runs of `stage` the config names, each with the keys it changes (empty: the run 'default' alone)."""
    runs = (cfg.get("runs") or {}).get(stage) or {}
    if not isinstance(runs, Mapping):
        raise ConfigError(f"runs.{stage} must map run names to the {stage} keys they change, e.g. "
                          f"{{s1024: {{}}, m640: {{imgsz: 640}}}}; got {runs!r}")
    return dict(runs)


def run_names(cfg: Mapping, stage: str, source: str = "") -> list[str]:
    """The runs of `stage` ("detector" or "classifier") in config order; ``["default"]`` when none is named.
    A name YAML reads as a number or a boolean (``1``, ``off``) is refused, as a name that is no safe folder name;
    `source` (the file that declared the runs) starts the message."""
    names = list(declared(cfg, stage)) or [DEFAULT_RUN]
    where = f"{source}: " if source else ""
    for name in names:
        if not isinstance(name, str):
            raise ConfigError(f"{where}runs.{stage} has a run name YAML reads as a {type(name).__name__} ({name!r}), "
                              f"not as a name; quote it, e.g. '{name}'")
        if not SAFE_ID.match(name) or name == "data":
            raise ConfigError(f"{where}runs.{stage}: {name!r} cannot name a run (a folder WORK/{stage}/NAME): use "
                              "letters, digits, '_', '.' and '-', starting with a letter or digit, and not 'data'")
    return names


def run_config(cfg: Mapping, stage: str, name: str, options: Mapping = {}) -> dict:
    """The `stage` section of run `name`: the section with the run's keys over it (unknown keys refused), then
    `options`, the keys given on the command line, which win over a run's keys as over the rest of the config."""
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


def weight_of(weights: Mapping[str, float], name: str) -> float:
    """A run's weight in `weights` (fusion.run_weights, fusion.classifier_weights); unnamed runs weigh 1."""
    return float(weights.get(name, 1.0))


def check_weights(weights: Mapping[str, float], names: Sequence[str], key: str, source: str = "") -> None:
    """Every weight of `key` is a finite number >= 0 and at least one of `names` weighs more than 0 (`source`: where
    the weights come from, for the message)."""
    where = f"{source}: " if source else ""
    for name, w in weights.items():
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"{where}fusion.{key}.{name} is {w!r}; a run's weight is a finite number >= 0")
    if names and not any(weight_of(weights, n) > 0 for n in names):
        raise ConfigError(f"{where}fusion.{key} gives every run ({', '.join(names)}) weight 0; give one a weight "
                          "above 0")


WEIGHTS = {"detector": "run_weights", "classifier": "classifier_weights"}  # the fusion key weighing a stage's runs


def check_names(cfg: Mapping, origin: Callable[[str], str]) -> None:
    """The keys that name runs, checked when the config is read: each stage's run names (safe folder names, not
    numbers or booleans), and fusion.run_weights and fusion.classifier_weights, which must name runs of the config
    and leave one above 0. `origin(key)` is the file, ``--set`` or option that set ``key`` last."""
    for stage, key in WEIGHTS.items():
        names = run_names(cfg, stage, origin(f"runs.{stage}"))
        weights = cfg["fusion"][key]
        unknown = [str(n) for n in weights if n not in names]
        if unknown:
            close = difflib.get_close_matches(unknown[0], names, n=1, cutoff=0.6)
            how = f"declared in runs.{stage}" if declared(cfg, stage) else f"none is declared in runs.{stage}"
            raise ConfigError(
                f"{origin(f'fusion.{key}')}: fusion.{key} names {', '.join(unknown)}, not a {stage} run of the config; "
                f"its {stage} runs are {', '.join(names)} ({how})" + (f"; did you mean {close[0]}?" if close else ""))
        check_weights(weights, names, key, origin(f"fusion.{key}"))
