"""Tests of nlgraph._measure: timing and profiler-based peak memory."""

from __future__ import annotations

import sys
import time

import pytest
import torch

from nlgraph._measure import (
    MemoryStats,
    _replay,
    cpu_model,
    format_bytes,
    format_seconds,
    machine_info,
    median_time,
    memory_stats,
    peak_memory,
)

MiB = 2**20


def _floats(nbytes: int) -> torch.Tensor:
    return torch.ones(nbytes // 4)


def test_one_large_allocation_is_counted():
    def fn():
        _floats(100 * MiB)

    peak = peak_memory(fn)
    assert 100 * MiB <= peak < 101 * MiB


def test_sequential_allocations_do_not_add_up():
    def fn():
        for _ in range(10):
            t = _floats(10 * MiB)
            del t

    stats = memory_stats(fn)
    assert 10 * MiB <= stats.peak_bytes < 11 * MiB
    assert stats.largest_bytes == 10 * MiB
    assert stats.num_allocs == 10


def test_overlapping_allocations_add_up():
    def fn():
        kept = [_floats(10 * MiB) for _ in range(3)]
        return kept

    assert 30 * MiB <= peak_memory(fn) < 31 * MiB


def test_memory_held_before_the_call_does_not_count():
    held = _floats(50 * MiB)

    def fn():
        return held + 1  # one new 50 MiB tensor, freed when the result is dropped

    assert 50 * MiB <= peak_memory(fn) < 51 * MiB


def test_backward_allocations_are_seen():
    x = torch.randn(1024, 1024, requires_grad=True)  # 4 MiB

    def fn():
        x.exp().sum().backward()

    stats = memory_stats(fn)
    # exp saves its 4 MiB output for the backward, which allocates x.grad (4 MiB) meanwhile.
    assert 8 * MiB <= stats.peak_bytes < 9 * MiB
    assert x.grad is not None


def test_nothing_allocated_gives_zero():
    assert peak_memory(lambda: None) == 0
    assert memory_stats(lambda: None) == MemoryStats(0, 0, 0)


def test_replay_orders_events_by_time():
    # (time, order, nbytes): the free at t=2 comes before the second alloc at t=3.
    events = [(3, 2, 10), (1, 0, 10), (2, 1, -10), (4, 3, -10)]
    assert _replay(events) == MemoryStats(peak_bytes=10, largest_bytes=10, num_allocs=2)


def test_replay_never_reports_below_zero():
    assert _replay([(1, 0, -100), (2, 1, 30)]) == MemoryStats(0, 30, 1)


def test_profiler_banners_are_silenced_and_stderr_restored(capfd):
    memory_stats(lambda: torch.ones(10))
    print("still here", file=sys.stderr)
    err = capfd.readouterr().err
    assert "still here" in err
    assert "profiler_start" not in err


def test_freeing_memory_from_before_the_call_prints_nothing(capfd):
    """The allocator's "allocated before the profiling started" warning stays off stderr,
    and the freed bytes still lower the running sum (nothing counted as a peak)."""
    held = [_floats(4 * MiB)]
    stats = memory_stats(lambda: held.pop())
    assert "before the profiling started" not in capfd.readouterr().err
    assert stats.peak_bytes == 0


def test_python_warnings_inside_the_call_still_surface():
    def warn() -> None:
        import warnings

        warnings.warn("from fn", UserWarning, stacklevel=1)

    with pytest.warns(UserWarning, match="from fn"):
        memory_stats(warn)


def test_machine_info_names_what_the_results_depend_on(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    info = machine_info()
    assert info["torch"] == torch.__version__
    assert "MALLOC_MMAP_MAX_=0" in info["allocator"]
    assert f"torch threads {torch.get_num_threads()}" in info["cores"]
    assert info["CPU"] == cpu_model() and info["CPU"]
    monkeypatch.delenv("MALLOC_MMAP_MAX_")
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert "none set" in machine_info()["allocator"]


def test_median_time_counts_calls_and_returns_the_median():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.01 if len(calls) != 3 else 0.2)  # one outlier

    t = median_time(fn, warmup=2, repeat=5)
    assert len(calls) == 7
    assert 0.009 <= t < 0.1


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"repeat": 0}, "^repeat"), ({"warmup": -1}, "^warmup")]
)
def test_median_time_rejects_bad_counts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        median_time(lambda: None, **kwargs)


def test_formats():
    assert format_seconds(None) == format_bytes(None) == "—"
    assert format_seconds(7.57e-4) == "0.757 ms"
    assert format_seconds(0.355) == "355 ms"
    assert format_seconds(1.2) == "1.20 s"
    assert format_bytes(512) == "512 B"
    assert format_bytes(int(1.95 * MiB)) == "1.95 MiB"
    assert format_bytes(3 * 2**30) == "3 GiB"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_memory():
    def fn():
        torch.empty(100 * MiB // 4, device="cuda")

    assert peak_memory(fn, device="cuda") >= 100 * MiB
    assert memory_stats(fn, device="cuda").largest_bytes >= 100 * MiB
