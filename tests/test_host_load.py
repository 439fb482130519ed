"""``benchmarks/host_load.py``: steal share and CPU seconds, from hand-made readings."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def host_load():
    spec = importlib.util.spec_from_file_location("host_load", ROOT / "benchmarks" / "host_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_steal_fraction_from_two_readings(host_load):
    # user nice system idle iowait irq softirq steal guest guest_nice
    before = [100, 0, 20, 500, 0, 0, 0, 30, 7, 0]
    after = [160, 0, 30, 520, 0, 0, 0, 130, 9, 0]
    # deltas 60 + 10 + 20 + 100 steal = 190 ticks (guest excluded: already in user)
    assert host_load.steal_fraction(before, after) == pytest.approx(100 / 190)
    assert host_load.steal_fraction(None, after) is None
    assert host_load.steal_fraction(before, before) is None
    readings = host_load.cpu_times()
    assert readings is None or (len(readings) >= 8 and all(v >= 0 for v in readings))


def test_process_cpu_seconds_counts_work(host_load):
    before = host_load.process_cpu_seconds()
    if before is None:
        pytest.skip("no resource module on this platform")
    total = 0
    for i in range(2_000_000):
        total += i
    assert host_load.process_cpu_seconds() > before
