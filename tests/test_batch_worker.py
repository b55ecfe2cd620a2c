"""batch_worker.py: images queued together are scored together, each gets its own row, and failures stay contained."""
import threading

import numpy as np
import pytest

from effnet.inference.batch_worker import BatchWorker, QueueFull


class Recorder:
    """A stand-in model that doubles its input and records the size of every batch it is given."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(len(batch))
        if np.isnan(batch).any():
            raise ValueError("NaN in the batch")
        return batch * 2


def hold(worker: BatchWorker) -> threading.Event:
    """Keep the model thread busy until the returned event is set, so that work piles up behind it."""
    release, started = threading.Event(), threading.Event()
    worker.call(lambda: (started.set(), release.wait(10)))
    started.wait(10)
    return release


def test_images_waiting_together_share_batches_and_get_their_own_rows():
    model = Recorder()
    worker = BatchWorker(model, max_batch=4, wait_s=0.0)
    release = hold(worker)
    futures = [worker.submit(np.full(3, i, dtype=np.float32)) for i in range(10)]
    release.set()
    assert [list(f.result(10)) for f in futures] == [[2 * i] * 3 for i in range(10)]
    assert model.sizes == [4, 4, 2]
    assert (worker.stats.batches, worker.stats.images, worker.stats.largest_batch) == (3, 10, 4)
    worker.close()
    assert not worker.alive


def test_an_idle_worker_waits_a_moment_for_company():
    model = Recorder()
    worker = BatchWorker(model, max_batch=8, wait_s=1.0)
    first = worker.submit(np.zeros(2, dtype=np.float32))
    second = worker.submit(np.ones(2, dtype=np.float32))  # well within the 1 s window
    assert list(second.result(10)) == [2, 2] and list(first.result(10)) == [0, 0]
    assert model.sizes == [2]
    worker.close()


def test_a_failing_batch_fails_its_requests_only_and_the_thread_goes_on():
    model = Recorder()
    worker = BatchWorker(model, max_batch=4, wait_s=0.0)
    release = hold(worker)
    bad = [worker.submit(np.array([np.nan, 1], dtype=np.float32)), worker.submit(np.zeros(2, dtype=np.float32))]
    release.set()
    for future in bad:
        with pytest.raises(ValueError, match="NaN"):
            future.result(10)
    assert list(worker.submit(np.ones(2, dtype=np.float32)).result(10)) == [2, 2]
    worker.close()


def test_a_full_queue_says_so_and_abandoned_requests_are_skipped():
    model = Recorder()
    worker = BatchWorker(model, max_batch=8, wait_s=0.0, max_queued=3)
    release = hold(worker)
    futures = [worker.submit(np.full(1, i, dtype=np.float32)) for i in range(3)]
    with pytest.raises(QueueFull, match="3 images are already waiting"):
        worker.submit(np.zeros(1, dtype=np.float32))
    assert futures[1].cancel()  # a client that went away
    release.set()
    assert futures[0].result(10)[0] == 0 and futures[2].result(10)[0] == 4
    assert model.sizes == [2]
    worker.close()
