"""Timing and memory measurement helpers for the demo, the benchmarks and performance tests.

Private module: the helpers are small, documented and tested (``tests/test_measure.py``), but
not part of the public API.

CPU memory: PyTorch's CPU allocator keeps no statistics, so :func:`memory_stats` records the
allocator's events with :class:`torch.profiler.profile` (``profile_memory=True``) and replays
them in time order: every allocation adds its size, every free subtracts it, and the peak is
the running sum's maximum above the starting point. The largest single allocation comes for
free from the same events (used to check that a call builds no N×N' tensor). On CUDA the peak
comes from :func:`torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = [
    "RECOMMENDED_ALLOCATOR",
    "MemoryStats",
    "allocator_settings",
    "cpu_model",
    "load_average",
    "machine_info",
    "format_bytes",
    "format_seconds",
    "median_time",
    "memory_stats",
    "peak_memory",
]


class MemoryStats(NamedTuple):
    """Memory used by one call.

    Attributes:
        peak_bytes (int): the highest total of tensor memory allocated during the call, above
            what was allocated when it started (never negative).
        largest_bytes (int): the largest single allocation made during the call.
        num_allocs (int): the number of allocations made during the call.
    """

    peak_bytes: int
    largest_bytes: int
    num_allocs: int


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(
    fn: Callable[[], Any],
    *,
    warmup: int = 1,
    repeat: int = 5,
    device: torch.device | str = "cpu",
) -> float:
    """Median wall-clock time of ``fn()`` in seconds (:func:`time.perf_counter`).

    Args:
        fn (callable): the call to time, without arguments.
        warmup (int): untimed calls first. (default: ``1``)
        repeat (int): timed calls; the median is returned. (default: ``5``)
        device (torch.device or str): on a CUDA device the stream is synchronised around each
            call so that the kernels are timed, not their launch. (default: ``"cpu"``)

    Returns:
        float: the median of ``repeat`` timings, in seconds.
    """
    if warmup < 0:
        raise ValueError(f"warmup: expected a non-negative int, got {warmup}")
    if repeat < 1:
        raise ValueError(f"repeat: expected a positive int, got {repeat}")
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's C++ start/stop banners), Python's included."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2 (embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _replay(events: list[tuple[int, int, int]]) -> MemoryStats:
    """Peak running sum, largest allocation and count from (time, order, nbytes) events."""
    total = peak = largest = count = 0
    for _, _, nbytes in sorted(events):
        total += nbytes
        peak = max(peak, total)
        if nbytes > 0:
            largest = max(largest, nbytes)
            count += 1
    return MemoryStats(peak, largest, count)


def memory_stats(fn: Callable[[], Any], *, device: torch.device | str = "cpu") -> MemoryStats:
    """Peak memory and largest single allocation of tensors on ``device`` during ``fn()``.

    Runs ``fn`` once under :class:`torch.profiler.profile` with ``profile_memory=True`` and
    replays the allocator events (``[memory]`` events: positive ``nbytes`` for an allocation,
    negative for a free) in time order. Memory allocated before the call does not count; a
    tensor allocated before and freed during the call lowers the running sum.

    Args:
        fn (callable): the call to measure, without arguments.
        device (torch.device or str): whose allocations count: ``"cpu"`` or a CUDA device.
            (default: ``"cpu"``)

    Returns:
        MemoryStats: ``(peak_bytes, largest_bytes, num_allocs)``.
    """
    device = torch.device(device)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    prof = profile(activities=activities, profile_memory=True)
    with _quiet_stderr():
        prof.__enter__()
    # fd 2 stays silenced during the call too: freeing a tensor allocated before the profiler
    # started makes the C++ allocator warn ("Memory block of unknown size ..."). Python warnings
    # raised by ``fn`` are recorded and re-issued once stderr is back.
    try:
        with warnings.catch_warnings(record=True) as caught, _quiet_stderr():
            warnings.simplefilter("always")
            fn()
            _synchronize(device)
    finally:
        with _quiet_stderr():
            prof.__exit__(None, None, None)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    wanted = device.type.upper()
    events = []
    # kineto's events carry nbytes() at run time; torch's stubs do not declare it.
    results: Any = prof.profiler.kineto_results if prof.profiler is not None else None
    for order, event in enumerate(results.events() if results is not None else []):
        if event.name() != "[memory]" or event.nbytes() == 0:
            continue
        if str(event.device_type()).rsplit(".", 1)[-1] != wanted:
            continue
        if device.type == "cuda" and device.index is not None:
            if event.device_index() != device.index:
                continue
        events.append((event.start_ns(), order, event.nbytes()))
    return _replay(events)


def peak_memory(fn: Callable[[], Any], *, device: torch.device | str = "cpu") -> int:
    """Peak tensor memory allocated on ``device`` during ``fn()``, in bytes above the start.

    On the CPU this is :func:`memory_stats`' ``peak_bytes`` (profiler events replayed). On a
    CUDA device it is :func:`torch.cuda.max_memory_allocated` after resetting the peak,
    minus what was allocated before the call.

    Args:
        fn (callable): the call to measure, without arguments.
        device (torch.device or str): ``"cpu"`` or a CUDA device. (default: ``"cpu"``)

    Returns:
        int: bytes (``0`` when the call allocates nothing).

    Example:
        >>> peak_memory(lambda: torch.empty(2**20)) >= 4 * 2**20
        True
    """
    device = torch.device(device)
    if device.type != "cuda":
        return memory_stats(fn, device=device).peak_bytes
    torch.cuda.synchronize(device)
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - start)


def format_seconds(seconds: float | None) -> str:
    """Seconds as a short string: ``"0.757 ms"``, ``"355 ms"``, ``"1.20 s"``; ``"—"`` for None."""
    if seconds is None:
        return "—"
    if seconds < 0.1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def format_bytes(nbytes: int | None) -> str:
    """Bytes in B/KiB/MiB/GiB with 3 significant digits: ``"1.95 MiB"``; ``"—"`` for None."""
    if nbytes is None:
        return "—"
    if nbytes < 1024:
        return f"{int(nbytes)} B"
    value = float(nbytes)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.0f} {unit}" if value >= 99.95 else f"{value:.3g} {unit}"


#: glibc settings that keep large tensors on the heap (see docs/performance.md).
RECOMMENDED_ALLOCATOR = "MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776"


def _nlgraph_version() -> str:
    from nlgraph import __version__

    return __version__


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or :func:`platform.processor` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def allocator_settings() -> dict[str, str]:
    """The glibc ``MALLOC_*`` variables and ``LD_PRELOAD`` (tcmalloc, jemalloc) in effect."""
    keys = sorted(k for k in os.environ if k.startswith("MALLOC_"))
    found = {k: os.environ[k] for k in keys}
    if os.environ.get("LD_PRELOAD"):
        found["LD_PRELOAD"] = os.environ["LD_PRELOAD"]
    return found


def load_average() -> str:
    """The 1-minute load average (other work on the cores skews every timing), or ``n/a``."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def machine_info() -> dict[str, str]:
    """What the results depend on: CPU, cores and threads, versions, allocator, date."""
    alloc = allocator_settings()
    alloc_text = " ".join(f"{k}={v}" for k, v in alloc.items()) or (
        f"glibc defaults (none set; recommended: {RECOMMENDED_ALLOCATOR})"
    )
    return {
        "CPU": cpu_model(),
        "cores": f"{os.cpu_count()} logical, torch threads {torch.get_num_threads()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "nlgraph": _nlgraph_version(),
        "allocator": alloc_text,
        "load average (1 min) at start": load_average(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
