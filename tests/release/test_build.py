"""The parts of ``medisee release`` that need no trained model: the check's items and
images, the training-data summary, the commit, the model card, the CLI's refusal to
resume a finished demo."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from medisee.data.schema import QAItem, Record, Target
from medisee.model.medisee import WEIGHTS_NAME
from medisee.release.build import ReleaseConfig, build_release, git_commit, training_data
from medisee.release.card import model_card
from medisee.release.check import CheckItem, check_images, check_items, mean_dice


def _record(record_id: str, split: str, labels: list[str], **meta) -> Record:
    targets = [
        Target(
            label=label,
            mask=f"masks/{record_id}-{index}.png",
            box_xyxy=(0, 0, 1, 1),
            area=1,
            provenance="phantom" if record_id.startswith("phantom") else "expert",
            qa=[
                QAItem("referring", None, "short", f"Where is the {label}?", "a"),
                QAItem("reasoning", "attribute", "short", f"Which one is number {index}?", "a"),
            ],
        )
        for index, label in enumerate(labels)
    ]
    return Record(
        id=record_id,
        image=f"images/{record_id}.png",
        modality="CT",
        source="phantom" if record_id.startswith("phantom") else "pyradiomics-testdata",
        source_id=record_id,
        height=4,
        width=4,
        targets=targets,
        split=split,
        meta=meta,
    )


def test_check_items_take_the_first_reasoning_question_of_the_first_targets():
    records = [_record("a", "test", ["liver", "spleen", "aorta"]), _record("b", "test", ["x"])]
    items = check_items(records, ids=("a", "b"), per_image=2)
    assert items == [
        CheckItem("a", "liver", "Which one is number 0?"),
        CheckItem("a", "spleen", "Which one is number 1?"),
        CheckItem("b", "x", "Which one is number 0?"),
    ]
    with pytest.raises(ValueError, match=r"\['c'\]"):
        check_items(records, ids=("c",))


def test_check_images_remake_the_phantoms_of_the_build():
    from medisee.data.phantom import generate

    images = check_images(["phantom-chest-ct-00044"], seed=0)
    image, masks = images["phantom-chest-ct-00044"]
    expected = generate("chest_ct", [0, 44])
    assert np.array_equal(image, expected.image)
    assert set(masks) == {label for label, _ in expected.targets}
    with pytest.raises(ValueError, match="not radiomics test slices or phantoms"):
        check_images(["mni152-axial-z-012mm"])


def test_mean_dice_needs_every_item_scored():
    assert mean_dice([CheckItem("a", "b", "q", 0.5), CheckItem("a", "c", "q", 1.0)]) == 0.75
    with pytest.raises(ValueError, match="every item"):
        mean_dice([CheckItem("a", "b", "q")])


def test_training_data_counts_the_training_split_only():
    records = [
        _record("phantom-x-00001", "train", ["liver", "spleen"]),
        _record("radiomics-lung1-z001", "train", ["lung tumor"], patient="lung1"),
        _record("radiomics-lung2-z001", "test", ["lung tumor"], patient="lung2"),
        _record("phantom-x-00002", "val", ["liver"]),
    ]
    data = training_data(records)
    assert data["train_images"] == 2 and data["val_images"] == 1 and data["test_images"] == 1
    assert data["train_images_by_source"] == {"phantom": 1, "pyradiomics-testdata": 1}
    assert data["train_targets_by_provenance"] == {"expert": 1, "phantom": 2}
    assert data["train_patients"] == ["lung1"] and data["test_patients"] == ["lung2"]


def test_git_commit_marks_changes_outside_the_release(tmp_path):
    assert git_commit(tmp_path) == "unknown"

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("a = 1\n")
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "w.bin").write_text("0")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True
    ).stdout.strip()
    (tmp_path / "release" / "w.bin").write_text("1")
    assert git_commit(tmp_path, ignore=tmp_path / "release") == head
    (tmp_path / "code.py").write_text("a = 2\n")
    assert git_commit(tmp_path, ignore=tmp_path / "release") == head + "+modified"


def _release_info(figures: dict, **fields) -> dict:
    """A ``release.json`` as ``medisee release`` writes it, with ``figures`` and ``fields``."""
    return {
        "name": "medisee-lite",
        "medisee_version": "0.1.0",
        "format": 1,
        "dtype": "float16",
        "command": "medisee release",
        "ran_demo": True,
        "demo_command": "medisee demo --out outputs/demo",
        "commit": "abc123",
        "made": "2026-12-03",
        "machine": {"platform": "Linux"},
        "demo_timings_s": {"total": 1800.0},
        "train_steps": 3500,
        "data": {
            "train_images": 2,
            "val_images": 1,
            "test_images": 1,
            "train_images_by_source": {"phantom": 1},
            "train_targets_by_provenance": {"expert": 1, "derived": 3},
            "train_patients": ["lung1"],
            "test_patients": ["lung2"],
        },
        "figures": figures,
        "check": {"mean_dice": 0.5, "items": [{"record": "r", "label": "lungs"}]},
        **fields,
    }


def test_model_card_carries_the_command_commit_data_figures_and_limits(tmp_path):
    (tmp_path / WEIGHTS_NAME).write_bytes(b"0" * 2_000_000)
    (tmp_path / "config.json").write_text(json.dumps({"labels": ["lungs", "lung tumor"]}))
    figures = {
        "real": {"count": 10, "dice": 0.6, "acc": 0.5, "oracle_dice": 0.7},
        "real: lungs": {"count": 6, "dice": 0.85, "acc": 0.9, "oracle_dice": 0.86},
        "real: lung tumor": {"count": 4, "dice": 0.25, "acc": 0.0, "oracle_dice": 0.9},
        "hand-written": {"count": 5, "dice": 0.5, "acc": 0.4, "named_rate": 0.8},
        "hand-written, by question": {"count": 2, "dice": 0.45, "acc": 0.5, "named_rate": 0.5},
    }
    info = _release_info(figures, figures_float32={"real": {"dice": 0.601}})
    card = model_card(info, tmp_path)
    assert "not for diagnosis" in card
    assert "`medisee release`" in card and "`abc123`" in card
    assert "expert 1, derived 3" in card and "held out for test: lung2" in card
    assert "| real | 10 | 0.600 | 0.500 | 0.700 | 0.601 |" in card
    assert "| real: lung tumor | 4 | 0.250 | 0.000 | 0.900 | — |" in card
    assert (
        "80.0% of 5 cases; each question counted once, in 50.0% of 2 questions (Dice 0.450)" in card
    )
    assert "| hand-written, by question | 2 | 0.450 |" in card
    assert "2.0 MB" in card and "only the 2 structures" in card
    assert "finds lungs well" in card and "lung tumor only in part" in card


def test_release_refuses_to_resume_a_finished_demo(tmp_path):
    (tmp_path / "demo.json").write_text("{}")
    config = ReleaseConfig(demo_dir=str(tmp_path), out_dir=str(tmp_path / "out"))
    with pytest.raises(FileExistsError, match="--skip-demo"):
        build_release(config)


def test_release_config_is_validated():
    with pytest.raises(ValueError, match="release name"):
        ReleaseConfig(name="other")
    with pytest.raises(ValueError, match="dtype"):
        ReleaseConfig(dtype="int8")


def _saved_lite_config(**grounding) -> dict:
    """A ``config.json`` of the lite preset as saved today, with ``grounding`` changed."""
    import dataclasses

    from medisee.model.presets import lite

    config = dataclasses.asdict(lite())
    config["grounding"].update(grounding)
    return config


def test_inference_rule_changes_name_the_rules_that_differ_from_the_preset():
    from medisee.release.build import inference_rule_changes

    assert inference_rule_changes(_saved_lite_config()) == {}
    # A release saved before the field existed has no value for it: it ran with it off.
    saved = _saved_lite_config(seed_threshold=2.0)
    del saved["grounding"]["peak_margin"]
    assert inference_rule_changes(saved) == {
        "grounding.seed_threshold": [2.0, 4.0],
        "grounding.peak_margin": [None, 8.0],
    }


def test_question_prior_rules_are_compared_with_the_presets_recipe():
    import dataclasses

    from medisee.model.config import QuestionPriorConfig
    from medisee.release.build import inference_rule_changes
    from medisee.train.recipes import lite_recipe

    recipe = lite_recipe()
    current = QuestionPriorConfig(
        knowledge_weight=recipe["question_prior_knowledge_weight"],
        familiarity=True,
        unfamiliar_weight=recipe["question_prior_unfamiliar_weight"],
        channel_weight=recipe["question_prior_channel_weight"],
        side_penalty=recipe["question_prior_side_penalty"],
    )
    saved = _saved_lite_config()
    saved["question_prior"] = dataclasses.asdict(current)
    assert inference_rule_changes(saved) == {}
    # A release saved before the channel existed, with another exponent.
    saved["question_prior"]["unfamiliar_weight"] = 0.5
    del saved["question_prior"]["channel_weight"]
    assert inference_rule_changes(saved) == {
        "question_prior.unfamiliar_weight": [0.5, recipe["question_prior_unfamiliar_weight"]],
        "question_prior.channel_weight": [None, recipe["question_prior_channel_weight"]],
    }


def test_refresh_leaves_a_current_release_alone_and_needs_the_test_data(tmp_path):
    from medisee.release.build import refresh_release

    release = tmp_path / "release"
    release.mkdir()
    config = ReleaseConfig(demo_dir=str(tmp_path / "demo"), out_dir=str(release))
    with pytest.raises(FileNotFoundError, match="holds no release"):
        refresh_release(config)
    (release / "release.json").write_text("{}")
    (release / "config.json").write_text(json.dumps(_saved_lite_config()))
    assert refresh_release(config) == release
    (release / "config.json").write_text(json.dumps(_saved_lite_config(peak_margin=None)))
    with pytest.raises(FileNotFoundError, match=r"medisee demo --out .*demo"):
        refresh_release(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]  # no staging left


def test_model_card_of_a_refreshed_release_compares_with_the_rules_it_had(tmp_path):
    (tmp_path / WEIGHTS_NAME).write_bytes(b"0" * 1000)
    (tmp_path / "config.json").write_text(
        json.dumps({"labels": ["lung tumor"], "ct_window": "lung"})
    )
    info = _release_info(
        {"real: lung tumor": {"count": 4, "dice": 0.6, "acc": 0.5}},
        figures_float32={"real: lung tumor": {"dice": 0.26}},
        refreshed=[
            {
                "command": "medisee release --refresh --demo-dir outputs/demo",
                "commit": "def456",
                "made": "2026-12-06",
                "changes": {"grounding.peak_margin": [None, 8.0]},
                "figures_before": {"real: lung tumor": {"count": 4, "dice": 0.25, "acc": 0.0}},
            }
        ],
    )
    card = model_card(info, tmp_path)
    assert "| Dice before refresh |" in card and "before fp16" not in card
    assert "| real: lung tumor | 4 | 0.600 | 0.500 | — | 0.250 |" in card
    assert "`medisee release --refresh --demo-dir outputs/demo` at commit `def456`" in card
    assert "`grounding.peak_margin` None → 8.0" in card
    assert "- A CT file is shown to it in the `lung` window" in card  # its config's display


def test_demo_command_names_a_ct_display_other_than_the_default():
    from medisee.release.build import demo_command

    assert demo_command("outputs/demo", None) == "medisee demo --out outputs/demo"
    assert demo_command("outputs/demo", "lung") == "medisee demo --out outputs/demo"
    assert (
        demo_command("d", "lung_mediastinum_bone")
        == "medisee demo --out d --ct-window lung_mediastinum_bone"
    )


def test_the_ct_display_is_compared_with_the_training_datas():
    from medisee.data.schema import Record
    from medisee.release.build import display_changes

    def record(i: int, split: str, window) -> Record:
        return Record(
            f"r{i}", f"r{i}.png", "CT", "s", f"r{i}", 8, 8, [], split, meta={"window": window}
        )

    records = [record(0, "train", "lung"), record(1, "train", "lung"), record(2, "test", "bone")]
    assert display_changes({"ct_window": None}, records) == {"ct_window": [None, "lung"]}
    assert display_changes({"ct_window": "lung"}, records) == {}
