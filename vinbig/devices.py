"""The one reading of a ``device`` setting (detector, classifier, command line), whatever the spelling.

``null`` (or ``auto``): the GPU(s) if any, else the CPU; ``cpu``; a GPU index ``0`` (also ``cuda:0``);
``cuda`` (the first GPU); several GPUs ``0,1`` or ``[0, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vinbig.errors import ConfigError


@dataclass(frozen=True)
class Device:
    kind: str  # auto, cpu or cuda
    gpus: tuple[int, ...] = ()  # with cuda: the GPU indices; () means the first (or, under torchrun, LOCAL_RANK)

    @property
    def ultralytics(self) -> str | None:
        """As ultralytics' ``device`` argument takes it: None (auto), "cpu", "0" or "0,1"."""
        if self.kind == "auto":
            return None
        if self.kind == "cpu":
            return "cpu"
        return ",".join(str(g) for g in self.gpus) if self.gpus else "0"


def parse_device(value, key: str = "device") -> Device:
    """`value` of the config key `key` as a :class:`Device`; a ConfigError names the key and the spellings."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto", "null", "none")):
        return Device("auto")
    if isinstance(value, bool):
        raise ConfigError(f"{key} is {value!r}; write null, cpu, 0 or 0,1")
    if isinstance(value, int):
        return _gpus([value], key, value)
    if isinstance(value, (list, tuple)):
        return _gpus(value, key, value)
    text = str(value).strip().lower()
    if text == "cpu":
        return Device("cpu")
    if text == "cuda":
        return Device("cuda")
    if text.startswith("cuda:"):
        text = text[5:]
    return _gpus([t for t in text.split(",") if t.strip()], key, value)


def _gpus(items, key: str, value) -> Device:
    try:
        gpus = tuple(int(str(g).strip()) for g in items)
    except ValueError:
        gpus = ()
    if not gpus or any(g < 0 for g in gpus) or any(isinstance(g, bool) for g in items):
        raise ConfigError(f"{key} {value!r} is not a device; write null (the GPU if any, else the CPU), cpu, a GPU "
                          "index such as 0 (or cuda:0), or several such as 0,1")
    return Device("cuda", gpus)
