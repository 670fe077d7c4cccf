"""One way to map a function over work items in processes, shared by the stages, and one way to read batches
ahead in threads while the caller works on the current one.

A worker process that dies (the out-of-memory killer, a signal, a crash in a native library) ends the map
with a :class:`WorkerDiedError` at once: the pool never waits for the lost task. What the caller already
received is the caller's to keep (``vinbig images`` keeps every image converted, and a rerun continues).

Signals are the parent's to handle: workers ignore SIGINT, SIGTERM and SIGHUP (the command line turns them into
an interrupt that stops the pool, :func:`vinbig.app.cli.main`), and a worker whose parent is gone (killed with
SIGKILL) exits within a second, so that no worker outlives its command or keeps its output pipe open.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from vinbig.errors import WorkerDiedError

T = TypeVar("T")
R = TypeVar("R")


def n_workers(workers: int, n_items: int) -> int:
    """Processes to use: `workers`, 0 meaning one per CPU core, never more than the items (at least 1)."""
    return max(1, min(workers or os.cpu_count() or 1, n_items))


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
_PARENT_CHECK_S = 0.5


def _exit_with_parent(parent: int) -> None:
    """End this worker once its parent is gone (reparented: killed with SIGKILL, which no handler sees)."""
    while os.getppid() == parent:
        time.sleep(_PARENT_CHECK_S)
    os._exit(1)


def _init_worker(parent: int) -> None:
    # Ctrl-C reaches the whole process group, a scheduler may signal every process: only the parent handles the
    # signals (and stops the workers), so that an interrupted run says so rather than that a worker died
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="exit-with-parent", daemon=True).start()
    import cv2

    cv2.setNumThreads(1)  # one OpenCV thread per process: the processes are the parallelism


def _run_chunk(fn: Callable, chunk: Sequence) -> list:
    return [fn(item) for item in chunk]


def _how_it_died(codes: dict[int, int | None]) -> str:
    """'process 123 was killed by SIGKILL (as the out-of-memory killer does)' from the workers' exit codes."""
    dead = sorted(((pid, code) for pid, code in codes.items() if code not in (None, 0)),
                  key=lambda t: t[1] == -signal.SIGTERM)  # the pool terminates the others once one died
    if not dead:
        return "a worker process ended abruptly"
    pid, code = dead[0]
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = f"worker process {pid} was killed by {name}"
        return how + (" (as the out-of-memory killer does)" if -code == signal.SIGKILL else "")
    return f"worker process {pid} exited with code {code}"


def _exit_codes(executor: ProcessPoolExecutor, known: dict) -> dict[int, int | None]:
    """Exit codes of the pool's processes (the pool forgets them once it breaks, so `known` keeps them)."""
    known.update(getattr(executor, "_processes", None) or {})
    deadline = time.monotonic() + 1.0  # the process that died may not be reaped yet, the pool terminates the others

    def settled(codes: dict) -> bool:
        return (all(c is not None for c in codes.values())
                or any(c not in (None, -signal.SIGTERM) for c in codes.values()))

    codes = {pid: p.exitcode for pid, p in known.items()}
    while not settled(codes) and time.monotonic() < deadline:
        time.sleep(0.01)
        codes = {pid: p.exitcode for pid, p in known.items()}
    return codes


def _stop(executor: ProcessPoolExecutor, known: dict, complete: bool) -> None:
    """End the pool: at once when the results were not all taken (an error, an interrupt): cancel what has not
    started and kill the workers, whose unfinished items a rerun does again."""
    if complete:
        executor.shutdown(wait=True)
        return
    executor.shutdown(wait=False, cancel_futures=True)
    known.update(getattr(executor, "_processes", None) or {})
    for process in known.values():
        with contextlib.suppress(Exception):
            if process.is_alive():
                process.kill()
    for process in known.values():
        with contextlib.suppress(Exception):
            process.join(timeout=10)
    executor.shutdown(wait=True)


def _results(executor: ProcessPoolExecutor, fn: Callable, items: Sequence, ordered: bool, chunksize: int,
             known: dict, state: dict) -> Iterator:
    """fn over items in chunks; a dead worker raises WorkerDiedError naming how many results came back."""
    chunks = [items[i:i + chunksize] for i in range(0, len(items), chunksize)]
    done = 0
    try:
        futures: list[Future] = [executor.submit(_run_chunk, fn, chunk) for chunk in chunks]
        known.update(getattr(executor, "_processes", None) or {})
        if ordered:
            for future in futures:
                for result in future.result():
                    done += 1
                    yield result
        else:
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    for result in future.result():
                        done += 1
                        yield result
        state["complete"] = True
    except BrokenProcessPool:
        raise WorkerDiedError(_how_it_died(_exit_codes(executor, known)), done, len(items)) from None


@contextlib.contextmanager
def process_map(fn: Callable, items: Sequence, workers: int, *, ordered: bool = True,
                chunksize: int = 1) -> Iterator[tuple[Iterable, int]]:
    """Yield ``(results, processes)``: `fn` over `items`, in this process when one worker is enough.

    `results` comes in the order of `items` when `ordered`, else as the workers finish; `chunksize` items go
    to a worker at a time. Processes are spawned, not forked: a forked child can inherit a lock held by
    another thread of the parent (seen as a hang under pytest). A worker that dies raises
    :class:`WorkerDiedError` from `results`. The workers are stopped when the block ends.
    """
    n = n_workers(workers, len(items))
    if n == 1:
        yield map(fn, items), 1
        return
    executor = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(os.getpid(),))
    known: dict = {}  # pid -> Process: the pool forgets its processes once one died
    state = {"complete": False}
    try:
        yield _results(executor, fn, list(items), ordered, max(1, int(chunksize)), known, state), n
    finally:
        _stop(executor, known, state["complete"])


def prefetched(read: Callable[[T], R], items: Sequence[T], batch: int, prefetch: int, *,
               name: str = "read") -> Iterator[tuple[Sequence[T], list[R]]]:
    """``(chunk, [read(item) for item in chunk])`` for `items`, `batch` at a time, in order. Background threads
    (at most 4, named `name`) read up to `prefetch` chunks ahead while the caller works on the current one (0: each
    chunk read in this thread when it is reached), for reads that let go of the GIL (OpenCV, pydicom's file I/O).
    An exception of `read` is raised when its chunk is reached; stopped early (an error, a closed generator), the
    reads not yet started are cancelled."""
    n = max(1, batch)
    chunks = [items[i:i + n] for i in range(0, len(items), n)]
    if prefetch <= 0:
        for chunk in chunks:
            yield chunk, [read(item) for item in chunk]
        return
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)), thread_name_prefix=name) as pool:
        ahead: deque = deque()
        try:
            for chunk in chunks:
                ahead.append((chunk, [pool.submit(read, item) for item in chunk]))
                if len(ahead) > prefetch:
                    done, futures = ahead.popleft()
                    yield done, [f.result() for f in futures]
            while ahead:
                done, futures = ahead.popleft()
                yield done, [f.result() for f in futures]
        finally:  # no more reads start
            for _, futures in ahead:
                for f in futures:
                    f.cancel()
