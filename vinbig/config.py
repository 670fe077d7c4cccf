"""One commented default config (`configs/default.yaml`), user files and `--set` overrides on top.

A config is a plain two-level dict: ``{section: {key: value}}``. Every key a user names must
exist in the defaults; a typo is rejected with the closest valid keys. Each key's line declares its type and,
for numbers and names from a fixed list, its range: ``conf: 0.001  # (float, 0..1) meaning``. Every value is
checked against both where it is read (a file, ``--set``, an option, a run of the ``runs`` section), and the
error names where it came from, before any command does any work.
"""

from __future__ import annotations

import copy
import difflib
import functools
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from vinbig.artifacts import DEFAULT_RUN, SAFE_ID
from vinbig.errors import ConfigError

_REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# a key of configs/default.yaml: `  key: default  # (type) meaning` or `  key: default  # (type, range) meaning`
_KEY_LINE = re.compile(r"^  (\w+):\s*(.*?)\s+# \(([^)]*)\)\s*(.*)$")
_SECTION_LINE = re.compile(r"^(\w+):\s*$")
# one alternative of a range: LO..HI (either end may be left out), LO..<HI (HI excluded), >X, or a value
_SPAN = re.compile(r"^(?P<lo>[^.<>][^<>]*?)?\.\.(?P<open><)?(?P<hi>[^.<>].*)?$")


@dataclass(frozen=True)
class Setting:
    """One key of configs/default.yaml, as its line declares it: the one place a setting is written."""

    section: str
    key: str
    default: Any  # the value of default.yaml
    text: str  # the default as written there
    type: str  # e.g. int, float, bool, list[float], str|int|list|null
    meaning: str
    range: str = ""  # e.g. 0..1, 1.., 0..<1, >0, -1|1.., none|hflip (of each item of a list, each value of a dict)

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def is_list(self) -> bool:
        return self.type.startswith("list")

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def declared(self) -> str:
        """The type and range as the key's comment declares them: ``float, 0..1``."""
        return f"{self.type}, {self.range}" if self.range else self.type

    def check(self, value: Any, source: str) -> Any:
        """`value` if it has the declared type and range (an int given for a float becomes a float), else a
        ConfigError that names `source` (the file, ``--set`` or option it came from), the key and the rule."""
        if self.type.startswith("dict[str,") and isinstance(value, Mapping):
            for k in value:
                if not isinstance(k, str):  # YAML's 1, 1.5, off, yes: a name that lost its spelling
                    raise ConfigError(f"{source}: {self.name} has a name YAML reads as {_yaml_kind(k)}, not as "
                                      f"a name; quote it as written, e.g. '{_spelt(k)}'")
        fault = _type_fault(self.type, value)
        if fault is not None:
            raise ConfigError(f"{source}: {self.name} expects {self.type}, got {value!r} ({type(value).__name__})"
                              f"{fault}; see the comment on '{self.key}' in {default_config_path()}")
        if self.range:
            spans = _spans(self.range, numeric="int" in self.type or "float" in self.type)
            for where, item in _items(self.name, value):
                if not _within(item, spans):
                    raise ConfigError(f"{source}: {where} {_rule(item, spans, self.range, self.type)}")
        if self.type == "float" and not isinstance(value, bool) and isinstance(value, int):
            value = float(value)
        return value


def packaged_config(name: str) -> Path:
    """A config shipped with vinbig: the repository's `configs/<name>`, else the installed copy."""
    repo = _REPO_CONFIGS / name
    return repo if repo.is_file() else Path(str(resources.files("vinbig.configs") / name))


def default_config_path() -> Path:
    """The commented default config, `configs/default.yaml`."""
    return packaged_config("default.yaml")


@functools.lru_cache(maxsize=4)
def _defaults(path: Path) -> dict:
    """configs/default.yaml, parsed once per process (callers copy it before changing it)."""
    return _read_yaml(path)


