"""LoRA merge / standalone export (``medisee export``) and the full-size load options
(bf16 LLM, bitsandbytes config passed to the LLM only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medisee.cli import main
from medisee.model.config import LanguageConfig, LoraSettings
from medisee.model.export import LANGUAGE_MODEL_DIR, export_model, is_exported, merge_lora
from medisee.model.medisee import MediSee, build_model
from medisee.model.mllm import QUANTIZATION_SKIP_MODULES
from medisee.model.presets import tiny
from medisee.model.tokenizer import train_lite_tokenizer
from tests.conftest import TINY_CORPUS, make_batch
from tests.model.test_llava_backbone import tiny_llava_config

MODEL_KEYS = ("input_ids", "attention_mask", "image_sizes", "pixel_values")
LORA = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj"))


def _trained_like(model: MediSee) -> MediSee:
    """Give every adapter a non-trivial value, as training would: LoRA B starts at zero
    and the token deltas at the original rows, which would make merging a no-op."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.language.model.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name:
                noise = torch.randn(parameter.shape, generator=generator) * 0.5
                parameter.add_(noise)
    return model.eval()


def _llava_model() -> MediSee:
    tokenizer = train_lite_tokenizer(TINY_CORPUS, 400)
    config = tiny()
    config.language = LanguageConfig(
        backbone="llava",
        hf_config=tiny_llava_config(tokenizer),
        lora=LORA,
        attn_implementation="eager",
        chat_format="mistral",
    )
    torch.manual_seed(0)
    return _trained_like(build_model(config, tokenizer=tokenizer))


def _lite_model() -> MediSee:
    config = tiny()
    config.language.lora = LORA
    torch.manual_seed(0)
    return _trained_like(build_model(config, corpus=TINY_CORPUS))


def _outputs(model: MediSee, batch: dict[str, torch.Tensor]):
    with torch.no_grad():
        keys = MODEL_KEYS if "pixel_values" in batch else MODEL_KEYS[:3]
        return model(**{k: batch[k] for k in keys})


@pytest.fixture(scope="module")
def llava_export(tmp_path_factory) -> tuple[Path, Path]:
    """(trained checkpoint with LoRA, its export)."""
    root = tmp_path_factory.mktemp("llava")
    _llava_model().save_pretrained(root / "trained")
    export_model(root / "trained", root / "exported")
    return root / "trained", root / "exported"


def _assert_same_outputs(before, after) -> None:
    for field in ("logits", "boxes", "mask_logits", "iou_scores"):
        torch.testing.assert_close(
            getattr(after, field), getattr(before, field), rtol=1e-5, atol=1e-5, msg=field
        )


def test_llava_export_gives_the_unmerged_outputs(llava_export: tuple[Path, Path]) -> None:
    trained_dir, exported_dir = llava_export
    trained = MediSee.from_pretrained(trained_dir).eval()
    batch = make_batch(trained)
    before = _outputs(trained, batch)
    with trained.language.model.disable_adapter():
        without_adapters = _outputs(trained, batch)
    assert (before.logits - without_adapters.logits).abs().max() > 1e-2  # merging matters

    assert is_exported(exported_dir) and not is_exported(trained_dir)
    config = json.loads((exported_dir / "config.json").read_text())
    assert config["language"]["lora"] is None
    assert config["language"]["pretrained_path"] == LANGUAGE_MODEL_DIR
    assert config["language"]["hf_config"] is None
    # The LLaVA part is a plain HF directory: no adapter tensors anywhere.
    from safetensors import safe_open

    llava_files = list((exported_dir / LANGUAGE_MODEL_DIR).glob("*.safetensors"))
    assert llava_files
    for path in [*llava_files, exported_dir / "model.safetensors"]:
        with safe_open(str(path), framework="pt") as handle:
            assert not [k for k in handle.keys() if "lora" in k or "token" in k and "delta" in k]
    with safe_open(str(exported_dir / "model.safetensors"), framework="pt") as handle:
        assert not [k for k in handle.keys() if k.startswith("language.")]

    exported = MediSee.from_pretrained(exported_dir).eval()
    assert not hasattr(exported.language.model, "peft_config")
    assert not [n for n, _ in exported.named_modules() if "lora_" in n or "token_adapter" in n]
    after = _outputs(exported, batch)
    _assert_same_outputs(before, after)

    # The new-token rows were merged: the candidate rows differ from the un-adapted base.
    candidate = exported.candidate_token_ids
    base_rows = trained.language.model.base_model.model.model.language_model.embed_tokens
    original = base_rows.token_adapter.base_layer.weight[candidate]
    merged = exported.language.base_model.get_input_embeddings().weight[candidate]
    assert not torch.allclose(original, merged)


