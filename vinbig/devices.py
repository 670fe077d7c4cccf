"""The one reading of a ``device`` setting (detector, classifier, command line), whatever the spelling.

``null`` (or ``auto``): decided when the command runs, by the GPUs torch sees then (:meth:`Device.resolve`);
``cpu``; a GPU index ``0`` (also ``cuda:0``); ``cuda`` (the first GPU); several GPUs ``0,1`` or ``[0, 1]``.

Also what a session runs on, in lines to print (:func:`gpu_lines`, the notebooks' first check). torch is imported
only inside the functions that need it: ``vinbig --help`` stays light.
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
        """As ultralytics' ``device`` argument takes it: None (auto: one device, ultralytics' choice), "cpu", "0" or
        "0,1". Training takes ``resolve().ultralytics`` instead, which is every GPU for auto."""
        if self.kind == "auto":
            return None
        if self.kind == "cpu":
            return "cpu"
        return ",".join(str(g) for g in self.gpus) if self.gpus else "0"

    def resolve(self) -> "Device":
        """This device on this machine now: auto becomes every GPU torch sees (0, 0,1, ...), else the CPU.

        What a training session takes for null, so that a resumed run follows the machine that resumes it and a
        two-GPU machine trains on both; prediction keeps one device.
        """
        if self.kind != "auto":
            return self
        n = visible_gpus()
        return Device("cuda", tuple(range(n))) if n else Device("cpu")


THREADS_ENV = "VINBIG_THREADS"  # a job's torch CPU threads: `vinbig train` sets it when jobs share the CPU


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity: a container's share), else the machine's."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def job_threads() -> int | None:
    """The CPU threads ``VINBIG_THREADS`` gives this process's training (a positive integer), else None (each stage
    keeps its own default)."""
    import os

    text = os.environ.get(THREADS_ENV, "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


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


def visible_gpus() -> int:
    """How many GPUs torch sees (after CUDA_VISIBLE_DEVICES); 0 without CUDA or without a GPU."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def has_kernels(capability: tuple[int, int], arch_list) -> bool:
    """Whether a torch build compiled for `arch_list` (``torch.cuda.get_arch_list()``: sm_75, sm_80, compute_90 ...)
    runs on a GPU of compute `capability` (major, minor): a binary of the same major version and no higher minor
    one, or PTX (compute_XY) of no higher version, which the driver compiles."""
    major, minor = capability
    for arch in arch_list:
        kind, _, version = arch.partition("_")
        if not version.isdigit() or len(version) < 2:
            continue
        a_major, a_minor = int(version[:-1]), int(version[-1])
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


def gpu_lines() -> list[str]:
    """What this session computes on, as lines to print: torch and its CUDA, the GPU architectures the build has
    kernels for (``torch.cuda.get_arch_list()``), and each GPU torch sees (name, memory, compute capability), with a
    warning for a GPU the build has no kernels for (a P100, sm_60, under a torch built for CUDA 13)."""
    import torch

    arch = torch.cuda.get_arch_list()
    lines = [f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none (a CPU build)'}; "
             f"kernels for: {' '.join(arch) or 'no GPU architecture'}"]
    n = visible_gpus()
    if not n:
        lines.append("GPUs: none")
    for i in range(n):
        p = torch.cuda.get_device_properties(i)
        lines.append(f"GPU {i}: {p.name}, {p.total_memory / 2 ** 30:.0f} GiB, sm_{p.major}{p.minor}")
        if not has_kernels((p.major, p.minor), arch):
            lines.append(f"warning: this torch has no kernels for GPU {i} ({p.name}, sm_{p.major}{p.minor}): the first "
                         "computation on it fails with 'no kernel image is available'. Use another GPU (on Kaggle: "
                         "Settings > Accelerator > GPU T4 x2) or a torch built for it")
    return lines