@functools.lru_cache(maxsize=4)
def _settings(path: Path) -> tuple[Setting, ...]:
    defaults = _defaults(path)
    out, section = [], None
    for line in path.read_text().splitlines():
        m = _SECTION_LINE.match(line)
        if m:
            section = m.group(1)
            continue
        m = _KEY_LINE.match(line)
        if m and section:
            key, text, declared, meaning = m.groups()
            kind, _, valid = declared.strip().partition(", ")  # types hold no ", ": dict[str,float]
            out.append(Setting(section, key, defaults[section][key], text, kind, meaning.strip(), valid.strip()))
    return tuple(out)


@functools.lru_cache(maxsize=4)
def _declared(path: Path) -> dict[tuple[str, str], Setting]:
    return {(s.section, s.key): s for s in _settings(path)}


def setting(section: str, key: str) -> Setting | None:
    """The declaration of ``section.key`` in configs/default.yaml (None: not declared there)."""
    return _declared(default_config_path()).get((section, key))


# --------------------------------------------------------------------------- types and ranges


def _split(text: str, sep: str) -> list[str]:
    """`text` split at `sep` outside brackets: ``str|list[int|str]`` -> ``['str', 'list[int|str]']``."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += (c == "[") - (c == "]")
        if c == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def _yaml_kind(key: Any) -> str:
    """What YAML made of a mapping key that is not a string, for a message."""
    if isinstance(key, bool):
        return f"the boolean {str(key).lower()} (written {'on, yes or true' if key else 'off, no or false'})"
    return "null" if key is None else f"a number ({type(key).__name__})"


def _spelt(key: Any) -> str:
    return ("yes" if key else "off") if isinstance(key, bool) else str(key)


def _type_fault(kind: str, value: Any) -> str | None:
    """None if `value` has the declared type `kind` (``int``, ``float``, ``list[float]``, ``dict[str,float]``,
    alternatives joined by ``|``), else what is wrong beyond the type itself ('' when nothing more to say)."""
    faults = []
    for alt in _split(kind, "|"):
        base, _, inner = alt.partition("[")
        inner = inner[:-1]
        if base == "null":
            ok = value is None
        elif base == "bool":
            ok = isinstance(value, bool)
        elif isinstance(value, bool):
            ok = False
        elif base == "int":
            ok = isinstance(value, int)
        elif base == "float":
            ok = isinstance(value, (int, float))
        elif base == "str":
            ok = isinstance(value, str)
        elif base == "list":
            ok = isinstance(value, list)
            if ok and inner:
                bad = [v for v in value if _type_fault(inner, v) is not None]
                if bad:
                    faults.append(f": the item {bad[0]!r} is not a {inner}")
                    ok = False
        elif base == "dict":
            ok = isinstance(value, Mapping)
            if ok and inner:
                k_kind, v_kind = _split(inner, ",")
                for k, v in value.items():
                    if _type_fault(k_kind, k) is not None:
                        faults.append(f": the key {k!r} is not a {k_kind}")
                        ok = False
                        break
                    if _type_fault(v_kind, v) is not None:
                        faults.append(f": the value of {k} is not a {v_kind}")
                        ok = False
                        break
        else:
            raise ValueError(f"configs/default.yaml declares an unknown type {alt!r}")
        if ok:
            return None
    return faults[0] if faults else ""


def _spans(valid: str, numeric: bool) -> list[tuple]:
    """A declared range as its alternatives: ``("span", lo, hi, hi_excluded)``, ``(">", x)`` or ``("=", value)``."""
    out: list[tuple] = []
    for alt in (a.strip() for a in valid.split("|")):
        m = _SPAN.match(alt) if numeric else None
        if m:
            lo, hi = m.group("lo"), m.group("hi")
            out.append(("span", float(lo) if lo else None, float(hi) if hi else None, bool(m.group("open"))))
        elif numeric and alt.startswith(">"):
            out.append((">", float(alt[1:])))
        else:
            out.append(("=", float(alt) if numeric else alt))
    return out


def _within(value: Any, spans: list[tuple]) -> bool:
    for kind, *rest in spans:
        if kind == "=":
            if value == rest[0] and type(value) is not bool:
                return True
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        if kind == ">" and value > rest[0]:
            return True
        if kind == "span":
            lo, hi, open_hi = rest
            if (lo is None or value >= lo) and (hi is None or (value < hi if open_hi else value <= hi)):
                return True
    return False


def _g(x: float) -> str:
    return f"{x:g}"


def _rule(value: Any, spans: list[tuple], valid: str, type_: str) -> str:
    """What is wrong with `value` and what it must be, in words: the end of a message that starts with the key."""
    if all(sp[0] == "=" and isinstance(sp[1], str) for sp in spans):
        names = [sp[1] for sp in spans]
        close = difflib.get_close_matches(str(value), names, n=1, cutoff=0.6)
        return f"{value!r} is not one of {', '.join(names)}" + (f" (did you mean {close[0]}?)" if close else "")
    words = []
    for kind, *rest in spans:
        if kind == "=":
            words.append(_g(rest[0]))
        elif kind == ">":
            words.append(f"above {_g(rest[0])}")
        else:
            lo, hi, open_hi = rest
            if hi is None:
                words.append(f"at least {_g(lo)}")
            elif lo is None:
                words.append(f"{'below' if open_hi else 'at most'} {_g(hi)}")
            else:
                words.append(f"from {_g(lo)} to {'below ' if open_hi else ''}{_g(hi)}")
    number = "a finite number" if "float" in type_ else "a whole number"
    return (f"is {value!r}; it must be {number} {' or '.join(words)} (its range in {default_config_path().name}: "
            f"{valid})")


def _items(name: str, value: Any) -> Iterable[tuple[str, Any]]:
    """What a range applies to: the value, each item of a list, each value of a dict; with its name."""
    if isinstance(value, list):
        return [(f"{name}[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return [(f"{name}.{k}", v) for k, v in value.items()]
    if value is None:
        return []
    return [(name, value)]


def settings(section: str | None = None) -> list[Setting]:
    """The settings declared in configs/default.yaml (of one section), in file order."""
    return [s for s in _settings(default_config_path()) if section is None or s.section == section]


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _suggest(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f" Similar keys: {', '.join(close)}." if close else ""


def merge(base: Mapping[str, Mapping[str, Any]], update: Mapping[str, Any], source: str) -> dict:
    """Return `base` updated by `update` (``{section: {key: value}}``), rejecting unknown keys and values of another
    type or outside the declared range; `source` (a file, ``--set ...``) starts each error message."""
    out = copy.deepcopy(dict(base))
    for section, values in update.items():
        if section not in out:
            raise ConfigError(f"{source}: '{section}' is not a config section.{_suggest(str(section), out)}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: section '{section}' must be a mapping of keys, got {values!r}")
        for key, value in values.items():
            if key not in out[section]:
                full = [f"{section}.{k}" for k in out[section]]
                raise ConfigError(
                    f"{source}: '{section}.{key}' is not a valid key.{_suggest(f'{section}.{key}', full)}"
                )
            declared = setting(section, key)
            if section == "runs" and isinstance(value, Mapping):  # a run written `name:` changes no key
                value = {name: {} if keys is None else keys for name, keys in value.items()}
            if declared is not None:
                value = declared.check(value, source)
            if section == "runs" and key in out:  # each run: keys of its stage's section, checked the same way
                for name, keys in value.items():
                    merge({key: out[key]}, {key: keys}, f"{source}: runs.{key}.{name}")
            out[section][key] = value
    return out


def parse_override(text: str) -> dict:
    """``'folds.n_folds=3'`` -> ``{'folds': {'n_folds': 3}}``; the value is read as YAML."""
    name, sep, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ConfigError(f"--set expects section.key=value, got {text!r} (for example --set images.size=512)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML: {e}") from None
    return {section: {key: value}}


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (), extra: Iterable[Path] = (),
                options: Mapping[str, Mapping[str, Any]] = {}) -> dict:
    """Defaults, then the keys of the file at `path`, of each file in `extra` (such as the values a stage
    chose, e.g. WORK/fusion.yaml), then each ``section.key=value`` override, then `options` (``{section: {key:
    value}}``, the command line's own options). Every value is checked as it is read, then the keys that name
    each other: an error names the file, ``--set`` or option to fix, before any command does any work."""
    cfg = copy.deepcopy(_defaults(default_config_path()))
    origin: dict[str, str] = {}

    def apply(update: Mapping, source: str) -> dict:
        for section, values in update.items():
            for key in values if isinstance(values, Mapping) else ():
                origin[f"{section}.{key}"] = source
        return merge(cfg, update, source)

    if path is not None and Path(path).resolve() != default_config_path().resolve():
        cfg = apply(_read_yaml(Path(path)), str(path))
    for file in extra:
        cfg = apply(_read_yaml(Path(file)), str(file))
    for text in overrides:
        cfg = apply(parse_override(text), f"--set {text}")
    for section, values in options.items():
        for key, value in values.items():
            cfg = apply({section: {key: value}}, f"--{key.replace('_', '-')}")
    _check_across(cfg, lambda name: origin.get(name, str(default_config_path())))
    return cfg


# --------------------------------------------------------------------------- the runs section (vinbig.runs uses it)


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


def _check_across(cfg: Mapping, origin: Callable[[str], str]) -> None:
    """What one key's range cannot say: the runs the weights name (:func:`check_names`), detector.extra
    setting a detector key past its range, the percentile window, the gate's thresholds. `origin(key)`: where the
    key's value came from."""
    check_names(cfg, origin)
    own = {s.key for s in settings("detector")}  # detector.extra must not pass them to ultralytics unchecked
    extras = [("detector.extra", cfg["detector"]["extra"], origin("detector.extra"))]
    extras += [(f"runs.detector.{name}: detector.extra", (keys or {}).get("extra") or {}, origin("runs.detector"))
               for name, keys in (cfg["runs"]["detector"] or {}).items()]
    for where, extra, source in extras:
        clash = sorted(set(extra) & own)
        if clash:
            raise ConfigError(f"{source}: {where} sets {', '.join(clash)}, a key of the detector section itself; set "
                              f"detector.{clash[0]} instead (its type and range are checked there)")
    p = cfg["images"]["percentiles"]
    if len(p) != 2 or not p[0] < p[1]:
        raise ConfigError(f"{origin('images.percentiles')}: images.percentiles is {p}; give the low and the high "
                          "percentile of the window, low first, e.g. [0.5, 99.5]")
    f = cfg["fusion"]
    if f["low"] > f["high"]:
        raise ConfigError(f"fusion.low {f['low']:g} ({origin('fusion.low')}) is above fusion.high {f['high']:g} "
                          f"({origin('fusion.high')}); the gate needs low <= high")


def saved_section(path: str | Path, section: str) -> dict:
    """The `section` of a config a command saved beside its outputs (``config_<name>.yaml``; empty when the file
    has none); a missing or damaged file is a ConfigError naming it."""
    values = _read_yaml(Path(path)).get(section) or {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path}: section '{section}' must be a mapping of keys, got {values!r}")
    return dict(values)


def with_saved(cfg: Mapping[str, Any], path: str | Path, section: str, keep: Iterable[str] = ()) -> dict:
    """`cfg` with its `section` as the config file `path` holds it (e.g. the config a run's training saved beside
    its weights), each value checked, but for the keys of `keep` (``section.key``: those given on the command line,
    :func:`vinbig.options.explicit`), which keep their value in `cfg`. What :func:`load_config` gives with `path`
    read after its other files, for one section, without resolving the whole config again."""
    keep = set(keep)
    values = {k: v for k, v in saved_section(path, section).items() if f"{section}.{k}" not in keep}
    return merge(cfg, {section: values}, str(path))


def save_config(cfg: Mapping[str, Any], path: str | Path, sections: Iterable[str] | None = None) -> Path:
    """Write the resolved config (optionally only some sections) as YAML next to a stage's outputs."""
    from vinbig.artifacts import atomic_path

    keep = {s: dict(v) for s, v in cfg.items() if sections is None or s in sections}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(keep, sort_keys=False))
    return path
