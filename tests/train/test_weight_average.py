"""``medisee.train.weight_average``: the EMA's arithmetic by hand, its checkpoint round
trip, and a training run that keeps it across a cut-off and a resume."""

from __future__ import annotations

import pytest
import torch

from medisee.train.config import TrainConfig
from medisee.train.trainer import train
from medisee.train.weight_average import WeightAverage
from tests.train.cut_off import cut_off_after
from tests.train.test_trainer import _config


def test_the_average_follows_the_warm_up_then_the_decay():
    weight = torch.nn.Parameter(torch.zeros(2))
    average = WeightAverage([weight], decay=0.5)
    # update 0: d = min(0.5, 1/10) = 0.1 -> a = 0.1 * 0 + 0.9 * 1 = 0.9 (from a = w = 0)
    weight.data.fill_(1.0)
    average.update()
    torch.testing.assert_close(average.average[0], torch.tensor([0.9, 0.9]))
    # update 1: d = min(0.5, 2/11) = 2/11 -> a = 2/11 * 0.9 + 9/11 * 3
    weight.data.fill_(3.0)
    average.update()
    expected = 2 / 11 * 0.9 + 9 / 11 * 3
    torch.testing.assert_close(average.average[0], torch.full((2,), expected))
    # from update 8 on, d = 0.5 (9/17 > 0.5)
    average.updates = 8
    assert average.current_decay() == 0.5
    average.write_to_model()
    torch.testing.assert_close(weight.data, torch.full((2,), expected))
    weight.data.fill_(7.0)
    average.restart()
    assert average.updates == 0
    torch.testing.assert_close(average.average[0], torch.full((2,), 7.0))


def test_state_round_trip_and_a_mismatch_refused():
    first = torch.nn.Parameter(torch.ones(3))
    average = WeightAverage([first], decay=0.9)
    first.data.fill_(5.0)
    average.update()
    other = WeightAverage([torch.nn.Parameter(torch.zeros(3))], decay=0.5)
    other.load_state_dict(average.state_dict())
    assert other.decay == 0.9 and other.updates == 1
    torch.testing.assert_close(other.average[0], average.average[0])
    wrong = WeightAverage([torch.nn.Parameter(torch.zeros(4))], decay=0.9)
    with pytest.raises(ValueError, match="does not match this model"):
        wrong.load_state_dict(average.state_dict())


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, float("nan")])
def test_a_decay_outside_zero_one_is_refused(tmp_path, decay):
    with pytest.raises(ValueError, match=r"EMA decay must be in \(0, 1\)"):
        TrainConfig(manifest="m.jsonl", output_dir=str(tmp_path), ema_decay=decay)


def test_a_run_with_the_average_resumes_to_the_same_weights(tmp_path, synthetic_records):
    """Cut off after the joint phase's last checkpoint and resumed, a run with the EMA on
    ends with the same (averaged) weights; they differ from the run without it."""
    from safetensors.torch import load_file

    def config(root, **kwargs):
        return _config(
            root,
            eval_every=0,
            max_steps=2,
            grounding_refit_steps=2,
            save_every=1,
            keep_checkpoints=4,
            **kwargs,
        )

    full = train(config(tmp_path / "a", ema_decay=0.6), progress=False, records=synthetic_records)
    cut = cut_off_after(tmp_path / "a" / "run", tmp_path / "b" / "run", step=2)
    resumed = train(
        config(tmp_path / "b", ema_decay=0.6),
        resume=True,
        progress=False,
        records=synthetic_records,
    )
    assert resumed.resumed_from == 2 and resumed.steps == full.steps == 4
    plain = train(config(tmp_path / "c"), progress=False, records=synthetic_records)
    a = load_file(str(tmp_path / "a" / "run" / "model" / "model.safetensors"))
    b = load_file(str(cut / "model" / "model.safetensors"))
    c = load_file(str(tmp_path / "c" / "run" / "model" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert plain.steps == 4 and any(not torch.equal(a[key], c[key]) for key in a)
