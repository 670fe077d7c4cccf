"""Ultralytics without the network: no update checks, no analytics, no font or AMP-weights downloads.

Importing this module is enough, and it must happen before anything imports ultralytics:

- ``YOLO_OFFLINE=1`` makes ultralytics skip its start-up DNS probe (``ONLINE``), so its PyPI update
  check and its analytics events stay off; ``YOLO_AUTOINSTALL=0`` stops it from pip-installing what
  it thinks is missing.
- ``check_font`` (called by ``check_det_dataset`` and the plotting code) would download Arial.ttf; it
  is pointed at a font on this machine (matplotlib's bundled DejaVu Sans when nothing better is here).
- ``check_amp`` would download yolo26n.pt to compare FP32 and AMP outputs; it runs the same
  comparison on the model being trained instead.
- ultralytics' ``torch_load`` (an unrestricted unpickling, which runs whatever a file names), in its own
  module and wherever it was imported by name, becomes :func:`detector._restricted.torch_load`, the restricted
  loader: no checkpoint is unpickled unrestricted in a vinbig process (a resumed run, ``detector.model: x.pt``,
  ultralytics' own loads of best.pt and last.pt). A fold is loaded by :func:`detector._weights.load_detector`
  from its absolute path, so ultralytics never re-downloads an asset named bare (``yolov8n.pt``); an unreadable
  file is an error naming it and the fix, not ultralytics' advice to download ``yolo26n.pt``.
- ultralytics' label caches (``labels/*.cache``, pickles it reads with ``np.load(allow_pickle=True)``) are read by
  :func:`load_label_cache`, which rebuilds numpy arrays and plain values only: a cache that names anything else is
  not loaded, and ultralytics scans the labels again as for a missing cache.
- ultralytics sets torch's CPU threads for the whole process; :func:`own_threads` sets them back once it is done.
  ``VINBIG_THREADS`` (a positive integer; ``vinbig train`` sets it for jobs that share a machine's CPU) is the
  number a training takes, at most ultralytics' own (the CPUs - 1, at most 8): :func:`training_threads`.
- Integrations are off by ultralytics' own settings: ``YOLO_CONFIG_DIR`` is always vinbig's folder
  (:func:`settings_dir`: ``$XDG_CACHE_HOME/vinbig/ultralytics``, else ``~/.cache/vinbig/ultralytics``, else a
  private folder of this user in the temp folder), whatever the user's shell set, and its
  ``Ultralytics/settings.json``, in the schema of ultralytics' ``SettingsManager``, turns off ClearML, Comet, DVC,
  MLflow, Ray Tune, TensorBoard and W&B, the analytics (``sync``) and the Platform (``api_key`` empty). The
  Platform callbacks also read ``ULTRALYTICS_API_KEY``, which is removed from the environment of a vinbig process.
  The variables are set in ``os.environ``, so ultralytics' DDP workers, which inherit it, read the same settings.
  vinbig's own experiment tracking is ``tracking.backend`` (vinbig.tracking).

The trainer class used for every training, :class:`OfflineDetectionTrainer`, lives here so that
ultralytics' DDP worker processes, which import the trainer's module, apply the same patches.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import pickle
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

# ultralytics' settings that vinbig holds: every integration off, no analytics, no Platform key
SETTINGS_OFF = {"clearml": False, "comet": False, "dvc": False, "hub": False, "mlflow": False, "neptune": False,
                "raytune": False, "tensorboard": False, "wandb": False, "sync": False, "api_key": ""}


def settings_dir() -> Path:
    """vinbig's ultralytics config folder (YOLO_CONFIG_DIR): ``$XDG_CACHE_HOME/vinbig/ultralytics`` (default
    ``~/.cache``) when it can be written, else ``vinbig-ultralytics-UID`` in the temp folder, a folder of this
    user's only (else a new one of this process)."""
    cache = os.environ.get("XDG_CACHE_HOME") or ""
    base = (Path(cache) if os.path.isabs(cache) else Path.home() / ".cache") / "vinbig" / "ultralytics"
    try:
        base.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=base).close()  # can be written, not only made
        return base
    except OSError:
        pass
    uid = os.getuid() if hasattr(os, "getuid") else None
    alt = Path(tempfile.gettempdir()) / f"vinbig-ultralytics-{uid if uid is not None else 'user'}"
    with contextlib.suppress(OSError):
        alt.mkdir(mode=0o700, exist_ok=True)
        info = alt.lstat()
        if stat.S_ISDIR(info.st_mode) and (uid is None or (info.st_uid == uid and not info.st_mode & 0o077)):
            return alt
    return Path(tempfile.mkdtemp(prefix="vinbig-ultralytics-"))


