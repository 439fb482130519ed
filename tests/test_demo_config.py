"""``medisee train --model lite`` trains the demo's recipe; the demo and recipes validate."""

import dataclasses

import pytest

from medisee.cli import build_parser
from medisee.demo import DemoConfig
from medisee.losses import LossWeights
from medisee.train.cli import config_from_args
from medisee.train.recipes import RECIPES, config_from_yaml, recipe_config


def _cli_config(*argv: str):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_train_lite_with_no_other_flags_is_the_demo_recipe():
    cli = _cli_config("--model", "lite", "--manifest", "data/manifest.jsonl", "--out", "run")
    demo = DemoConfig().train_config("data/manifest.jsonl", "run", "cache")
    smollm2 = DemoConfig(model="lite-smollm2").train_config("m", "o", "c")
    assert (smollm2.max_steps, smollm2.refit_cached_states, smollm2.refit_examples) == (
        280,
        True,
        2000,
    )
    assert not demo.refit_cached_states  # lite: the refit runs its small LM each step
    # The demo only says where to cache embeddings and that it runs on the CPU.
    assert dataclasses.replace(demo, cache_dir=None, cpu=False) == cli
    assert demo.cache_dir == "cache" and demo.cpu
    # ... and that recipe is not the paper's defaults.
    assert (cli.max_steps, cli.lr, cli.grounding_refit_steps) == (2000, 1e-3, 1500)
    assert cli.losses == LossWeights(answer_tokens=5.0)
    # --model defaults to lite.
    assert _cli_config("--manifest", "data/manifest.jsonl", "--out", "run") == cli


def test_flags_override_the_recipe_and_only_given_ones():
    config = _cli_config("--manifest", "m", "--out", "o", "--max-steps", "7", "--lr", "0.01")
    assert (config.max_steps, config.lr) == (7, 0.01)
    assert config.grounding_refit_steps == 1500  # not given: the recipe's
    demo = DemoConfig(steps=5, grounding_refit_steps=0).train_config("m", "o", "c")
    assert (demo.max_steps, demo.grounding_refit_steps, demo.batch_size) == (5, 0, 8)


def test_every_preset_has_a_recipe_and_unknown_fields_are_refused():
    from medisee.model.presets import PRESETS

    assert set(RECIPES) == set(PRESETS)
    for name in RECIPES:
        assert recipe_config(name, "m", "o").model == name
    assert recipe_config("tiny", "m", "o").lr == 3e-4  # the paper's defaults
    with pytest.raises(ValueError, match="unknown keys"):
        recipe_config("lite", "m", "o", learning_rate=1.0)


def test_a_yaml_config_sits_over_its_presets_recipe(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "manifest: m.jsonl\noutput_dir: out\nmodel: lite\nbatch_size: 4\nlosses:\n  text: 2.0\n"
    )
    config = config_from_yaml(path, max_steps=3, lr=None)
    assert (config.batch_size, config.max_steps, config.lr) == (4, 3, 1e-3)
    # Loss weights given by name leave the recipe's other weights alone.
    assert config.losses == LossWeights(text=2.0, answer_tokens=5.0)
    path.write_text("model: lite\n")
    with pytest.raises(ValueError, match="manifest and output_dir"):
        config_from_yaml(path)


def test_the_shipped_7b_yaml_is_the_7b_recipe_with_local_paths():
    from importlib import resources

    path = resources.files("medisee") / "configs" / "medisee-7b.yaml"
    config = config_from_yaml(str(path))
    assert config.model == "medisee-7b" and config.mixed_precision == "bf16"
    assert config.batch_size == 15 and config.language_path and config.segmenter_weights


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
    with pytest.raises(ValueError, match="ct_window"):
        DemoConfig(ct_window="rainbow")
    assert DemoConfig(ct_window="lung_mediastinum_bone").ct_window == "lung_mediastinum_bone"


def test_headline_puts_real_scans_first_beside_the_oracle():
    from medisee.demo import headline_figures, headline_lines
    from medisee.evaluate.metrics import Summary

    def s(count: int, dice: float, named: float = float("nan")) -> Summary:
        return Summary(count, dice, dice, dice, dice, dice, 1.0, named)

    summaries = {
        "medisee (generated)": {
            "overall": s(5, 0.5),
            "image": {"phantom": s(3, 0.7), "real": s(2, 0.2)},
            "real_structure": {"lungs": s(2, 0.2)},
        },
        "medisee (generated, hand-written)": {
            "overall": s(4, 0.4, 0.75),
            "by_question": s(2, 0.3, 0.5),
        },
        "oracle_box": {
            "overall": s(5, 0.9),
            "image": {"phantom": s(3, 0.95), "real": s(2, 0.8)},
            "real_structure": {"lungs": s(2, 0.8)},
        },
    }
    headline = headline_figures(summaries)
    assert list(headline) == [
        "real", "real: lungs", "phantom", "hand-written", "hand-written, by question",
    ]  # fmt: skip
    assert headline["hand-written, by question"]["count"] == 2
    assert headline["real"]["dice"] == 0.2 and headline["real"]["oracle_dice"] == 0.8
    assert headline["real: lungs"]["oracle_dice"] == 0.8
    lines = headline_lines(headline)
    assert lines[1].startswith("  real: Dice 0.200, Acc@0.5 0.200 (n=2); oracle box Dice 0.800")
    assert lines[-2].endswith("(n=4); named 0.75")
    assert lines[-1].endswith("(n=2 questions); named 0.50")


def test_timing_line_gives_each_phase_and_the_training_split_in_minutes():
    from medisee.demo import timing_line

    timings = {
        "data": 60.0,
        "train": 900.0,
        "train_setup": 300.0,
        "train_joint": 480.0,
        "train_refit": 120.0,
        "train_refit_states": 90.0,
        "eval": 330.0,
        "total": 1290.0,
    }
    assert timing_line(timings) == (
        "time per phase (min): data 1.0, train 15.0 (setup 5.0, joint 8.0, refit 2.0 "
        "(LM states 1.5)), eval 5.5"
    )
    assert timing_line({"data": 30.0, "train": 90.0, "train_joint": 90.0}) == (
        "time per phase (min): data 0.5, train 1.5 (joint 1.5)"
    )
