"""The Accelerate loop on the tiny preset: both stages, resume, the sampler, the schedule."""

import json

import pytest
import torch

from medisee.model.embedding_cache import EmbeddingCache
from medisee.train.config import TrainConfig
from medisee.train.dataset import (
    Collator,
    ExampleRef,
    MediSeeDataset,
    MixedSampler,
    area_factors,
    mask_to_input_frame,
    repeat_factors,
    stack_as_float32,
)
from medisee.train.trainer import (
    latest_checkpoint,
    train,
    training_ct_window,
    training_schedule,
    warmup_linear_decay,
)
from tests.train.cut_off import cut_off_after


def _config(tmp_path, **kwargs) -> TrainConfig:
    base = dict(
        manifest=str(tmp_path / "unused.jsonl"),
        output_dir=str(tmp_path / "run"),
        model="tiny",
        max_steps=4,
        batch_size=2,
        warmup_steps=1,
        log_every=1,
        save_every=2,
        cpu=True,
        lr=1e-3,
        eval_every=2,
        eval_max_examples=4,
    )
    base.update(kwargs)
    return TrainConfig(**base)


def test_mixed_sampler_ratio_determinism_and_resume():
    sampler = MixedSampler(
        list(range(70)), list(range(100, 130)), referring_ratio=0.7, seed=3, length=2000
    )
    draws = list(sampler)
    assert draws == list(
        MixedSampler(list(range(70)), list(range(100, 130)), 0.7, seed=3, length=2000)
    )
    referring = sum(d < 100 for d in draws) / len(draws)
    assert 0.66 < referring < 0.74
    resumed = list(
        MixedSampler(list(range(70)), list(range(100, 130)), 0.7, seed=3, start=500, length=1500)
    )
    assert resumed == draws[500:]
    shards = [
        list(MixedSampler(list(range(70)), [], 0.7, seed=1, length=10, rank=r, world_size=2))
        for r in (0, 1)
    ]
    full = list(MixedSampler(list(range(70)), [], 0.7, seed=1, length=20))
    assert shards[0] == full[0::2] and shards[1] == full[1::2]
    with pytest.raises(ValueError, match="both the referring and reasoning pools are empty"):
        MixedSampler([], [], 0.7, seed=0)


def test_length_grouping_keeps_the_draws_sorts_batches_and_resumes():
    referring, reasoning = list(range(70)), list(range(100, 130))
    lengths = {i: (i * 37) % 101 for i in range(130)}

    def sampler(**kwargs):
        options = dict(seed=3, length=480, lengths=lengths, group_steps=4, step_draws=8)
        return MixedSampler(referring, reasoning, 0.7, **(options | kwargs))

    plain = list(MixedSampler(referring, reasoning, 0.7, seed=3, length=480))
    grouped = list(sampler())
    window = 4 * 8
    for start in range(0, 480, window):
        # Same draws in each window, only reordered ...
        assert sorted(grouped[start : start + window]) == sorted(plain[start : start + window])

    # ... into batches of neighbouring lengths: in each window, every batch's length range
    # is disjoint from the others' (up to ties), so padding is far below the plain stream's.
    def spread(stream):
        batches = [stream[i : i + 8] for i in range(0, len(stream), 8)]
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)

    assert spread(grouped) < spread(plain) / 3
    assert grouped != plain
    # A pure function of (seed, position): resume at a step boundary, and shards.
    assert list(sampler(start=40, length=440)) == grouped[40:]
    shards = [list(sampler(length=240, rank=r, world_size=2)) for r in (0, 1)]
    assert shards[0] == grouped[0::2] and shards[1] == grouped[1::2]
    with pytest.raises(ValueError, match="needs the examples' lengths"):
        MixedSampler(referring, reasoning, 0.7, seed=0, group_steps=2)


