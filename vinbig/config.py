"""One commented default config (`configs/default.yaml`), user files and `--set` overrides on top.

A config is a plain two-level dict: ``{section: {key: value}}``. Every key a user names must
exist in the defaults; a typo is rejected with the closest valid keys.
"""

from __future__ import annotations

import copy
import difflib
import functools
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from vinbig.errors import ConfigError

_REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# a key of configs/default.yaml: `  key: default  # (type) meaning`
_KEY_LINE = re.compile(r"^  (\w+):\s*(.*?)\s+# \(([^)]*)\)\s*(.*)$")
_SECTION_LINE = re.compile(r"^(\w+):\s*$")


@dataclass(frozen=True)
class Setting:
    """One key of configs/default.yaml, as its line declares it: the one place a setting is written."""

    section: str
    key: str
    default: Any  # the value of default.yaml
    text: str  # the default as written there
    type: str  # e.g. int, float, bool, list[float], str|int|list|null
    meaning: str

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def is_list(self) -> bool:
        return self.type.startswith("list")


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
            key, text, kind, meaning = m.groups()
            out.append(Setting(section, key, defaults[section][key], text, kind.strip(), meaning.strip()))
    return tuple(out)


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


def _check_type(key: str, default: Any, value: Any) -> Any:
    """Return `value` if it fits the type of `default` (ints are accepted for floats)."""
    if default is None or value is None:
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(
            f"{key} expects {type(default).__name__}, got {value!r} ({type(value).__name__}); "
            f"see the comment on '{key.split('.')[-1]}' in {default_config_path()}"
        )
    return value


def merge(base: Mapping[str, Mapping[str, Any]], update: Mapping[str, Any], source: str) -> dict:
    """Return `base` updated by `update` (``{section: {key: value}}``), rejecting unknown keys."""
    out = copy.deepcopy(dict(base))
    for section, values in update.items():
        if section not in out:
            raise ConfigError(f"{source}: '{section}' is not a config section.{_suggest(section, out)}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: section '{section}' must be a mapping of keys, got {values!r}")
        for key, value in values.items():
            if key not in out[section]:
                full = [f"{section}.{k}" for k in out[section]]
                raise ConfigError(
                    f"{source}: '{section}.{key}' is not a valid key.{_suggest(f'{section}.{key}', full)}"
                )
            out[section][key] = _check_type(f"{section}.{key}", out[section][key], value)
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


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (), extra: Iterable[Path] = ()) -> dict:
    """Defaults, then the keys of the file at `path`, of each file in `extra` (such as the values a stage
    chose, e.g. WORK/fusion.yaml), then each ``section.key=value`` override."""
    cfg = copy.deepcopy(_defaults(default_config_path()))
    if path is not None and Path(path).resolve() != default_config_path().resolve():
        cfg = merge(cfg, _read_yaml(Path(path)), str(path))
    for file in extra:
        cfg = merge(cfg, _read_yaml(Path(file)), str(file))
    for text in overrides:
        cfg = merge(cfg, parse_override(text), f"--set {text}")
    return cfg


def save_config(cfg: Mapping[str, Any], path: str | Path, sections: Iterable[str] | None = None) -> Path:
    """Write the resolved config (optionally only some sections) as YAML next to a stage's outputs."""
    from vinbig.artifacts import atomic_path

    keep = {s: dict(v) for s, v in cfg.items() if sections is None or s in sections}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(keep, sort_keys=False))
    return path
