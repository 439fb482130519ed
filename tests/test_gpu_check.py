"""``benchmarks/gpu_check.py`` end to end on CPU with ``--tiny`` (same code path as the
full-size GPU run), and its out-of-memory fallback."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_check"]


def test_tiny_run_writes_the_json(gpu_check, tmp_path: Path) -> None:
    out = tmp_path / "results" / "gpu_check.json"
    argv = ["--tiny", "--device", "cpu", "--batch", "2", "--text-tokens", "24", "--steps", "1"]
    argv += ["--repeats", "1", "--new-tokens", "3", "--out", str(out)]
    result = gpu_check.main(argv)
    assert json.loads(out.read_text()) == result
    train = result["train"]
    assert train["batch_size"] == train["requested_batch_size"] == 2 and not train["notes"]
    assert train["sequence_length"] >= 16 + 24  # image tokens + text
    assert train["step_s_median"] > 0 and torch.isfinite(torch.tensor(train["loss"]))
    inference = result["inference"]
    assert inference["new_tokens"] == 3
    assert inference["decode_tokens_per_s"] > 0
    for key in ("sam_encoder_s", "prefill_s", "decoders_s"):
        assert inference[key] > 0
    assert result["parameters"]["trainable"] > 0


def test_out_of_memory_falls_back_to_smaller_batches(gpu_check) -> None:
    tried = []

    def step_check(model, device, batch_size, text_tokens, steps):
        tried.append(batch_size)
        if batch_size > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"batch_size": batch_size}

    model = torch.nn.Linear(2, 2)
    result = gpu_check.train_with_fallback(
        model, torch.device("cpu"), 15, 256, 1, step_check=step_check
    )
    assert tried == [15, 8, 4]
    assert result["batch_size"] == 4 and result["requested_batch_size"] == 15
    assert result["notes"] == [
        "batch 15: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)",
        "batch 8: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)",
    ]

    def never(*args):
        raise torch.OutOfMemoryError("")

    assert gpu_check.train_with_fallback(model, torch.device("cpu"), 2, 8, 1, step_check=never)[
        "failed"
    ]


@pytest.mark.slow
def test_tiny_run_in_bf16_autocast(gpu_check, tmp_path: Path) -> None:
    """The GPU run's precision (bf16 frozen weights, fp32 trainable, bf16 autocast)."""
    argv = ["--tiny", "--device", "cpu", "--dtype", "bfloat16", "--batch", "2"]
    argv += ["--text-tokens", "16", "--steps", "1", "--repeats", "1", "--new-tokens", "2"]
    result = gpu_check.main([*argv, "--out", str(tmp_path / "r.json")])
    assert "bf16 autocast" in result["precision"]
    assert torch.isfinite(torch.tensor(result["train"]["loss"]))


def test_full_size_architecture_on_meta_matches_the_memory_estimate(gpu_check) -> None:
    """The model the GPU run builds has the paper's sizes: built on the meta device (no
    memory), its parameter counts equal ``medisee.model.memory``'s for medisee-7b."""
    from medisee.model.builder import parameter_report
    from medisee.model.memory import estimate_training_memory

    model = gpu_check.build_full_size(torch.device("meta"), tiny=False)
    report = parameter_report(model)
    counts = estimate_training_memory().parameters
    assert report.total_trainable == counts["trainable"]
    assert report.total_trainable + report.total_frozen == counts["total"]
    assert model.language.num_image_tokens == 576
    assert model.config.mask.image_size == 1024
