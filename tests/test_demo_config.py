"""The shipped ``lite-cpu.yaml`` is the demo's training schedule, and the demo validates."""

from importlib import resources

import pytest

from medisee.demo import DemoConfig, cpu_times, process_cpu_seconds, steal_fraction
from medisee.train.config import TrainConfig


def test_lite_cpu_yaml_matches_the_demo_schedule():
    path = resources.files("medisee") / "configs" / "lite-cpu.yaml"
    config = TrainConfig.from_yaml(str(path))
    demo = DemoConfig().train_config("data/manifest.jsonl", "run", "cache")
    assert config.model == demo.model == "lite"
    for name in (
        "max_steps",
        "batch_size",
        "lr",
        "warmup_steps",
        "referring_ratio",
        "mask_loss_every",
        "mask_prompt",
        "group_by_length",
        "repeat_threshold",
        "grounding_refit_steps",
        "losses",
        "cpu",
    ):
        assert getattr(config, name) == getattr(demo, name), name
    assert demo.max_steps == DemoConfig().steps and demo.cache_dir == "cache"


def test_demo_config_rejects_too_few_images_or_steps():
    with pytest.raises(ValueError, match="30 images"):
        DemoConfig(num_images=10)
    with pytest.raises(ValueError, match="steps"):
        DemoConfig(steps=0)
    with pytest.raises(ValueError, match="grounding_refit_steps"):
        DemoConfig(grounding_refit_steps=-1)
    with pytest.raises(ValueError, match="eval_examples"):
        DemoConfig(eval_examples=0)
    assert DemoConfig().eval_examples is None  # the whole test split


def test_steal_fraction_from_two_readings():
    # user nice system idle iowait irq softirq steal guest guest_nice
    before = [100, 0, 20, 500, 0, 0, 0, 30, 7, 0]
    after = [160, 0, 30, 520, 0, 0, 0, 130, 9, 0]
    # deltas 60 + 10 + 20 + 100 steal = 190 ticks (guest excluded: already in user)
    assert steal_fraction(before, after) == pytest.approx(100 / 190)
    assert steal_fraction(None, after) is None
    assert steal_fraction(before, before) is None
    readings = cpu_times()
    assert readings is None or (len(readings) >= 8 and all(v >= 0 for v in readings))


def test_process_cpu_seconds_counts_work():
    before = process_cpu_seconds()
    if before is None:
        pytest.skip("no resource module on this platform")
    total = 0
    for i in range(2_000_000):
        total += i
    assert process_cpu_seconds() > before
