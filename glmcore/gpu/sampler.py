"""Sampling the GPUs in a background thread, and one-off readings for the checks that need free memory.

The app owns one ``GpuSampler``; every GPU panel and free-memory check draws on its latest snapshot, so all of
them show the same moment. Callbacks run on the sampler's thread: a UI must hop to its own thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

from glmcore.gpu.nvml import NvmlBackend
from glmcore.gpu.snapshot import GpuBackend, GpuSnapshot

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 1.5

SnapshotCallback = Callable[[GpuSnapshot], None]


class GpuSampler:
    """Samples the GPUs every ``interval`` seconds in a daemon thread and hands each snapshot to subscribers.

    Callbacks run on the sampler's thread: a UI must hop to its own thread (Textual's ``call_from_thread``).
    A failing callback is logged and does not stop the sampling or the other callbacks.
    """

    def __init__(self, backend: GpuBackend | None = None, *, interval: float = DEFAULT_INTERVAL_S) -> None:
        if interval <= 0:
            raise ValueError(f"The sampling interval must be positive, got {interval}.")
        self.interval = interval
        self._backend: GpuBackend = backend if backend is not None else NvmlBackend()
        self._callbacks: list[SnapshotCallback] = []
        self._lock = threading.Lock()
        self._latest: GpuSnapshot | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="glmcore-gpu-sampler", daemon=True)

    @property
    def latest(self) -> GpuSnapshot | None:
        """The most recent snapshot; None until the first sample is taken."""
        with self._lock:
            return self._latest

    @property
    def available(self) -> bool | None:
        """Whether the GPUs can be read; None until the first sample is taken."""
        latest = self.latest
        return None if latest is None else latest.available

    @property
    def reason(self) -> str | None:
        """Why the GPUs cannot be read, when they cannot."""
        latest = self.latest
        return None if latest is None else latest.reason

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def subscribe(self, callback: SnapshotCallback) -> Callable[[], None]:
        """Call ``callback(snapshot)`` after every sample; returns a function that unsubscribes it."""
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    def start(self) -> GpuSampler:
        """Start sampling (the first sample is taken at once, on the sampler's thread)."""
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop sampling, wait for the thread to finish its current sample, and release the backend."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._backend.close()

    def __enter__(self) -> GpuSampler:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _sample(self) -> GpuSnapshot:
        try:
            return self._backend.read()
        except Exception as error:  # a backend bug must not kill the panels' thread
            logger.exception("Reading the GPUs failed")
            return GpuSnapshot.unavailable(f"Reading the GPUs failed ({error}): GPU panels are paused.")

    def _run(self) -> None:
        while not self._stop.is_set():
            snapshot = self._sample()
            with self._lock:
                self._latest = snapshot
                callbacks = list(self._callbacks)
            for callback in callbacks:
                try:
                    callback(snapshot)
                except Exception:
                    logger.exception("A GPU snapshot subscriber failed")
            self._stop.wait(self.interval)


def read_gpus(backend: GpuBackend | None = None) -> GpuSnapshot:
    """One snapshot now, without a sampler (NVML unless a backend is given); never raises for a missing driver."""
    reader = backend if backend is not None else NvmlBackend()
    try:
        return reader.read()
    finally:
        if backend is None:
            reader.close()


def free_memory_by_gpu(snapshot: GpuSnapshot | None = None) -> dict[int, int]:
    """Free memory in bytes per GPU index, for the VRAM estimate; empty when no GPU can be read."""
    if snapshot is None:
        snapshot = read_gpus()
    return {gpu.index: gpu.memory_free for gpu in snapshot.gpus if gpu.memory_free is not None}
