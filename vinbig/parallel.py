"""One way to map a function over work items in processes, shared by the stages."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from typing import Callable, Iterable, Iterator, Sequence


def n_workers(workers: int, n_items: int) -> int:
    """Processes to use: `workers`, 0 meaning one per CPU core, never more than the items (at least 1)."""
    return max(1, min(workers or os.cpu_count() or 1, n_items))


def _cv2_single_thread() -> None:
    import cv2

    cv2.setNumThreads(1)  # one OpenCV thread per process: the processes are the parallelism


@contextlib.contextmanager
def process_map(fn: Callable, items: Sequence, workers: int, *, ordered: bool = True,
                chunksize: int = 1) -> Iterator[tuple[Iterable, int]]:
    """Yield ``(results, processes)``: `fn` over `items`, in this process when one worker is enough.

    Processes are spawned, not forked: a forked child can inherit a lock held by another thread of
    the parent (seen as a hang under pytest). The pool is terminated when the block ends.
    """
    n = n_workers(workers, len(items))
    if n == 1:
        yield map(fn, items), 1
        return
    pool = multiprocessing.get_context("spawn").Pool(n, initializer=_cv2_single_thread)
    try:
        run = pool.imap if ordered else pool.imap_unordered
        yield run(fn, items, chunksize=chunksize), n
    finally:
        pool.terminate()
        pool.join()
