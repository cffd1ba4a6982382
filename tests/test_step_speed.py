"""``benchmarks/step_speed.py``'s timed blocks: the median and the page-fault and system-time
counts per iteration (the rest of the script needs PyTorch, not in the test environment)."""

import importlib.util
import mmap
import sys
from pathlib import Path

import pytest

resource = pytest.importorskip("resource")  # Unix only, as the counters

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("step_speed", ROOT / "benchmarks" / "step_speed.py")
step_speed = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = step_speed  # its dataclasses look their module up there
_spec.loader.exec_module(step_speed)

SIZE = 16 * step_speed.MB
_PATTERN = b"\1" * SIZE  # written by both runs (made once: a new one would fault too)


def _touch_fresh_mapping(_: int) -> float:
    """Maps 16 MiB afresh, writes every byte and unmaps it: what an XLA CPU step does with its
    temporaries when they are not reused. Small pages, so each page is one fault."""
    with mmap.mmap(-1, SIZE) as memory:
        if hasattr(mmap, "MADV_NOHUGEPAGE"):  # Linux: no transparent huge page here
            memory.madvise(mmap.MADV_NOHUGEPAGE)
        memory.write(_PATTERN)
    return 0.0


_KEPT = memoryview(bytearray(SIZE))  # a memoryview writes in place, never reallocating


def _touch_kept_buffer(_: int) -> float:
    """Writes every byte of one 16 MiB buffer that stays mapped: no fault after the first."""
    _KEPT[:] = _PATTERN
    return 0.0


def test_the_median_is_of_the_runs_own_times():
    times = [0.004, 0.001, 0.003, 0.002, 0.005]
    block = step_speed.timed_block(lambda i: times[i - 10], 10, len(times))
    assert block.median_ms == pytest.approx(3.0)


def test_a_fresh_mapping_per_iteration_shows_as_page_faults():
    for _ in range(2):  # its first-touch faults before the block
        _touch_kept_buffer(0)
    fresh = step_speed.timed_block(_touch_fresh_mapping, 0, 4)
    kept = step_speed.timed_block(_touch_kept_buffer, 0, 4)
    assert 0.9 * SIZE <= fresh.fault_mb * step_speed.MB <= 1.5 * SIZE, fresh  # per iteration
    assert kept.fault_mb < 1.0, kept
    assert fresh.system_ms >= 0.0 and kept.system_ms >= 0.0


def test_pair_formats_both_frameworks_or_a_dash():
    assert step_speed._pair(312.4, 2.6) == "312 / 3"
    assert step_speed._pair(None, 2.6) == "–"
