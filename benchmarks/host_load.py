"""How busy the host was during a benchmark: CPU steal and this process's CPU seconds.

On a shared virtual machine the hypervisor can give part of each core to other guests
(the ``st`` column of ``vmstat``); a wall time is only as good as that share, so every
benchmark that reports seconds reports it beside them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cpu_times() -> list[int] | None:
    """The machine's aggregate CPU counters from ``/proc/stat`` (user, nice, system, idle,
    iowait, irq, softirq, steal, ...; in clock ticks), or ``None`` off Linux."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if first[0] != "cpu" or len(first) < 9:
        return None
    return [int(v) for v in first[1:]]


def steal_fraction(before: list[int] | None, after: list[int] | None) -> float | None:
    """Share of CPU time the hypervisor gave to other guests between two ``cpu_times``
    readings, or ``None`` when either is missing or no time passed."""
    if before is None or after is None:
        return None
    # guest and guest_nice (fields 9-10) are already counted in user and nice.
    deltas = [b - a for a, b in zip(before[:8], after[:8])]
    total = sum(deltas)
    return deltas[7] / total if total > 0 else None


def process_cpu_seconds() -> float | None:
    """User + system CPU seconds of this process so far, all threads (``None`` where the
    ``resource`` module is missing)."""
    try:
        import resource
    except ImportError:
        return None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_average() -> float:
    """The 1-minute load average, to two decimals: how many others share the machine."""
    return round(os.getloadavg()[0], 2)


def write_results(
    results: dict[str, Any], out: Path, markdown: Callable[[dict[str, Any]], str]
) -> None:
    """Add the load average at the end as ``load_average_end``, write ``results`` as JSON
    to ``out`` (its folder made) and print ``markdown(results)`` and where it went."""
    results["load_average_end"] = load_average()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"\nwrote {out}")


def print_report(report: dict[str, Any], out: str | None) -> None:
    """Print ``report`` as JSON, and write it to ``out`` too when given."""
    text = json.dumps(report, indent=1)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
