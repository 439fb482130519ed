"""The ``tiny`` preset end to end: forward, backward, trainable policy, save/load."""

import dataclasses

import pytest
import torch

from medisee.losses import LossWeights, next_token_supervised, text_loss
from medisee.model.builder import parameter_report
from medisee.model.medisee import MediSee, build_model
from medisee.model.presets import get_preset, tiny
from tests.conftest import MODEL_KEYS, TINY_CORPUS, batch_loss, make_batch


def test_tiny_forward_backward_reaches_trainable_parts_only(tiny_model):
    batch = make_batch(tiny_model)
    out = tiny_model(**{k: batch[k] for k in MODEL_KEYS})
    low_res = tiny_model.config.mask.low_res_mask_size
    assert out.mask_logits.shape == (2, low_res, low_res)
    assert out.boxes.shape == (2, 4)
    assert out.image_states.shape == (
        2,
        tiny_model.language.num_image_tokens,
        tiny_model.language.hidden_size,
    )
    loss = batch_loss(batch, out)
    assert torch.isfinite(loss.total)
    loss.total.backward()

    def grad_norm(module):
        return sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)

    assert grad_norm(tiny_model.language.model) > 0
    assert grad_norm(tiny_model.language.projector) > 0
    assert grad_norm(tiny_model.fusion.seg_router) > 0
    assert grad_norm(tiny_model.fusion.det_router) > 0
    assert grad_norm(tiny_model.box_decoder) > 0
    assert grad_norm(tiny_model.seg_projection) > 0
    assert grad_norm(tiny_model.segmenter.mask_decoder) > 0
    encoder = tiny_model.segmenter.image_encoder
    assert all(not p.requires_grad and p.grad is None for p in encoder.parameters())


def test_trainable_policy_report(tiny_model):
    report = parameter_report(tiny_model)
    assert report.frozen.get("segmenter.image_encoder", 0) > 0
    assert "segmenter.image_encoder" not in report.trainable
    for part in (
        "language.model",
        "fusion",
        "box_decoder",
        "seg_projection",
        "segmenter.mask_decoder",
    ):
        assert report.trainable[part] > 0, part
    assert "total" in report.format()


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_candidate_counts_and_fusion_modes_run(n, mode):
    config = tiny()
    config.num_candidate_tokens = n
    config.fusion = dataclasses.replace(config.fusion, mode=mode)
    torch.manual_seed(0)
    model = build_model(config, corpus=TINY_CORPUS)
    batch = make_batch(model)
    out = model(**{k: batch[k] for k in MODEL_KEYS})
    assert out.fusion.seg_weights.shape == (2, n)
    batch_loss(batch, out).total.backward()
    if mode == "hard":
        assert set(out.fusion.seg_weights.detach().unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("prompt_mode", ["T", "T+B", "T+B+P"])
def test_prompt_modes(prompt_mode):
    config = tiny()
    config.mask = dataclasses.replace(config.mask, prompt_mode=prompt_mode)
    model = build_model(config, corpus=TINY_CORPUS)
    batch = make_batch(model)
    out = model(**{k: batch[k] for k in MODEL_KEYS})
    assert torch.isfinite(out.mask_logits).all()


def test_wrong_number_of_candidate_tokens_raises(tiny_model):
    batch = make_batch(tiny_model)
    ids = batch["input_ids"].clone()
    second = tiny_model.candidate_token_ids[1]
    ids[0][ids[0] == second] = tiny_model.tokenizer.pad_token_id
    with pytest.raises(ValueError, match=r"sequence 0: .* found counts \[1, 0\]"):
        tiny_model(ids, batch["attention_mask"], batch["image_sizes"], batch["pixel_values"])


def test_wrong_number_of_image_tokens_raises(tiny_model):
    batch = make_batch(tiny_model)
    ids = batch["input_ids"].clone()
    image_id = tiny_model.language.image_token_id
    first = int((ids[1] == image_id).nonzero()[0])
    ids[1, first] = tiny_model.tokenizer.pad_token_id
    with pytest.raises(ValueError, match="exactly 16 image tokens"):
        tiny_model(ids, batch["attention_mask"], batch["image_sizes"], batch["pixel_values"])


def test_cached_embeddings_give_the_same_outputs(tiny_model):
    tiny_model.eval()
    batch = make_batch(tiny_model)
    direct = tiny_model(**{k: batch[k] for k in MODEL_KEYS})
    cached = tiny_model(
        batch["input_ids"],
        batch["attention_mask"],
        batch["image_sizes"],
        image_embeddings=tiny_model.embed_images(batch["pixel_values"]),
    )
    torch.testing.assert_close(direct.mask_logits, cached.mask_logits)


def test_logits_mask_gives_the_same_rows_and_text_loss(tiny_model):
    tiny_model.eval()
    batch = make_batch(tiny_model)
    inputs = {k: batch[k] for k in MODEL_KEYS}
    with torch.no_grad():
        full = tiny_model(**inputs)
        mask = next_token_supervised(batch["labels"])
        packed = tiny_model(**inputs, logits_mask=mask)
    assert packed.logits.shape == (int(mask.sum()), full.logits.shape[-1])
    torch.testing.assert_close(packed.logits, full.logits[mask])
    torch.testing.assert_close(
        text_loss(packed.logits, batch["labels"]), text_loss(full.logits, batch["labels"])
    )


def test_save_and_load_reproduce_identical_outputs(tiny_model, tmp_path):
    tiny_model.eval()
    batch = make_batch(tiny_model)
    with torch.no_grad():
        before = tiny_model(**{k: batch[k] for k in MODEL_KEYS})
    tiny_model.save_pretrained(tmp_path / "ckpt")
    tiny_model.save_pretrained(tmp_path / "ckpt")  # overwriting in place works too
    loaded = MediSee.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config.to_dict() == tiny_model.config.to_dict()
    with torch.no_grad():
        after = loaded(**{k: batch[k] for k in MODEL_KEYS})
    for name in ("logits", "boxes", "mask_logits", "iou_scores"):
        torch.testing.assert_close(getattr(after, name), getattr(before, name), rtol=0, atol=0)


def test_from_pretrained_rejects_non_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a medisee checkpoint"):
        MediSee.from_pretrained(tmp_path)


def test_similarity_loss_gradient_reaches_routers_and_seg_projection(tiny_model):
    """L_sim alone (no other term) trains R_s, the seg projection and the LM, not R_d or the
    box decoder; the label-query map is a target without gradient."""
    from medisee.losses import similarity_loss

    batch = make_batch(tiny_model)
    out = tiny_model(**{k: batch[k] for k in MODEL_KEYS})
    reasoning = tiny_model.similarity(out.image_states, out.seg_state)
    assert reasoning.shape == (2, tiny_model.language.num_image_tokens)
    label_ids = batch["input_ids"].flip(0)  # another query over the same images
    label = tiny_model.similarity_map(
        label_ids, batch["attention_mask"].flip(0), batch["pixel_values"]
    )
    similarity_loss(reasoning, label, LossWeights()).sum().backward()

    def grad(module):
        return sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)

    assert grad(tiny_model.fusion.seg_router) > 0
    assert grad(tiny_model.seg_projection) > 0
    assert grad(tiny_model.language.model) > 0
    assert grad(tiny_model.fusion.det_router) == 0 and grad(tiny_model.box_decoder) == 0