os.environ["YOLO_CONFIG_DIR"] = str(settings_dir())
os.environ["YOLO_OFFLINE"] = "1"
os.environ["YOLO_AUTOINSTALL"] = "0"
os.environ.pop("ULTRALYTICS_API_KEY", None)

import torch  # noqa: E402
from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402

# GPUs that ultralytics itself knows to give NaN losses under AMP
_AMP_BAD_GPUS = ("1660", "1650", "1630", "t400", "t550", "t600", "t1000", "t1200", "t2000", "k40m")


def local_font(font: str = "Arial.ttf") -> Path:
    """`font` from ultralytics' config folder or matplotlib's font list, else matplotlib's DejaVu Sans."""
    from matplotlib import font_manager
    from ultralytics.utils import USER_CONFIG_DIR

    name = Path(font).name
    if (USER_CONFIG_DIR / name).is_file():
        return USER_CONFIG_DIR / name
    for entry in font_manager.fontManager.ttflist:
        if name in entry.fname and os.path.exists(entry.fname):
            return Path(entry.fname)
    return Path(font_manager.findfont("DejaVu Sans", fallback_to_default=True))


def offline_check_amp(model: torch.nn.Module) -> bool:
    """Whether AMP can be used: FP32 and autocast outputs of `model` itself agree on a test batch."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return False
    gpu = torch.cuda.get_device_name(device).lower()
    if any(tag in gpu for tag in _AMP_BAD_GPUS):
        logger.warning("AMP off: %s is known to give NaN losses with mixed precision", gpu)
        return False
    m = copy.deepcopy(model).eval()
    stride = int(max(getattr(m, "stride", torch.tensor([32])).max(), 32))
    im = torch.rand(2, 3, 4 * stride, 4 * stride, device=device, generator=torch.Generator(device).manual_seed(0))
    with torch.no_grad():
        a = _first_tensor(m(im)).float()
        with torch.autocast("cuda"):
            b = _first_tensor(m(im)).float()
    del m
    ok = a.shape == b.shape and bool(torch.isfinite(b).all()) and torch.allclose(a, b, rtol=0.02, atol=0.5)
    if ok:
        logger.info("AMP check passed on %s (FP32 and autocast outputs of the model agree)", gpu)
    else:
        logger.warning("AMP off: FP32 and autocast outputs differ on %s (max |diff| %.3g)",
                       gpu, float((a - b).abs().max()) if a.shape == b.shape else float("nan"))
    return ok


def _first_tensor(out) -> torch.Tensor:
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def follow_log_level() -> bool:
    """Give ultralytics' logger vinbig's level (``-q``: warnings only); return whether it stays verbose."""
    level = logging.getLogger().getEffectiveLevel()
    logging.getLogger("ultralytics").setLevel(max(level, logging.INFO))
    return level <= logging.INFO


@contextmanager
def own_threads():
    """Leave torch's CPU threads as they were: ultralytics sets them for the whole process when it trains or
    predicts on the CPU (``select_device``: the CPU count - 1, at most 8), and a CPU computes other sums with other
    threads. So what runs after it in one process (the classifier in ``vinbig demo``) gives what it gives alone."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dtypes and numbers and plain Python values; any other global is refused."""

    ALLOWED = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")}
    ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a label cache")
        return super().find_class(module, name)


