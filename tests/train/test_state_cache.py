"""The grounding refit on cached ``h_det`` states: the same loss as running the LM, one LM
pass per distinct example, and the same training as the uncached refit."""

import pytest
import torch

from medisee.losses import LossWeights
from medisee.train.state_cache import RefitStateCache
from medisee.train.task import MediSeeTask
from tests.conftest import make_batch, spy_language
from tests.train.cut_off import cut_off_after
from tests.train.test_trainer import _config


def _batch(model, indices):
    batch = make_batch(model, batch_size=len(indices))
    batch["index"] = torch.tensor(indices)
    # Rows with the same example index must be the same example.
    first = {}
    for row, index in enumerate(indices):
        first.setdefault(index, row)
        for key in ("input_ids", "attention_mask", "labels", "pixel_values"):
            batch[key][row] = batch[key][first[index]]
    return batch


def test_cached_states_are_the_lm_states_and_computed_once(tiny_model, monkeypatch):
    tiny_model.eval()
    batch = _batch(tiny_model, [5, 9])
    with torch.no_grad():
        expected = tiny_model(
            batch["input_ids"],
            batch["attention_mask"],
            batch["image_sizes"],
            pixel_values=batch["pixel_values"],
            decode_masks=False,
        ).det_state
    rows = spy_language(tiny_model, monkeypatch, lambda ids: ids.shape[0])
    cache = RefitStateCache()
    first = cache.det_states(tiny_model, batch)
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-6)
    assert rows == [2] and cache.computed == 2 and len(cache) == 2
    # Seen again, in another order and with a repeat: no LM pass, the same states.
    again = cache.det_states(tiny_model, _batch(tiny_model, [9, 5, 9]))
    assert rows == [2] and cache.computed == 2
    torch.testing.assert_close(again, first[[1, 0, 1]])
    # One new example among seen ones: the LM runs on that row alone.
    cache.det_states(tiny_model, _batch(tiny_model, [5, 7, 7]))
    assert rows == [2, 1] and cache.computed == 3 and len(cache) == 3


def test_states_are_computed_in_eval_mode_and_the_mode_is_restored(tiny_model, monkeypatch):
    modes = spy_language(tiny_model, monkeypatch, lambda ids: tiny_model.language.training)
    tiny_model.train()
    RefitStateCache().det_states(tiny_model, _batch(tiny_model, [0, 1]))
    assert modes == [False] and tiny_model.training


def test_refit_loss_from_cached_states_equals_the_lm_refit(tiny_model):
    tiny_model.eval()
    batch = _batch(tiny_model, [0, 1])
    task = MediSeeTask(tiny_model, LossWeights())
    with torch.no_grad():
        through_lm = task(batch, grounding_only=True)
        states = RefitStateCache().det_states(tiny_model, batch)
        cached = task(batch, grounding_only=True, det_states=states)
    torch.testing.assert_close(cached.ground, through_lm.ground, rtol=1e-5, atol=1e-6)
    assert cached.as_floats().keys() == {"total", "ground"}
    with pytest.raises(ValueError, match="grounding_only"):
        task(batch, det_states=states)


def test_cached_refit_trains_like_the_refit_through_the_lm(tmp_path, synthetic_records):
    """The tiny LM has no dropout, so the cached states are the ones the uncached refit
    computes on every step: the same losses, and only the grounding head moves."""
    from safetensors.torch import load_file

    from medisee.train.trainer import train

    def run(root, cached):
        config = _config(root, eval_every=0, grounding_refit_steps=6, refit_cached_states=cached)
        return train(config, progress=False, records=synthetic_records)

    plain, cached = run(tmp_path / "a", False), run(tmp_path / "b", True)
    assert cached.steps == plain.steps == 10
    refit_plain = [h["loss/ground"] for h in plain.history if "loss/total" in h][4:]
    refit_cached = [h for h in cached.history if "loss/total" in h][4:]
    assert [h["loss/ground"] for h in refit_cached] == pytest.approx(refit_plain, rel=1e-4)
    assert all(h.keys() == {"loss/total", "loss/ground", "step", "lr"} for h in refit_cached)
    a = load_file(str(tmp_path / "a" / "run" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "run" / "model" / "model.safetensors"))
    for key in a:
        if key.startswith("grounding."):
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
        else:
            assert torch.equal(a[key], b[key]), key


