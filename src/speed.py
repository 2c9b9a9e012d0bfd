"""Timing and memory of one callable: latency percentiles after warm-up, peak memory net of
the weights, on CPU (wall clock, process RSS) or CUDA (events after synchronisation, the
allocator's peak).

Memory is the increase over the baseline taken after the weights and the inputs are in memory,
so it is what running the call costs (activations, workspace), not what holding the model costs:
- CPU: the peak resident set size (psutil, sampled by a thread every `poll_s`) minus the RSS
  after the first warm-up run (which makes memory-mapped weights resident), once freed heap is
  handed back to the system (malloc_trim where glibc has it), so memory kept from an earlier
  call does not hide this one.
- CUDA: torch.cuda.max_memory_allocated() minus memory_allocated() at the baseline.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch


class Timer(Protocol):
    """time(fn) -> seconds one call of fn takes, with the device's work finished."""

    def time(self, fn: Callable[[], Any]) -> float: ...


class WallTimer:
    """CPU: perf_counter around the call (CPU work is finished when the call returns)."""

    def time(self, fn: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


class CudaEventTimer:
    """CUDA: events recorded on the current stream around the call, read after synchronising,
    so asynchronous kernels are counted and host-side time before launch is not."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def time(self, fn: Callable[[], Any]) -> float:
        torch.cuda.synchronize(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(self.device)
        return start.elapsed_time(end) / 1000.0


class Memory(Protocol):
    """start() takes the baseline; stop() -> peak bytes above it since start()."""

    name: str

    def start(self) -> None: ...
    def stop(self) -> int: ...


def _trim_heap() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: freed heap may stay
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class RssPeak:
    """CPU: peak process RSS above the baseline, sampled by a background thread."""

    name = "rss_increase_over_post_load"

    def __init__(self, poll_s: float = 0.0005) -> None:
        import psutil

        self.proc, self.poll_s = psutil.Process(), poll_s
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.poll_s)

    def start(self) -> None:
        _trim_heap()
        self.base = self.peak = self.proc.memory_info().rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        return max(0, self.peak - self.base)


class CudaPeak:
    """CUDA: the caching allocator's peak above what was allocated at the baseline."""

    name = "cuda_max_allocated_over_post_load"

    def __init__(self, device: torch.device) -> None:
        self.device, self.base = device, 0

    def start(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self.base = torch.cuda.memory_allocated(self.device)

    def stop(self) -> int:
        torch.cuda.synchronize(self.device)
        return max(0, torch.cuda.max_memory_allocated(self.device) - self.base)


def timer_for(device: torch.device) -> Timer:
    """CUDA events on a CUDA device, the wall clock otherwise."""
    return CudaEventTimer(device) if device.type == "cuda" else WallTimer()


def memory_for(device: torch.device) -> Memory:
    """The allocator's peak on a CUDA device, process RSS otherwise."""
    return CudaPeak(device) if device.type == "cuda" else RssPeak()


@dataclass
class Measured:
    seconds: list[float]  # one per timed run, warm-up excluded
    peak_bytes: int  # above the post-load baseline, over the runs after the first
    memory_measure: str

    def summary(self, items: int) -> dict[str, float]:
        """p50 / p95 / mean latency (ms) and throughput (items per second at the median)."""
        s = np.asarray(self.seconds, dtype=float)
        p50, p95 = np.percentile(s, [50, 95])
        return {
            "latency_ms_p50": 1000 * p50,
            "latency_ms_p95": 1000 * p95,
            "latency_ms_mean": 1000 * s.mean(),
            "throughput_per_s": items / p50 if p50 > 0 else float("nan"),
            "peak_mem_net_mb": self.peak_bytes / 2**20,
        }


def measure(fn: Callable[[], Any], device: torch.device, *, warmup: int, iters: int) -> Measured:
    """Run fn `warmup` times untimed, then `iters` times timed; the peak memory of every run
    after the first.

    The first warm-up run comes before the baseline: weights loaded from a memory-mapped file
    become resident only when a forward first touches them, and that is holding the model, not
    running it (the freed activations of that run are handed back before the baseline).
    """
    if iters < 1 or warmup < 1:
        raise ValueError(f"need iters >= 1 and warmup >= 1, got {iters}, {warmup}")
    timer, memory = timer_for(device), memory_for(device)
    timer.time(fn)
    memory.start()
    try:
        for _ in range(warmup - 1):
            timer.time(fn)
        seconds = [timer.time(fn) for _ in range(iters)]
    finally:
        peak = memory.stop()
    return Measured(seconds, peak, memory.name)


def weights_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (shared tensors counted once)."""
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total
