"""Training in real processes: kill -9 then --resume, and 2-process CPU DDP."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

DRIVER = Path(__file__).with_name("run_training.py")


def _env():
    env = dict(
        os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false"
    )
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def test_kill_9_then_resume_finishes_the_same_run(tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    command = [sys.executable, str(DRIVER), str(data), str(out), "90", "3"]
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pointer = out / "checkpoints" / "latest"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if pointer.is_file() and pointer.read_text().strip() >= "step_0000006":
            break
        time.sleep(0.05)
    assert process.poll() is None, "training ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    killed_at = int(pointer.read_text().strip().removeprefix("step_"))
    assert not (out / "model").exists()
    # A half-written staging directory may be left behind; resume must ignore it.
    resumed = subprocess.run(
        command + ["--resume"], env=_env(), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 90
    assert summary["resumed_from"] is not None and summary["resumed_from"] >= killed_at
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, 91))
    assert (out / "model" / "model.safetensors").is_file()


def test_two_process_cpu_ddp(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.skip("accelerate CLI not installed next to this interpreter")
    data, out = tmp_path / "data", tmp_path / "run"
    command = [
        accelerate,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
        str(DRIVER),
        str(data),
        str(out),
        "4",
        "2",
    ]
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = [json.loads((out / f"result_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(o["steps"] == 4 for o in outputs)  # both ranks ran
    assert (out / "model" / "model.safetensors").is_file()
    assert (out / "checkpoints" / "step_0000004").is_dir()