def test_lite_export_with_lora(tmp_path: Path) -> None:
    model = _lite_model()
    batch = make_batch(model)
    before = _outputs(model, batch)
    model.save_pretrained(tmp_path / "trained")
    report = export_model(tmp_path / "trained", tmp_path / "exported")
    assert report.merged_lora and report.backbone == "lite"
    assert not is_exported(tmp_path / "exported")  # plain save_pretrained layout
    exported = MediSee.from_pretrained(tmp_path / "exported").eval()
    assert exported.config.language.lora is None
    _assert_same_outputs(before, _outputs(exported, batch))


def test_export_keeps_the_exam_head_and_the_question_prior(tmp_path: Path) -> None:
    from medisee.model.config import QuestionPriorConfig

    model = _lite_model()
    model.config.labels = ("brain", "liver")
    model.attach_exam_head({"abdominal_ct": ("liver",), "brain_mri": ("brain",)})
    model.attach_question_prior(QuestionPriorConfig("unused.gguf", layers=1, width=8))
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for module in (model.exam_head, model.question_prior):
            for tensor in (*module.parameters(), *module.buffers()):
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    model.save_pretrained(tmp_path / "trained")
    export_model(tmp_path / "trained", tmp_path / "exported")
    exported = MediSee.from_pretrained(tmp_path / "exported")
    assert exported.config.exams == model.config.exams
    assert exported.config.question_prior == model.config.question_prior
    for name in ("exam_head", "question_prior"):
        original, loaded = getattr(model, name).state_dict(), getattr(exported, name).state_dict()
        assert original.keys() == loaded.keys()
        assert all(torch.equal(original[key], loaded[key]) for key in original)


def test_merge_lora_in_memory_and_without_adapters() -> None:
    model = _lite_model()
    batch = make_batch(model)
    before = _outputs(model, batch)
    assert merge_lora(model) is True
    _assert_same_outputs(before, _outputs(model, batch))
    assert merge_lora(model) is False  # nothing left to merge


def test_export_cli(llava_export: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    trained_dir, _ = llava_export
    out = tmp_path / "cli"
    assert main(["export", "--model", str(trained_dir), "--out", str(out)]) == 0
    assert "LoRA merged" in capsys.readouterr().out
    assert is_exported(out)
    assert main(["export", "--model", str(trained_dir), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_bf16_llm_and_quantization_config_reach_the_llm_only(
    llava_export: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``llm_quantization`` builds a BitsAndBytesConfig and hands it to the LLaVA
    ``from_pretrained`` only (bitsandbytes needs a GPU: the mock drops it and loads bf16);
    the segmenter and heads stay fp32 and the mixed-precision model runs."""
    from transformers import BitsAndBytesConfig, LlavaForConditionalGeneration

    _, exported_dir = llava_export
    calls: list[tuple[str, dict]] = []
    original = LlavaForConditionalGeneration.from_pretrained.__func__

    def recording(cls, path, *args, **kwargs):
        calls.append((str(path), dict(kwargs)))
        kwargs.pop("quantization_config", None)
        return original(cls, path, *args, **kwargs)

    monkeypatch.setattr(LlavaForConditionalGeneration, "from_pretrained", classmethod(recording))
    model = MediSee.from_pretrained(
        exported_dir, llm_dtype=torch.bfloat16, llm_quantization="4bit"
    ).eval()

    assert len(calls) == 1
    path, kwargs = calls[0]
    assert path == str(exported_dir / LANGUAGE_MODEL_DIR)
    quantization = kwargs["quantization_config"]
    assert isinstance(quantization, BitsAndBytesConfig)
    assert quantization.load_in_4bit and not quantization.load_in_8bit
    assert quantization.bnb_4bit_quant_type == "nf4"
    assert quantization.bnb_4bit_compute_dtype == torch.bfloat16
    assert set(QUANTIZATION_SKIP_MODULES) <= set(quantization.llm_int8_skip_modules)
    assert kwargs["dtype"] == torch.bfloat16
    assert {p.dtype for p in model.language.parameters()} == {torch.bfloat16}
    for part in (model.segmenter, model.fusion, model.box_decoder, model.seg_projection):
        assert {p.dtype for p in part.parameters()} == {torch.float32}

    batch = make_batch(model)
    out = _outputs(model, batch)
    assert out.logits.dtype == torch.bfloat16 and out.mask_logits.dtype == torch.float32
    assert torch.isfinite(out.mask_logits).all() and torch.isfinite(out.boxes).all()

    calls.clear()
    MediSee.from_pretrained(exported_dir, llm_quantization="8bit")
    assert calls[0][1]["quantization_config"].load_in_8bit


def test_quantization_needs_an_export(llava_export: tuple[Path, Path]) -> None:
    trained_dir, exported_dir = llava_export
    with pytest.raises(ValueError, match="medisee export"):
        MediSee.from_pretrained(trained_dir, llm_quantization="4bit")
    with pytest.raises(ValueError, match="quantization must be one of"):
        MediSee.from_pretrained(exported_dir, llm_quantization="3bit")


def test_llm_options_are_refused_for_lite() -> None:
    with pytest.raises(ValueError, match="llava backbone only"):
        build_model(tiny(), corpus=TINY_CORPUS, llm_dtype=torch.bfloat16)