def test_presets_registry():
    assert get_preset("lite").mask.weights == "litemedsam"
    assert get_preset("medisee-7b").language.lora.r == 8
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")


def _prompts(model, questions):
    builder = model.prompt_builder()
    return [builder.encode([(q, None)]).input_ids for q in questions]


def test_generate_batch_matches_single_and_reads_candidates(tiny_model):
    """Greedy generation of a left-padded batch equals row-by-row generation, and a row
    that emits its candidate tokens gets a box and mask."""
    tiny_model.eval()
    torch.manual_seed(0)
    questions = ["Which organ filters the blood?", "Where?"]
    prompts = _prompts(tiny_model, questions)
    assert len(prompts[0]) != len(prompts[1])  # so the batch really is padded
    size = tiny_model.config.mask.image_size
    pixels = torch.rand(2, 3, size, size)
    sizes = torch.tensor([[size, size]] * 2)
    batch = tiny_model.generate(prompts, sizes, pixel_values=pixels, max_new_tokens=6)
    for row in range(2):
        single = tiny_model.generate(
            [prompts[row]],
            sizes[row : row + 1],
            pixel_values=pixels[row : row + 1],
            max_new_tokens=6,
        )[0]
        assert single.token_ids == batch[row].token_ids


def test_generated_targets_equal_teacher_forced_on_the_same_sequence(tiny_model, monkeypatch):
    """Decoding of generated answers: row 0 "emits" answer + candidates + EOS + junk, row 1
    no candidates. Row 0's box/mask must equal a teacher-forced pass over prompt + answer."""
    tiny_model.eval()
    builder = tiny_model.prompt_builder()
    tok = tiny_model.tokenizer
    # Row 0 has the shorter prompt, so it is the left-padded one.
    prompts = _prompts(tiny_model, ["Where is it?", "Which organ filters the blood, if any?"])
    answer = tok(builder.answer_text("It is the liver."), add_special_tokens=False).input_ids
    junk = tok("junk", add_special_tokens=False).input_ids
    row0 = answer + [tok.eos_token_id] + junk
    # row 1 emits a malformed group (<cand_1> before <cand_0>): no target for it alone
    c0, c1 = tiny_model.candidate_token_ids
    row1 = tok("No target here.", add_special_tokens=False).input_ids + [c1, c0, tok.eos_token_id]
    width = max(len(row0), len(row1))
    fake = torch.full((2, width), tok.pad_token_id)
    fake[0, : len(row0)] = torch.tensor(row0)
    fake[1, : len(row1)] = torch.tensor(row1)
    monkeypatch.setattr(tiny_model.language, "generate", lambda *a, **k: fake)
    size = tiny_model.config.mask.image_size
    pixels = torch.rand(2, 3, size, size)
    sizes = torch.tensor([[size, size], [size // 2, size]])
    out = tiny_model.generate(prompts, sizes, pixel_values=pixels, max_new_tokens=width)
    assert out[0].found_target and not out[1].found_target
    assert out[0].token_ids == answer + [tok.eos_token_id]  # junk after EOS dropped
    assert out[0].text.startswith("It is the liver.") and "junk" not in out[0].text
    assert out[1].box is None and out[1].mask_logits is None
    full = prompts[0] + answer + [tok.eos_token_id]
    ids = torch.tensor([full])
    teacher = tiny_model(ids, torch.ones_like(ids), sizes[:1], pixels[:1])
    torch.testing.assert_close(out[0].box, teacher.boxes[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[0].mask_logits, teacher.mask_logits[0], atol=1e-4, rtol=1e-4)


def test_frozen_encoder_stays_in_eval_mode_and_keeps_its_statistics(tiny_model):
    tiny_model.train()
    assert tiny_model.language.training and tiny_model.segmenter.mask_decoder.training
    encoder = tiny_model.segmenter.image_encoder
    assert not any(m.training for m in encoder.modules())
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    batch = make_batch(tiny_model)
    tiny_model(**{k: batch[k] for k in MODEL_KEYS})
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fresh_model_embeds_with_pretrained_statistics(tiny_model):
    """A just-built model is in train mode (PyTorch's default); embedding images must still
    use the encoder's running statistics and leave them untouched."""
    assert tiny_model.training
    encoder = tiny_model.segmenter.image_encoder
    assert not any(m.training for m in encoder.modules())
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    pixels = torch.rand(3, 3, 64, 64)
    batch = tiny_model.embed_images(pixels)
    encoder.train()  # even if someone flips it, embed_images puts it back
    single = tiny_model.embed_images(pixels[:1])
    torch.testing.assert_close(single, batch[:1], rtol=1e-4, atol=1e-5)  # no batch statistics
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())


def test_image_tokens_carry_their_2d_position():
    """Identical image features at every cell still give distinct tokens per grid cell,
    and the row/column halves of the table vary along rows/columns only."""
    from medisee.model.mllm import ImageProjector, sincos_2d

    table = sincos_2d(4, 8).view(4, 4, 8)
    assert torch.equal(table[:, 0, :4], table[:, 3, :4])  # row half constant along a row
    assert torch.equal(table[0, :, 4:], table[3, :, 4:])  # column half constant down a column
    projector = ImageProjector(in_channels=6, hidden_size=8, grid=4)
    tokens = projector(torch.ones(1, 6, 16, 16))[0]
    assert len({tuple(t.tolist()) for t in tokens.round(decimals=5)}) == 16


def test_answer_boxes_off_skips_the_map_box_unless_it_prompts(tiny_model, monkeypatch):
    # Training reads only the box decoder's boxes: without answer boxes the flood fill
    # behind the map's box runs only where that box prompts the mask decoder.
    import medisee.model.medisee as medisee_module

    tiny_model.eval()
    batch = make_batch(tiny_model)
    inputs = {k: batch[k] for k in MODEL_KEYS}
    monkeypatch.setattr(tiny_model.config.grounding, "map_fallback_iou", 0.2)
    calls = []
    flood_fill = medisee_module.peak_region
    monkeypatch.setattr(
        medisee_module, "peak_region", lambda *a, **k: calls.append(1) or flood_fill(*a, **k)
    )
    with torch.no_grad():
        full = tiny_model(**inputs)
        # The default (inference) makes the map's box; the mask fallback reuses its region.
        assert len(calls) == 1
        calls.clear()
        cheap = tiny_model(**inputs, answer_boxes=False, decode_masks=False)
        assert not calls
        torch.testing.assert_close(cheap.boxes, cheap.decoder_boxes)
        torch.testing.assert_close(cheap.grounding_logits, full.grounding_logits)
        tiny_model.train()  # as in training: ground-truth prompts, no mask fallback
        teacher = tiny_model(**inputs, answer_boxes=False, prompt_boxes=batch["target_boxes"])
        tiny_model.eval()
        assert not calls
        torch.testing.assert_close(teacher.boxes, teacher.decoder_boxes)
        prompted = tiny_model(**inputs, answer_boxes=False)
        assert calls  # the map's box prompts the decoder here
    torch.testing.assert_close(prompted.mask_logits, full.mask_logits)
