"""The demo as a benchmark: ``medisee demo`` with its defaults, timed, with the host's load.

    python benchmarks/bench_demo.py --out outputs/demo \
        --json benchmarks/results/demo_lite_cpu.json [--model lite-smollm2]

Runs ``medisee.demo.run_demo`` (build the bundled data, train the ``lite`` recipe,
evaluate on the test split beside the baselines) in a process set up as the ``medisee``
command sets up its own (glibc allocator tuning unless ``MEDISEE_MALLOC_TUNING=0``,
``medisee.allocator``) and writes its report (``demo.json``:
seconds per phase, overall metrics per method) together with what the figures depend on:
the host's CPU steal over the run, this process's CPU seconds, the thread count, the CPU
model and the library versions. The README's results table comes from this file.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from host_load import cpu_times, print_report, process_cpu_seconds, steal_fraction


def machine() -> dict:
    import torch
    import transformers

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model or platform.processor(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/demo", help="the demo's output directory")
    parser.add_argument("--model", default="lite", help="preset, trained with its recipe")
    parser.add_argument("--json", help="write the report here too")
    args = parser.parse_args()

    from medisee.allocator import tune_from_environment
    from medisee.demo import DemoConfig, run_demo

    allocator_tuned = tune_from_environment()
    before = cpu_times()
    started = time.perf_counter()
    report = run_demo(DemoConfig(out_dir=args.out, model=args.model))
    report["command"] = "medisee demo" + ("" if args.model == "lite" else f" --model {args.model}")
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["host_steal_fraction"] = steal_fraction(before, cpu_times())
    report["process_cpu_s"] = process_cpu_seconds()
    report["machine"] = machine()
    report["allocator_tuned"] = allocator_tuned
    print_report(report, args.json)


if __name__ == "__main__":
    main()
