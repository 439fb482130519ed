"""The medisee-7b code path (HF LLaVA + PEFT LoRA) on a tiny random LlavaConfig."""

import dataclasses

import pytest
import torch

from medisee.losses import next_token_supervised
from medisee.model.builder import parameter_report
from medisee.model.config import LanguageConfig, LoraSettings
from medisee.model.medisee import MediSee, build_model
from medisee.model.presets import tiny
from medisee.model.tokenizer import IMAGE_TOKEN, train_lite_tokenizer
from tests.conftest import MODEL_KEYS, TINY_CORPUS, batch_loss, make_batch


def tiny_llava_config(tokenizer) -> dict:
    return {
        "text_config": {
            "model_type": "llama",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "vocab_size": len(tokenizer),
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
            "projection_dim": 32,
        },
        "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
    }


@pytest.fixture
def llava_model():
    tokenizer = train_lite_tokenizer(TINY_CORPUS, 400)
    config = tiny()
    config.language = LanguageConfig(
        backbone="llava",
        hf_config=tiny_llava_config(tokenizer),
        lora=LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj")),
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return build_model(config, tokenizer=tokenizer)


def test_llava_forward_backward_with_lora(llava_model):
    assert llava_model.language.num_image_tokens == 16  # (32 / 8)^2, CLS dropped
    batch = make_batch(llava_model)
    out = llava_model(**{k: batch[k] for k in MODEL_KEYS})
    loss = batch_loss(batch, out).total
    loss.backward()
    named = dict(llava_model.language.model.named_parameters())
    lora = {n: p for n, p in named.items() if "lora_" in n}
    assert lora, "LoRA layers were not injected"
    # LoRA only on the language model's q/v projections, never on the CLIP tower.
    assert all("language_model" in n and ("q_proj" in n or "v_proj" in n) for n in lora)
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n
    )
    tokens = {n: p for n, p in named.items() if "trainable_tokens" in n}
    assert any("embed_tokens" in n for n in tokens) and any("lm_head" in n for n in tokens)
    assert all(p.requires_grad for p in tokens.values())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tokens.values())
    base = llava_model.language.base_model
    frozen = list(base.model.vision_tower.parameters()) + list(
        base.model.multi_modal_projector.parameters()
    )
    assert all(not p.requires_grad and p.grad is None for p in frozen)
    base_weights = [p for n, p in named.items() if n.endswith("q_proj.base_layer.weight")]
    assert base_weights and all(not p.requires_grad for p in base_weights)
    report = parameter_report(llava_model)
    assert report.trainable["language.model"] < report.frozen["language.model"]


def test_llava_logits_mask_selects_rows(llava_model):
    llava_model.eval()
    batch = make_batch(llava_model)
    mask = next_token_supervised(batch["labels"])
    with torch.no_grad():
        full = llava_model(**{k: batch[k] for k in MODEL_KEYS})
        packed = llava_model(**{k: batch[k] for k in MODEL_KEYS}, logits_mask=mask)
    torch.testing.assert_close(packed.logits, full.logits[mask])


def test_llava_save_load_identical(llava_model, tmp_path):
    llava_model.eval()
    batch = make_batch(llava_model)
    with torch.no_grad():
        before = llava_model(**{k: batch[k] for k in MODEL_KEYS})
    llava_model.save_pretrained(tmp_path / "m")
    loaded = MediSee.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        after = loaded(**{k: batch[k] for k in MODEL_KEYS})
    torch.testing.assert_close(after.logits, before.logits, rtol=0, atol=0)
    torch.testing.assert_close(after.mask_logits, before.mask_logits, rtol=0, atol=0)


def test_llava_needs_pixels(llava_model):
    batch = make_batch(llava_model)
    embeddings = llava_model.embed_images(batch["pixel_values"])
    with pytest.raises(ValueError, match="needs pixel_values"):
        llava_model(
            batch["input_ids"],
            batch["attention_mask"],
            batch["image_sizes"],
            image_embeddings=embeddings,
        )


def test_llava_config_requires_a_source():
    with pytest.raises(ValueError, match="pretrained_path"):
        LanguageConfig(backbone="llava")
    assert (
        dataclasses.asdict(LanguageConfig(backbone="llava", pretrained_path="/x"))[
            "pretrained_path"
        ]
        == "/x"
    )


def test_llava_constrained_answer_counts_the_prompt(llava_model):
    """LLaVA generates from ``input_ids``, so its logits processors see the prompt: the
    constraint must skip it (``generate_sees_prompt``)."""
    from medisee.model.answer_constraint import ANSWER_FORMS

    llava_model.eval()
    llava_model.config.labels = ("liver", "left kidney")
    builder = llava_model.prompt_builder()
    prompts = [builder.encode([(q, None)]).input_ids for q in ("Which organ?", "Where is it?")]
    size = llava_model.config.mask.image_size
    torch.manual_seed(0)
    answers = llava_model.generate(
        prompts,
        torch.tensor([[size, size]] * 2),
        pixel_values=torch.rand(2, 3, size, size),
        max_new_tokens=32,  # the tiny BPE spells an opening in up to 24 tokens
        constrain_answer=True,
    )
    first = llava_model.candidate_token_ids[0]
    openings = {f.format(label=label) for f in ANSWER_FORMS for label in llava_model.config.labels}
    for answer in answers:
        assert answer.found_target
        ids = answer.token_ids
        assert llava_model.tokenizer.decode(ids[: ids.index(first)]).strip() in openings
