"""Images that arrive together, answered together: one thread owns the model and runs queued images in batches.

A web request brings one photo or a few. Run one at a time, the model works at its batch-1 speed; stacked,
at its batch-32 speed: with PyTorch on our CPUs about twice as many images per second (docs/benchmarks.md).
`BatchWorker` takes every image waiting (at most `max_batch`) and runs them in one call: an image that finds the
model idle runs at once (or after `wait_s`, if set, for company), and under load whatever queued while the previous
batch ran goes in the next one. It is the only thread that touches the model, so a backend need not be thread-safe;
other work on the model (Grad-CAM) queues on the same thread through `call`. No PyTorch here: the model is a
callable.
"""
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np


class QueueFull(Exception):
    """Too many images are already waiting for the model: the caller should answer "busy, retry"."""


@dataclass
class _Job:
    """One preprocessed image to score, or (with `function`) one call to run on the model's thread."""

    future: Future
    array: np.ndarray | None = None
    function: Callable[[], Any] | None = None


@dataclass
class BatchStats:
    """What the worker has done so far: batches run, images scored, and the largest batch."""

    batches: int = 0
    images: int = 0
    largest_batch: int = 0


class BatchWorker:
    """Runs `score_batch((N, ...) float32) -> (N, ...)` on batches of the images submitted from any thread."""

    def __init__(self, score_batch: Callable[[np.ndarray], np.ndarray], max_batch: int = 32,
                 wait_s: float = 0.0, max_queued: int = 256) -> None:
        self._score_batch = score_batch
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.stats = BatchStats()
        self._jobs: queue.Queue[_Job | None] = queue.Queue(max_queued)  # None asks the thread to stop
        self._carried: _Job | None = None  # a call met while gathering a batch, run right after it
        self._thread = threading.Thread(target=self._serve, name="model", daemon=True)
        self._thread.start()

    def submit(self, array: np.ndarray) -> Future:
        """Queue one preprocessed image; the future's result is its row of the model's output."""
        return self._put(_Job(Future(), array=array))

    def call(self, function: Callable[[], Any]) -> Future:
        """Run `function()` on the model's thread, between batches."""
        return self._put(_Job(Future(), function=function))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop the thread (left to end with the process if it cannot in time)."""
        if self.alive:
            try:
                self._jobs.put(None, timeout=timeout)
            except queue.Full:
                return
            self._thread.join(timeout)

    def _put(self, job: _Job) -> Future:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self._jobs.maxsize} images are already waiting for the model") from None
        return job.future

    def _serve(self) -> None:
        while True:
            job = self._carried or self._jobs.get()
            self._carried = None
            if job is None:
                return
            if job.function is not None:
                _run_call(job)
            else:
                self._run_batch(self._gather(job))

    def _gather(self, first: _Job) -> list[_Job]:
        """`first` and the images that arrive within the wait window, up to max_batch; a call or the stop
        signal ends the batch early and is handled next."""
        batch = [first]
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch:
            try:
                job = self._jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None or job.function is not None:
                self._carried = job
                break
            batch.append(job)
        return batch

    def _run_batch(self, batch: list[_Job]) -> None:
        batch = [job for job in batch if job.future.set_running_or_notify_cancel()]  # skip abandoned requests
        if not batch:
            return
        try:
            rows = self._score_batch(np.stack([job.array for job in batch]))
        except Exception as error:  # every request of the batch gets the error; the thread goes on
            for job in batch:
                job.future.set_exception(error)
            return
        for job, row in zip(batch, rows):
            job.future.set_result(row)
        self.stats.batches += 1
        self.stats.images += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))


def _run_call(job: _Job) -> None:
    if not job.future.set_running_or_notify_cancel():
        return
    try:
        job.future.set_result(job.function())
    except Exception as error:
        job.future.set_exception(error)