def test_refit_draws_from_a_fixed_pool_and_computes_each_state_once(
    tmp_path, synthetic_records, monkeypatch
):
    from medisee.train import state_cache
    from medisee.train.trainer import train

    caches, drawn = [], []
    det_states = state_cache.RefitStateCache.det_states

    def spy(self, model, batch):
        caches.append(self)
        drawn.extend(int(i) for i in batch["index"])
        return det_states(self, model, batch)

    monkeypatch.setattr(state_cache.RefitStateCache, "det_states", spy)
    config = _config(
        tmp_path,
        eval_every=0,
        grounding_refit_steps=8,
        refit_cached_states=True,
        refit_examples=3,
    )
    train(config, progress=False, records=synthetic_records)
    assert len(drawn) == 16 and len(set(drawn)) <= 3
    assert caches[-1].computed == len(set(drawn))


def test_resume_inside_a_pooled_cached_refit(tmp_path, synthetic_records):
    """Cut off after the second refit step and resumed: the refit stream continues where
    it stopped, so the weights are those of the uninterrupted run."""

    from safetensors.torch import load_file

    from medisee.train.trainer import train

    def config(root):
        return _config(
            root,
            eval_every=0,
            max_steps=2,
            grounding_refit_steps=3,
            save_every=1,
            refit_cached_states=True,
            refit_examples=4,
        )

    train(config(tmp_path / "a"), progress=False, records=synthetic_records)
    cut = cut_off_after(tmp_path / "a" / "run", tmp_path / "b" / "run", step=4)
    resumed = train(config(tmp_path / "b"), resume=True, progress=False, records=synthetic_records)
    assert resumed.resumed_from == 4 and resumed.steps == 5
    a = load_file(str(tmp_path / "a" / "run" / "model" / "model.safetensors"))
    b = load_file(str(cut / "model" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_refit_area_power_draws_the_refit_by_target_size(tmp_path, synthetic_records, monkeypatch):
    """The joint steps draw as before; the refit's sampler gets each example's factor
    (its target's share of the image relative to the largest) ** -power."""
    from medisee.train import dataset as dataset_module
    from medisee.train.trainer import train

    samplers, shares = [], []

    class SpySampler(dataset_module.MixedSampler):
        def __init__(self, *args, **kwargs):
            samplers.append(kwargs.get("repeat_factors"))
            super().__init__(*args, **kwargs)

    measured = dataset_module.MediSeeDataset.target_area_shares

    def spy_shares(self):
        shares.append(measured(self))
        return shares[-1]

    monkeypatch.setattr(dataset_module, "MixedSampler", SpySampler)
    monkeypatch.setattr(dataset_module.MediSeeDataset, "target_area_shares", spy_shares)
    config = _config(
        tmp_path, eval_every=0, max_steps=1, grounding_refit_steps=2, refit_area_power=1.0
    )
    train(config, progress=False, records=synthetic_records)
    # Two samplers, the refit's made first: its factors, and none for the joint steps.
    refit, joint = samplers
    assert joint is None and len(shares) == 1
    # Each share is its target's pixels over the 48 x 64 image's.
    records, _ = synthetic_records
    areas = {t.area / (48 * 64) for r in records if r.split == "train" for t in r.targets}
    assert set(shares[0]) == areas and len(set(areas)) > 1
    largest = max(shares[0])
    assert refit == pytest.approx([largest / share for share in shares[0]])


def test_refit_examples_is_validated(tmp_path):
    with pytest.raises(ValueError, match="refit_examples must be >= 0"):
        _config(tmp_path, refit_examples=-1)