def load_label_cache(path) -> dict:
    """ultralytics' ``load_dataset_cache_file`` without unrestricted unpickling: the dict of the ``.npy`` file
    `path`, its pickle read by :class:`_ArrayUnpickler`. Raises on anything else (ultralytics then rebuilds it)."""
    import numpy as np

    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        _, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                       np.lib.format.read_array_header_2_0)(f)
        if not dtype.hasobject:
            raise ValueError(f"{path} is not a label cache")
        return _ArrayUnpickler(f).load().item()


def _restrict_loads() -> None:
    """ultralytics' torch_load and load_dataset_cache_file (both unpickle unrestricted), in their own modules and in
    every loaded ultralytics module that imported them by name (ultralytics.nn.tasks, utils.torch_utils,
    data.dataset ...), replaced by restricted loaders."""
    import ultralytics.nn.tasks  # noqa: F401  (imported now: each takes torch_load by name)
    import ultralytics.utils.patches as patches
    import ultralytics.utils.torch_utils  # noqa: F401

    from detector._restricted import torch_load

    import ultralytics.data.dataset  # noqa: F401
    import ultralytics.data.utils as data_utils

    originals = {"torch_load": (patches.torch_load, torch_load),
                 "load_dataset_cache_file": (data_utils.load_dataset_cache_file, load_label_cache)}
    for name, module in list(sys.modules.items()):
        if name == "ultralytics" or name.startswith("ultralytics."):
            for attr, (original, restricted) in originals.items():
                if getattr(module, attr, None) is original:
                    setattr(module, attr, restricted)


def _patch() -> None:
    import ultralytics.data.utils as data_utils
    import ultralytics.engine.trainer as trainer_module
    import ultralytics.utils.checks as checks
    import ultralytics.utils.plotting as plotting

    for module in (checks, data_utils, plotting):
        module.check_font = local_font
    trainer_module.check_amp = offline_check_amp
    _restrict_loads()
    integrations_off()


def integrations_off() -> None:
    """ultralytics' SETTINGS read from vinbig's folder, with SETTINGS_OFF, also on disk (written beside, then
    renamed: a DDP worker or a parallel job never reads half a file). SETTINGS is ultralytics' object itself (its
    modules imported it by name): when ultralytics was imported before this module, from another folder, it is
    pointed at vinbig's file here."""
    from ultralytics.utils import SETTINGS

    from vinbig.artifacts import atomic_path

    file = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics" / "settings.json"
    if Path(SETTINGS.file).resolve() != file.resolve():
        SETTINGS.file = SETTINGS.file_path = file
        dict.clear(SETTINGS)
        SETTINGS._load()
        if not file.exists() or not SETTINGS:
            SETTINGS.reset()
        SETTINGS._validate_settings()
    # the keys this ultralytics knows (an integration it dropped needs no switch), of its defaults' types
    wanted = {k: v for k, v in SETTINGS_OFF.items()
              if k in SETTINGS.defaults and isinstance(v, type(SETTINGS.defaults[k]))}
    if any(SETTINGS.get(k) != v for k, v in wanted.items()):
        dict.update(SETTINGS, wanted)  # in this process, whatever the disk says
        try:
            with atomic_path(file) as tmp:
                tmp.write_text(json.dumps(dict(SETTINGS), indent=2, default=str))
        except OSError as e:
            logger.warning("cannot write %s (%s); ultralytics' integrations are off in this process only", file,
                           e.strerror or e)


def training_threads() -> int:
    """The torch CPU threads of a detector's training: ``VINBIG_THREADS`` when it holds a positive integer, at most
    ultralytics' own number (the CPUs - 1, at most 8), which it is otherwise."""
    from ultralytics.utils import NUM_THREADS

    from vinbig.devices import job_threads

    threads = job_threads()
    return min(threads, NUM_THREADS) if threads else NUM_THREADS


_patch()


class OfflineDetectionTrainer(DetectionTrainer):
    """ultralytics' detection trainer; defined here so that DDP workers import the offline patches. It sets the
    CPU threads ultralytics' ``select_device`` gives torch (:func:`training_threads`) before it starts."""

    def __init__(self, *args, **kwargs):
        import ultralytics.utils.torch_utils as torch_utils

        torch_utils.NUM_THREADS = training_threads()
        super().__init__(*args, **kwargs)
