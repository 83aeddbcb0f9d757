"""Run one function over many parts of a corpus in N worker processes, with one progress bar fed by them all.

Workers report documents, bytes of text and tokens as they go (through a queue, a few times a second), so
the bar moves while a 30 GB file is being tokenized, not only when it ends. Results come back in completion
order; the caller records each one as it arrives, so a kill loses at most the parts in flight. On an error
or Ctrl-C the workers are terminated at once: a part in flight is redone by the next run anyway.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import queue
import signal
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from tqdm import tqdm

from megarank.errors import MegarankError

_REPORT_SECONDS = 0.5
_POLL_SECONDS = 0.25

Report = Callable[[int, int, int], None]  # (documents, bytes of text, tokens) since the last call
_worker_queue: Any = None


class Progress:
    """The bar: documents as its count; MB/s of text, tokens/s and parts done in its postfix."""

    def __init__(self, n_parts: int, desc: str, enabled: bool = True) -> None:
        self.bar = tqdm(total=None, unit="doc", desc=desc, disable=not enabled, dynamic_ncols=True)
        self.n_parts, self.parts_done = n_parts, 0
        self.bytes = self.tokens = 0
        self._start = time.perf_counter()

    def add(self, docs: int, n_bytes: int, tokens: int) -> None:
        self.bytes += n_bytes
        self.tokens += tokens
        self.bar.update(docs)
        self._postfix()

    def part_done(self) -> None:
        self.parts_done += 1
        self._postfix()

    def close(self) -> None:
        self.bar.close()

    def _postfix(self) -> None:
        seconds = max(time.perf_counter() - self._start, 1e-9)
        self.bar.set_postfix_str(f"parts {self.parts_done}/{self.n_parts}, {self.bytes / seconds / 1e6:.1f} MB/s, "
                                 f"{self.tokens / seconds / 1e6:.2f}M tok/s", refresh=False)


def run_parts(fn: Callable[[Any, Report], Any], jobs: Iterable[Any], *, num_proc: int, progress: Progress,
              on_result: Callable[[Any, Any], None]) -> None:
    """fn(job, report) for every job, in this process (num_proc 1) or in num_proc workers; on_result(job,
    result) in this process as each one finishes."""
    jobs = list(jobs)
    if num_proc <= 1:
        for job in jobs:
            on_result(job, fn(job, progress.add))
            progress.part_done()
        return
    context = multiprocessing.get_context("spawn")  # no inherited threads or open files in the workers
    reports = context.Queue()
    # ProcessPoolExecutor, not multiprocessing.Pool: a worker that dies (killed, out of memory) fails the run
    # with BrokenProcessPool instead of being replaced silently while its part never finishes.
    executor = ProcessPoolExecutor(min(num_proc, len(jobs)) or 1, mp_context=context, initializer=_init_worker,
                                   initargs=(reports,))
    try:
        pending = {executor.submit(_call, fn, job): job for job in jobs}
        while pending:
            finished, _ = wait(pending, timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
            _drain(reports, progress)
            for future in finished:
                job = pending.pop(future)
                on_result(job, future.result())
                progress.part_done()
        executor.shutdown(wait=True)
    except BrokenProcessPool as err:
        raise MegarankError(f"a tokenizer worker died ({err}); out of memory? lower --num-proc and rerun") from err
    finally:
        _terminate(executor)
        reports.close()
        reports.join_thread()


def _terminate(executor: ProcessPoolExecutor) -> None:
    """Stop the workers now, parts in flight included (an error or Ctrl-C: they are redone by the rerun)."""
    for process in list((executor._processes or {}).values()):  # Executor.terminate_workers() from Python 3.14
        process.terminate()
    executor.shutdown(wait=True, cancel_futures=True)


def _init_worker(reports) -> None:
    global _worker_queue
    _worker_queue = reports
    _die_with_parent()


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the main process dies (a kill -9, an OOM kill), so no orphan
    goes on writing files that the rerun is writing again."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the worker stops at the end of its part
        pass


def _call(fn: Callable, job: Any) -> Any:
    reporter = _QueueReport(_worker_queue)
    result = fn(job, reporter)
    reporter.flush()
    return result


class _QueueReport:
    """What a worker calls as `report`: sums the counts and sends them a few times a second."""

    def __init__(self, reports) -> None:
        self.reports, self.pending, self.last = reports, [0, 0, 0], time.perf_counter()

    def __call__(self, docs: int, n_bytes: int, tokens: int) -> None:
        self.pending = [self.pending[0] + docs, self.pending[1] + n_bytes, self.pending[2] + tokens]
        if time.perf_counter() - self.last > _REPORT_SECONDS:
            self.flush()

    def flush(self) -> None:
        if any(self.pending):
            self.reports.put(tuple(self.pending))
        self.pending, self.last = [0, 0, 0], time.perf_counter()


def _drain(reports, progress: Progress) -> None:
    while True:
        try:
            progress.add(*reports.get_nowait())
        except queue.Empty:
            return
