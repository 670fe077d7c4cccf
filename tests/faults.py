"""Helpers for tests of faults: a network guard for subprocesses, damaged files, the error lines logged."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

# Imported by every Python process started with the guard's folder on PYTHONPATH (a command and any worker it
# spawns): name lookups and connections are refused, and each attempt is logged with the stack that made it.
GUARD = '''
import os, socket, traceback

def _deny(name):
    def blocked(*args, **kwargs):
        with open(os.environ["NETWORK_LOG"], "a") as log:
            log.write(f"{name}{args[:2]!r}\\n" + "".join(traceback.format_stack(limit=10)) + "\\n")
        raise OSError(f"network access blocked by the test: {name}")
    return blocked

socket.getaddrinfo = _deny("getaddrinfo")
socket.create_connection = _deny("create_connection")
socket.socket.connect = _deny("connect")
socket.socket.connect_ex = _deny("connect_ex")
'''


def guarded_env(tmp_path: Path) -> tuple[dict, Path]:
    """The environment of a user's shell, with the network guard on; and the guard's log file."""
    guard = tmp_path / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "network.log"
    # as a user runs it: ultralytics skips some network calls when it sees pytest or a CI (TESTS_RUNNING)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("YOLO_", "PYTEST_", "GITHUB_", "RUNNER_")) and k not in ("CI", "GITHUB_ACTIONS")}
    env["ULTRALYTICS_API_KEY"] = "not-a-real-key"  # with a key, ultralytics' Platform callbacks would upload
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(guard), env.get("PYTHONPATH")) if p)
    env["NETWORK_LOG"] = str(log)
    return env, log


def damage(path: Path, how: str) -> Path:
    """Cut `path` to half its bytes (a copy killed midway, a full disk) or replace it by random bytes."""
    data = path.read_bytes() if path.is_file() else b""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[:len(data) // 2] if how == "truncated" else np.random.default_rng(0).bytes(4096))
    return path


def errors(caplog) -> list[str]:
    """The messages logged at ERROR level."""
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


# A conversion slowed to a quarter of a second per image, so that a run can be stopped (a worker killed, SIGTERM
# sent) in the middle; the module lies on sys.path, which spawned workers inherit, and replaces convert_one in the
# run's process.
SLOW_CONVERT = textwrap.dedent("""
    import time
    import folds._images as images
    _real = images.convert_one
    def convert_one(path, out, **kwargs):
        time.sleep(0.25)
        return _real(path, out, **kwargs)
""")
SLOW_RUN = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv.pop(1))
    import folds._images, slow_convert
    folds._images.convert_one = slow_convert.convert_one
    from vinbig.app.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def start_slow_images(dicom_factory, tmp_path: Path, **popen) -> tuple[subprocess.Popen, Path]:
    """`vinbig images --workers 2` of 24 small DICOMs converted a quarter of a second each (SLOW_CONVERT), started
    in the background with its output piped; ``(process, out folder)``."""
    from conftest import gradient

    for i in range(24):
        dicom_factory(f"im{i:02d}.dicom", gradient(80, 64))
    src, out = tmp_path / "src", tmp_path / "out"
    (tmp_path / "slow_convert.py").write_text(SLOW_CONVERT)
    cmd = [sys.executable, "-c", SLOW_RUN, str(tmp_path), "images", "--src", str(src), "--out", str(out),
           "--size", "32", "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)
    return proc, out