def test_repeat_factors_by_hand_and_their_effect_on_the_stream():
    # 4 images: "liver" in all 4 (f = 1), "spleen" in 1 (f = 1/4, two questions on it).
    def ref(record, label):
        return ExampleRef(record, 0, 0, "reasoning", None, "short", label, "train", "CT")

    examples = [ref(r, "liver") for r in range(4)] + [ref(2, "spleen"), ref(2, "spleen")]
    # t = 0.5: liver sqrt(0.5 / 1) < 1 -> 1; spleen sqrt(0.5 / 0.25) = sqrt(2).
    assert repeat_factors(examples, 0.5) == pytest.approx([1, 1, 1, 1, 2**0.5, 2**0.5])
    assert repeat_factors(examples, 0.0) == [1.0] * 6

    factors = [3.0] * 10 + [1.0] * 90
    draws = list(
        MixedSampler([], list(range(100)), 0.0, seed=0, length=3000, repeat_factors=factors)
    )
    rare = sum(d < 10 for d in draws) / len(draws)
    assert rare == pytest.approx(30 / 120, abs=0.02)  # 10 x 3 of 90 + 30 per pass
    resumed = MixedSampler(
        [], list(range(100)), 0.0, seed=0, start=700, length=2300, repeat_factors=factors
    )
    assert list(resumed) == draws[700:]
    with pytest.raises(ValueError, match="repeat factors must be >= 1"):
        MixedSampler([], [0], 0.0, seed=0, repeat_factors=[0.5])


def test_area_factors_by_hand():
    # Shares 1/2, 1/8, 1/32 of the image: relative to the largest 1, 1/4, 1/16.
    assert area_factors([0.5, 0.125, 0.5 / 16], 0.5) == pytest.approx([1.0, 2.0, 4.0])
    assert area_factors([0.5, 0.125, 0.5 / 16], 1.0) == pytest.approx([1.0, 4.0, 16.0])
    assert area_factors([0.5, 0.125], 0.0) == [1.0, 1.0]
    assert area_factors([], 0.5) == []
    with pytest.raises(ValueError, match="must be > 0"):
        area_factors([0.5, 0.0], 0.5)


def test_refit_area_power_is_validated(tmp_path):
    with pytest.raises(ValueError, match="refit_area_power must be finite and >= 0"):
        _config(tmp_path, refit_area_power=-0.5)


def test_warmup_linear_decay_schedule():
    factor = warmup_linear_decay(warmup_steps=4, total_steps=10)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(4) == 1.0 and factor(7) == pytest.approx(0.5) and factor(10) == 0.0


