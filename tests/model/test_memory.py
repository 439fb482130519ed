"""The memory estimate: exact parameter counts (checked against the real classes built on
the ``meta`` device, so nothing is allocated) and the scaling of its terms."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from medisee.cli import main
from medisee.model.config import (
    GroundingConfig,
    LanguageConfig,
    LoraSettings,
    MaskConfig,
    ViTConfig,
)
from medisee.model.memory import (
    ArchitectureSizes,
    TextSizes,
    TrainingSetup,
    VisionSizes,
    estimate_training_memory,
    head_parameters,
    lora_parameters,
    memory_breakdown,
    parameter_counts,
    projector_parameters,
    sam_parameters,
    text_parameters,
    vision_parameters,
)
from medisee.model.presets import get_preset, medisee_7b

MEDISEE_7B = ArchitectureSizes.from_config(medisee_7b())


def _mistral_config(text: TextSizes, vocab: int):
    from transformers import MistralConfig

    return MistralConfig(vocab_size=vocab, **text.hf_fields())


def _clip_config(vision: VisionSizes):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**vision.hf_fields())


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_llava_med_7b_counts_equal_the_real_classes_on_meta() -> None:
    from transformers import (
        CLIPVisionModel,
        LlavaConfig,
        LlavaForConditionalGeneration,
        MistralForCausalLM,
    )

    sizes = MEDISEE_7B
    assert sizes.vocab_size == 32003  # 32000 + <image> + 2 candidate tokens
    text = text_parameters(sizes.text, sizes.vocab_size)
    mistral_config = _mistral_config(sizes.text, sizes.vocab_size)
    clip_config = _clip_config(sizes.vision)
    with torch.device("meta"):
        mistral = MistralForCausalLM(mistral_config)
        clip = CLIPVisionModel(clip_config)
        llava = LlavaForConditionalGeneration(
            LlavaConfig(
                text_config=mistral_config.to_dict(),
                vision_config=clip_config.to_dict(),
                image_token_id=32000,
            )
        )
    assert sum(text.values()) == _numel(mistral) == 7_241_756_672
    assert text["lm_head"] == mistral.lm_head.weight.numel()
    assert vision_parameters(sizes.vision) == _numel(clip) == 303_507_456
    projector = projector_parameters(sizes.vision.hidden_size, sizes.text.hidden_size)
    assert projector == _numel(llava.model.multi_modal_projector)
    assert sum(text.values()) + vision_parameters(sizes.vision) + projector == _numel(llava)
    assert sizes.num_image_tokens == 576


def test_medsam_vit_b_and_head_counts_equal_the_real_classes_on_meta() -> None:
    from medisee.model.box_decoder import BoxDecoder
    from medisee.model.builder import _seg_projection
    from medisee.model.fusion import CandidateFusion
    from medisee.model.mask_decoder import build_segmenter

    config = medisee_7b()
    sizes = MEDISEE_7B
    with torch.device("meta"):
        segmenter = build_segmenter(dataclasses.replace(config.mask, weights=None))
        d = sizes.text.hidden_size
        fusion = CandidateFusion(d, config.num_candidate_tokens, config.fusion)
        box = BoxDecoder(d, config.box)
        projection = _seg_projection(d, config.mask.prompt_dim, config.seg_projection_hidden)
    state = segmenter.state_dict()
    sam = sam_parameters(sizes.mask)
    for part in ("image_encoder", "prompt_encoder", "mask_decoder"):
        assert sam[part] == sum(v.numel() for k, v in state.items() if k.startswith(part)), part
    assert sum(sam.values()) == 93_735_728  # MedSAM ViT-B
    heads = head_parameters(sizes)
    assert heads == {
        "fusion": _numel(fusion),
        "box_decoder": _numel(box),
        "seg_projection": _numel(projection),
    }


@pytest.mark.parametrize(
    "targets", [("q_proj", "v_proj"), ("q_proj", "k_proj", "o_proj", "down_proj")]
)
def test_lora_count_equals_peft(targets: tuple[str, ...]) -> None:
    """Grouped-query sizes, so k/v differ from q."""
    from peft import LoraConfig, get_peft_model
    from transformers import MistralForCausalLM

    text = TextSizes(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
    )
    settings = LoraSettings(r=8, target_modules=targets)
    with torch.device("meta"):
        model = get_peft_model(
            MistralForCausalLM(_mistral_config(text, 64)),
            LoraConfig(r=8, target_modules=list(targets)),
        )
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert lora_parameters(text, settings) == lora
    assert lora_parameters(MEDISEE_7B.text, MEDISEE_7B.lora) == 3_407_872  # r=8 on q, v


def test_trainable_and_frozen_totals_match_a_built_model() -> None:
    """The whole accounting (LLM, CLIP, projector, LoRA, new token rows, SAM, heads, and
    the trainable/frozen split of ``apply_trainable_policy``) on a tiny built model."""
    from medisee.model.builder import parameter_report
    from medisee.model.medisee import build_model
    from medisee.model.presets import tiny
    from medisee.model.tokenizer import train_lite_tokenizer
    from tests.conftest import TINY_CORPUS

    tokenizer = train_lite_tokenizer(TINY_CORPUS, 400)
    text = TextSizes(len(tokenizer), 32, 64, 2, 4, 2)
    vision = VisionSizes(24, 48, 2, 2, 32, 8)
    mask = MaskConfig(
        encoder="vit",
        image_size=32,
        prompt_dim=32,
        vit=ViTConfig(16, 2, 2, 32, 4, 3, (1,)),
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
    )
    config = tiny()
    config.mask = mask
    config.grounding = GroundingConfig(enabled=True, dim=16, refine_layers=2, refine_dim=8)
    config.language = LanguageConfig(
        backbone="llava",
        hf_config={
            "text_config": _mistral_config(text, len(tokenizer)).to_dict(),
            "vision_config": _clip_config(vision).to_dict(),
            "image_token_id": tokenizer.convert_tokens_to_ids("<image>"),
        },
        lora=LoraSettings(r=4, target_modules=("q_proj", "v_proj")),
    )
    report = parameter_report(build_model(config, tokenizer=tokenizer))
    sizes = ArchitectureSizes.from_config(config, text=text, vision=vision, added_tokens=0)
    counts = parameter_counts(sizes)
    assert counts["trainable"] == report.total_trainable
    assert counts["frozen"] == report.total_frozen


def test_sharded_terms_scale_with_the_number_of_gpus() -> None:
    one, four, eight = (estimate_training_memory(gpus=n) for n in (1, 4, 8))
    for key in ("optimizer_states", "gradients"):
        assert one.per_gpu[key] == pytest.approx(4 * four.per_gpu[key], abs=4)
        assert one.per_gpu[key] == pytest.approx(8 * eight.per_gpu[key], abs=8)
    trainable = one.parameters["trainable"]
    assert one.per_gpu["optimizer_states"] == 12 * trainable  # fp32 master + 2 moments
    for key in ("weights_bf16", "reduce_buckets", "inputs", "activations"):
        assert one.per_gpu[key] == four.per_gpu[key] == eight.per_gpu[key]
    assert one.per_gpu["weights_bf16"] == 2 * one.parameters["total"]
    assert one.total_bytes > four.total_bytes > eight.total_bytes


def test_activations_scale_with_batch_and_sequence() -> None:
    base = estimate_training_memory(batch_size=15)
    double = estimate_training_memory(batch_size=30)
    for phase in base.phases:
        assert double.phases[phase] == 2 * base.phases[phase]
    longer = estimate_training_memory(text_tokens=512)
    assert longer.sequence_length == 576 + 512
    assert longer.phases["layer_backward"] > base.phases["layer_backward"]
    cached = estimate_training_memory(cache_embeddings=True)
    assert cached.phases["sam_encoder"] == 0
    no_checkpointing = estimate_training_memory(setup=TrainingSetup(gradient_checkpointing=False))
    assert no_checkpointing.phases["layer_backward"] > 4 * base.phases["layer_backward"]


def test_paper_setting_breakdown() -> None:
    """medisee-7b, 4 GPUs, batch 15: the numbers docs/full_scale.md quotes."""
    data = memory_breakdown(preset="medisee-7b", gpus=4, batch_size=15)
    json.dumps(data)  # plain data
    assert data["sequence_length"] == 832
    assert data["parameters"]["total"] == 7_700_379_704
    assert data["parameters"]["trainable"] == 44_458_476
    assert data["peak_phase"] == "loss_backward"
    assert 20 < data["per_gpu_total_gib"] < 40
    inference = data["inference_bytes"]
    assert inference["4bit"] < inference["8bit"] < inference["bf16"]


def test_memory_cli(capsys) -> None:
    assert main(["memory", "--preset", "medisee-7b", "--gpus", "4", "--batch", "15"]) == 0
    table = capsys.readouterr().out
    assert "total per GPU" in table and "ZeRO-2" in table and "batch 15" in table
    assert main(["memory", "--gpus", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["setup"]["gpus"] == 2
    assert main(["memory", "--preset", "lite"]) == 2
    assert "llava-backbone" in capsys.readouterr().err
    with pytest.raises(ValueError, match="gpus"):
        TrainingSetup(gpus=0)
    assert get_preset("medisee-7b").language.lora.r == 8