def test_training_schedule_restarts_for_the_grounding_refit(tmp_path):
    config = _config(tmp_path, max_steps=4, warmup_steps=2, grounding_refit_steps=20)
    factor = training_schedule(config)
    # Joint phase: 2 warm-up steps, decay to 0 at step 4; refit: its own 10-step ramp
    # (REFIT_WARMUP_STEPS), then decay to 0 over the rest of its 20 steps.
    assert [factor(s) for s in range(4)] == pytest.approx([0.5, 1, 1, 0.5])
    assert [factor(4 + s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factor(4 + 15) == pytest.approx(0.5) and factor(24) == 0.0
    assert config.total_steps == 24


def test_grounding_refit_config_is_validated(tmp_path):
    with pytest.raises(ValueError, match="grounding_refit_steps must be >= 0"):
        _config(tmp_path, grounding_refit_steps=-1)
    with pytest.raises(ValueError, match="nothing to train"):
        _config(tmp_path, max_steps=0)
    assert _config(tmp_path, max_steps=0, grounding_refit_steps=2).total_steps == 2


def test_grounding_refit_trains_the_head_alone_after_the_joint_steps(tmp_path, synthetic_records):
    """Joint steps, then refit steps: only the grounding head's weights move in the refit
    phase, only L_ground is reported as the total there, and the run ends at the sum."""
    from safetensors.torch import load_file

    joint = train(_config(tmp_path / "a", eval_every=0), progress=False, records=synthetic_records)
    refit = train(
        _config(tmp_path / "b", eval_every=0, grounding_refit_steps=3),
        progress=False,
        records=synthetic_records,
    )
    assert refit.steps == 7
    logged = [h for h in refit.history if "loss/total" in h]
    assert [h["step"] for h in logged] == list(range(1, 8))
    # The first 4 steps are the joint run's, bit for bit (same seed, same batches).
    assert [h["loss/total"] for h in logged[:4]] == pytest.approx(
        [h["loss/total"] for h in joint.history], rel=1e-6
    )
    for h in logged[4:]:
        assert h["loss/total"] == pytest.approx(h["loss/ground"], rel=1e-6)
        assert "loss/bce" not in h  # no mask decoding in the refit phase
    a = load_file(str(tmp_path / "a" / "run" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "run" / "model" / "model.safetensors"))
    moved = sorted(k for k in a if not torch.equal(a[k], b[k]))
    assert moved and all(k.startswith("grounding.") for k in moved), moved
    assert any(k.startswith("grounding.query.") for k in moved)


def test_resume_inside_the_grounding_refit_phase(tmp_path, synthetic_records):
    """Cut off after the step-3 checkpoint (the first refit step) and resumed, the run
    ends at the same step with the same last loss and the same weights."""

    from safetensors.torch import load_file

    def config(root):
        return _config(root, eval_every=0, max_steps=2, grounding_refit_steps=2, save_every=1)

    full = train(config(tmp_path / "a"), progress=False, records=synthetic_records)
    cut = cut_off_after(tmp_path / "a" / "run", tmp_path / "b" / "run", step=3)
    resumed = train(config(tmp_path / "b"), resume=True, progress=False, records=synthetic_records)
    assert resumed.resumed_from == 3 and resumed.steps == 4
    assert resumed.history[-1]["loss/total"] == pytest.approx(
        full.history[-1]["loss/total"], rel=1e-5
    )
    a = load_file(str(tmp_path / "a" / "run" / "model" / "model.safetensors"))
    b = load_file(str(cut / "model" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_grounding_refit_needs_a_grounding_head(tmp_path, synthetic_records):
    from medisee.model.config import GroundingConfig
    from medisee.model.medisee import build_model
    from medisee.model.presets import tiny
    from tests.conftest import TINY_CORPUS

    config = tiny()
    config.grounding = GroundingConfig(enabled=False)
    build_model(config, corpus=TINY_CORPUS).save_pretrained(tmp_path / "headless")
    config = _config(tmp_path, grounding_refit_steps=2, model=str(tmp_path / "headless"))
    with pytest.raises(ValueError, match="needs a model with a grounding head"):
        train(config, progress=False, records=synthetic_records)


def test_mask_to_input_frame_non_square():
    from medisee.model.preprocess import SamTransform

    mask = torch.zeros(50, 100, dtype=torch.bool).numpy()
    mask[10:20, 60:80] = True
    frame = mask_to_input_frame(mask, SamTransform(64), 64)
    # scale 0.64: rows 6.4..12.8, cols 38.4..51.2; padding (rows >= 32) stays empty
    assert frame[6:13, 38:52].mean() > 0.8 and frame[:, :38].sum() == 0 and frame[32:].sum() == 0


def test_dataset_items_and_collation(synthetic_records, tiny_model):
    records, root = synthetic_records
    builder = tiny_model.prompt_builder()
    dataset = MediSeeDataset(records, root, builder, 64, 64, with_label_query=True)
    assert len(dataset) == 6 * 2 * 3
    assert len(dataset.indices_of("referring")) == 12
    batch = Collator(tiny_model.tokenizer.pad_token_id)([dataset[0], dataset[4]])
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert batch["target_masks"].shape == (2, 64, 64)
    assert batch["image_sizes"].tolist() == [[48, 64], [48, 64]]
    assert batch["label_input_ids"].shape[0] == 2
    assert ((batch["target_boxes"] >= 0) & (batch["target_boxes"] <= 1)).all()


def test_cached_embeddings_and_memoised_masks_give_the_same_batches(
    synthetic_records, tiny_model, tmp_path
):
    """Items keep the cache's fp16 embedding and the collator converts while stacking;
    target masks are made once per target. The batch is what the plain path gives."""
    records, root = synthetic_records
    builder = tiny_model.prompt_builder()
    cache = EmbeddingCache(tmp_path / "cache", "fp", memory_entries=8)
    for record in records:
        cache.store(root / record.image, torch.randn(32, 16, 16))
    dataset = MediSeeDataset(records, root, builder, 64, 64, embedding_cache=cache)
    item = dataset[0]
    assert item["image_embeddings"].dtype == torch.float16
    ref = dataset.examples[0]
    expected_mask = mask_to_input_frame(
        dataset.load_mask(ref.record, ref.target), dataset.transform, 64
    )
    assert torch.equal(item["target_mask"], expected_mask)
    assert torch.equal(dataset[0]["target_mask"], expected_mask)  # from the memo
    assert len(dataset._frame_masks) == 1
    batch = Collator(tiny_model.tokenizer.pad_token_id)([dataset[0], dataset[7]])
    plain = torch.stack(
        [cache.load(dataset.image_path(dataset.examples[i].record)) for i in (0, 7)]
    )
    assert batch["image_embeddings"].dtype == torch.float32
    assert torch.equal(batch["image_embeddings"], plain)
    with pytest.raises(ValueError, match="different shapes"):
        stack_as_float32([torch.zeros(2, 3), torch.zeros(3, 2)])


@pytest.mark.parametrize("stage", ["end2end", "finetune"])
def test_train_runs_both_stages_and_writes_everything(tmp_path, synthetic_records, stage):
    config = _config(tmp_path, stage=stage)
    result = train(config, progress=False, records=synthetic_records)
    assert result.steps == 4
    out = tmp_path / "run"
    assert (out / "model" / "config.json").is_file() and (out / "train_config.yaml").is_file()
    # The saved model knows the structures it was trained on (its answers name them).
    records, _ = synthetic_records
    trained = {t.label for r in records if r.split == config.train_split for t in r.targets}
    saved = json.loads((out / "model" / "config.json").read_text())
    assert trained and saved["labels"] == sorted(trained)
    assert saved["ct_window"] is None  # no record names the window it was shown in
    losses = [h for h in result.history if "loss/total" in h]
    assert [h["step"] for h in losses] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(h["loss/total"])) for h in losses)
    assert ("loss/sim" in losses[0]) == (stage == "finetune")
    assert any("val/dice" in h for h in result.history)
    assert latest_checkpoint(out).name == "step_0000004"
    assert list((out / "logs").rglob("events.out.tfevents*")), "no TensorBoard log"
    assert json.loads((out / "history.json").read_text()) == result.history


def test_training_ends_by_fitting_the_exam_head(tmp_path, synthetic_records):
    from medisee.model.medisee import MediSee

    records, _ = synthetic_records
    train_records = [r for r in records if r.split == "train"]
    # Two kinds of exam: the synthetic images are all CT; call half of them MRI.
    for record in train_records[::2]:
        record.meta = {**(record.meta or {}), "kind": "brain_mri"}
    result = train(
        _config(tmp_path, eval_every=0, max_steps=1), progress=False, records=synthetic_records
    )
    assert result.exam_head is not None and result.exam_head["kinds"] == ["CT", "brain_mri"]
    assert result.exam_head["images"] == len(train_records)
    assert result.exam_head["accuracy"] == 1.0
    assert result.phase_seconds["exam_head"] >= 0
    model = MediSee.from_pretrained(tmp_path / "run" / "model")
    labels = sorted({t.label for r in train_records[::2] for t in r.targets})
    assert list(model.config.exams) == ["CT", "brain_mri"]
    assert list(model.config.exams["brain_mri"]) == labels
    assert model.exam_head is not None and model.exam_head.weight.abs().sum() > 0
    # exam_head_images=0: no head.
    plain = train(
        _config(tmp_path / "b", eval_every=0, max_steps=1, exam_head_images=0),
        progress=False,
        records=synthetic_records,
    )
    assert plain.exam_head is None
    assert MediSee.from_pretrained(tmp_path / "b" / "run" / "model").exam_head is None


def test_training_ends_by_fitting_the_question_prior(tmp_path, synthetic_records, monkeypatch):
    from medisee.model.medisee import MediSee
    from medisee.train.prior_fit import training_questions
    from tests.model.gguf_fixture import write_tiny_gguf

    monkeypatch.setenv("MEDISEE_CACHE", str(tmp_path / "cache"))
    gguf = write_tiny_gguf(tmp_path / "tiny-llama.gguf").path
    result = train(
        _config(
            tmp_path,
            eval_every=0,
            max_steps=1,
            question_prior_questions=6,
            question_prior_encoder=str(gguf),
            question_prior_layers=1,
            question_prior_knowledge_weight=1.0,
            question_prior_familiarity=True,
            question_prior_unfamiliar_weight=0.5,
            question_prior_channel_weight=1.0,
        ),
        progress=False,
        records=synthetic_records,
    )
    assert result.question_prior is not None and result.question_prior["questions"] == 6
    assert result.phase_seconds["question_prior"] >= 0
    model = MediSee.from_pretrained(tmp_path / "run" / "model")
    assert model.config.question_prior.encoder == str(gguf)
    assert model.config.question_prior.width == 32
    assert model.config.question_prior.knowledge_weight == 1.0
    assert model.config.question_prior.familiarity
    assert model.config.question_prior.unfamiliar_weight == 0.5
    assert model.config.question_prior.channel_weight == 1.0
    assert model.question_prior is not None and model.question_prior.weight.abs().sum() > 0
    # The familiarity is fitted and saved: the farthest training question bounds it.
    familiar = float(model.question_prior.familiar_distance)
    assert familiar == pytest.approx(result.question_prior["familiar_distance"]) and familiar > 0
    # The saved classifier (weights and standardisation) is the fitted one: reloaded, it
    # names the label of each question it was fitted on, as the fit reported.
    assert result.question_prior["accuracy"] == 1.0
    records, _ = synthetic_records
    drawn = training_questions([r for r in records if r.split == "train"], 6, seed=0)
    probabilities = model.question_label_probabilities(
        [question for question, _, _ in drawn], [model.config.labels] * len(drawn)
    )
    assert [max(p, key=p.get) for p in probabilities] == [label for _, label, _ in drawn]
    assert all(sum(p.values()) == pytest.approx(1.0) for p in probabilities)
    with pytest.raises(ValueError, match="question_prior_questions"):
        _config(tmp_path, question_prior_questions=-1)
    with pytest.raises(ValueError, match="question_prior_knowledge_weight"):
        _config(tmp_path, question_prior_knowledge_weight=-1.0)
    with pytest.raises(ValueError, match="question_prior_unfamiliar_weight"):
        _config(tmp_path, question_prior_unfamiliar_weight=-1.0)
    with pytest.raises(ValueError, match="question_prior_channel_weight"):
        _config(tmp_path, question_prior_channel_weight=-1.0)


def test_without_periodic_evaluation_only_training_images_are_embedded(tmp_path, synthetic_records):
    from medisee.model.embedding_cache import EmbeddingCache, encoder_fingerprint
    from medisee.model.medisee import MediSee

    train(_config(tmp_path, eval_every=0, max_steps=1), progress=False, records=synthetic_records)
    records, root = synthetic_records
    model = MediSee.from_pretrained(tmp_path / "run" / "model")
    cache = EmbeddingCache(
        tmp_path / "run" / "embedding_cache", encoder_fingerprint(model.segmenter)
    )
    cached = {
        split: [root / r.image in cache for r in records if r.split == split]
        for split in ("train", "val")
    }
    assert cached["train"] and all(cached["train"])
    assert cached["val"] and not any(cached["val"])


def test_resume_continues_to_the_same_step_and_same_losses(tmp_path, synthetic_records):
    """A run cut off after its step-2 checkpoint and resumed gives the same step-3/4
    losses as the uninterrupted run (sampler position, optimizer, scheduler, RNG)."""

    full = train(_config(tmp_path / "a", eval_every=0), progress=False, records=synthetic_records)
    cut_off_after(tmp_path / "a" / "run", tmp_path / "b" / "run", step=2)
    resumed = train(
        _config(tmp_path / "b", eval_every=0),
        resume=True,
        progress=False,
        records=synthetic_records,
    )
    assert resumed.resumed_from == 2 and resumed.steps == 4
    expected = [h["loss/total"] for h in full.history]
    got = [h["loss/total"] for h in resumed.history]
    assert got == pytest.approx(expected, rel=1e-5)


def test_similarity_loss_changes_training(tmp_path, synthetic_records):
    """Same seed, same batches: the finetune stage (L_end + L_sim) ends with different
    router/seg-projection weights than end2end, and identical frozen encoder weights."""
    from safetensors.torch import load_file

    weights = {}
    for stage in ("end2end", "finetune"):
        config = _config(tmp_path / stage, stage=stage, max_steps=2, eval_every=0)
        train(config, progress=False, records=synthetic_records)
        weights[stage] = load_file(str(tmp_path / stage / "run" / "model" / "model.safetensors"))
    a, b = weights["end2end"], weights["finetune"]
    assert not torch.equal(a["seg_projection.0.weight"], b["seg_projection.0.weight"])
    assert not torch.equal(a["fusion.seg_router.net.0.weight"], b["fusion.seg_router.net.0.weight"])
    encoder = [k for k in a if k.startswith("segmenter.image_encoder.")]
    assert encoder and all(torch.equal(a[k], b[k]) for k in encoder)


def test_mask_loss_every_runs_the_mask_decoder_on_those_steps_only(tmp_path, synthetic_records):
    config = _config(tmp_path, eval_every=0, mask_loss_every=2)
    result = train(config, progress=False, records=synthetic_records)
    losses = [h for h in result.history if "loss/total" in h]
    # Steps are logged after they ran: the 1st and 3rd steps (indices 0 and 2) decoded masks.
    assert [h["step"] for h in losses if "loss/bce" in h] == [1, 3]
    assert all("loss/ground" in h and "loss/giou" in h for h in losses)


def _decoder_box_prompts(model, monkeypatch) -> list:
    """The box prompts the model's mask decoder receives from now on, in call order."""
    seen = []
    decode = model.segmenter.decode

    def spy(*args, **kwargs):
        seen.append(kwargs["boxes"])
        return decode(*args, **kwargs)

    monkeypatch.setattr(model.segmenter, "decode", spy)
    return seen


def test_target_mask_prompt_gives_the_decoder_the_ground_truth_box(tiny_model, monkeypatch):
    """``mask_prompt="target"``: the decoder's box prompt is the target box in the
    segmenter input frame; ``"predicted"``: the model's own (grounded) box."""
    from medisee.boxes import denormalize_box
    from medisee.losses import LossWeights
    from medisee.train.task import MediSeeTask
    from tests.conftest import make_batch

    seen = _decoder_box_prompts(tiny_model, monkeypatch)
    batch = make_batch(tiny_model)
    # make_batch's images are already image_size square: input frame = original frame.
    expected = denormalize_box(batch["target_boxes"], batch["image_sizes"].float())
    MediSeeTask(tiny_model, LossWeights(), mask_prompt="target")(batch)
    torch.testing.assert_close(seen[-1], expected)
    losses = MediSeeTask(tiny_model, LossWeights(), mask_prompt="predicted")(batch)
    assert not torch.allclose(seen[-1], expected)
    assert losses.ground is not None
    skipped = MediSeeTask(tiny_model, LossWeights())(batch, decode_masks=False)
    assert skipped.bce is None and len(seen) == 2


def test_box_jitter_moves_the_target_prompt_in_training_only(tiny_model, monkeypatch):
    from medisee.boxes import denormalize_box
    from medisee.losses import LossWeights
    from medisee.train.task import MediSeeTask
    from tests.conftest import make_batch

    seen = _decoder_box_prompts(tiny_model, monkeypatch)
    batch = make_batch(tiny_model)
    exact = denormalize_box(batch["target_boxes"], batch["image_sizes"].float())
    task = MediSeeTask(tiny_model, LossWeights(), mask_prompt="target", box_jitter=0.2)
    torch.manual_seed(0)
    task.train()(batch)
    jittered = seen[-1]
    assert not torch.allclose(jittered, exact)
    # Each side moved by at most 0.2 of the box's size (pixels of the input frame).
    size = (exact[:, 2:] - exact[:, :2]).repeat(1, 2)
    assert ((jittered - exact).abs() <= 0.2 * size + 1e-3).all()
    task.eval()(batch)
    torch.testing.assert_close(seen[-1], exact)
    with pytest.raises(ValueError, match="box_jitter"):
        MediSeeTask(tiny_model, LossWeights(), box_jitter=1.0)


def test_train_config_rejects_bad_mask_schedule(tmp_path):
    with pytest.raises(ValueError, match="mask_loss_every"):
        _config(tmp_path, mask_loss_every=0)
    with pytest.raises(ValueError, match="mask_prompt"):
        _config(tmp_path, mask_prompt="oracle")
    with pytest.raises(ValueError, match="mask_box_jitter"):
        _config(tmp_path, mask_box_jitter=-0.1)
    with pytest.raises(ValueError, match="group_by_length"):
        _config(tmp_path, group_by_length=-1)
    with pytest.raises(ValueError, match="repeat_threshold"):
        _config(tmp_path, repeat_threshold=2.0)


def test_answer_token_weight_reaches_the_text_loss(tiny_model):
    """``LossWeights.answer_tokens`` weights the tokens up to each row's last candidate
    token (read off ``input_ids``) in L_txt; 1 leaves the plain mean."""
    from medisee.losses import LossWeights, text_loss
    from medisee.model.medisee import candidate_positions
    from medisee.train.task import MediSeeTask
    from tests.conftest import make_batch

    torch.manual_seed(0)
    batch = make_batch(tiny_model)
    tiny_model.eval()
    with torch.no_grad():
        plain = MediSeeTask(tiny_model, LossWeights())(batch, decode_masks=False).text
        weighted = MediSeeTask(tiny_model, LossWeights(answer_tokens=4.0))(
            batch, decode_masks=False
        ).text
        logits = tiny_model(
            batch["input_ids"],
            batch["attention_mask"],
            batch["image_sizes"],
            image_embeddings=batch.get("image_embeddings"),
            pixel_values=batch.get("pixel_values"),
            decode_masks=False,
        ).logits
    end = candidate_positions(batch["input_ids"], tiny_model.candidate_token_ids)[:, -1]
    supervised = batch["labels"][:, 1:] != -100
    after = torch.arange(1, batch["labels"].shape[1])[None] > end[:, None]
    assert (supervised & after).any() and (supervised & ~after).any()  # both kinds present
    expected = text_loss(logits, batch["labels"], answer_end=end, answer_weight=4.0)
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-5)
    assert plain.item() == pytest.approx(text_loss(logits, batch["labels"]).item(), rel=1e-5)
    assert weighted.item() != pytest.approx(plain.item(), rel=1e-3)


def test_refit_step_reads_the_states_without_the_explanation(tiny_model, monkeypatch):
    """The refit phase runs the LM only through the last candidate token: the grounding
    loss is the one of the full sequence (the LM is causal), over fewer columns."""
    from medisee.losses import LossWeights
    from medisee.train.task import MediSeeTask
    from tests.conftest import make_batch, spy_language

    batch = make_batch(tiny_model)
    tiny_model.eval()
    widths = spy_language(tiny_model, monkeypatch, lambda ids: ids.shape[1])
    task = MediSeeTask(tiny_model, LossWeights())
    with torch.no_grad():
        full = task(batch, decode_masks=False)
        refit = task(batch, grounding_only=True)
    assert widths[1] < widths[0] == batch["input_ids"].shape[1]
    torch.testing.assert_close(refit.ground, full.ground)
    torch.testing.assert_close(refit.total, refit.ground)


def test_training_ct_window_is_the_named_display_most_ct_records_were_shown_in():
    from medisee.data.schema import Record

    def record(i: int, modality: str, window) -> Record:
        meta = {} if window is None else {"window": window}
        return Record(f"r{i}", f"r{i}.png", modality, "s", f"r{i}", 8, 8, [], meta=meta)

    records = [
        record(0, "CT", "lung_mediastinum_bone"),
        record(1, "CT", "lung"),
        record(2, "CT", "lung"),
        record(3, "CT", [40.0, 400.0]),  # a window without a name
        record(4, "CT", None),  # a phantom, which records none
        record(5, "MRI", "brain"),  # another modality
        record(6, "MRI", "brain"),
    ]
    assert training_ct_window(records) == "lung"
    assert training_ct_window(records[:1] + records[3:]) == "lung_mediastinum_bone"
    assert training_ct_window(records[3:]) is None
