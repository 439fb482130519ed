"""The shipped ``medisee-lite``: current format, its model card's check reproduced on the
bundled test images, and ``medisee predict`` answering with it and no ``--model``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medisee.model.medisee import WEIGHTS_NAME
from medisee.model.released import (
    DEFAULT_MODEL,
    MODEL_CARD,
    RELEASE_FILE,
    RELEASE_FORMAT,
    ReleaseInfo,
    released_model_dir,
)
from medisee.release.check import CheckItem, mean_dice, score_items

RELEASE = released_model_dir(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def predictor():
    from medisee.inference.predictor import Predictor

    return Predictor.from_pretrained()  # no name: the released model


def test_shipped_release_is_of_this_format_and_small():
    info, record = ReleaseInfo.read(RELEASE)
    assert info.format == RELEASE_FORMAT, "the code changed the format: rebuild the release"
    assert (RELEASE / WEIGHTS_NAME).stat().st_size <= 25e6
    assert (RELEASE / MODEL_CARD).is_file()
    assert record["commit"] != "unknown" and record["check"]["items"]


def test_the_shipped_card_is_what_the_card_writer_makes_of_its_record():
    from medisee.release.card import model_card

    record = json.loads((RELEASE / RELEASE_FILE).read_text())
    assert (RELEASE / MODEL_CARD).read_text() == model_card(record, RELEASE)


def test_shipped_release_reproduces_its_check(predictor):
    from medisee.data.sources.radiomics import RadiomicsDataError, find_sdist

    try:
        find_sdist()
    except RadiomicsDataError as error:  # a checkout without scripts/install.sh's download
        pytest.skip(str(error))
    record = json.loads((RELEASE / RELEASE_FILE).read_text())
    expected = [CheckItem(**item) for item in record["check"]["items"]]
    scored = score_items(predictor, expected, seed=record["check"]["seed"])
    differences = {
        f"{a.record}/{a.label}": (a.dice, b.dice)
        for a, b in zip(expected, scored)
        if abs((a.dice or 0.0) - (b.dice or 0.0)) > 0.01
    }
    assert abs(mean_dice(scored) - record["check"]["mean_dice"]) <= 0.01, differences
    assert record["check"]["mean_dice"] > 0.3  # the check is a real test, not a blank


def test_predict_without_model_uses_the_release(tmp_path):
    from medisee.cli import main
    from medisee.data.sources.bundled import mni_template_files

    template = mni_template_files()["t1"]  # the README's first usage line
    code = main(
        [
            "predict",
            "--image",
            str(template),
            "--question",
            "Segment the brain in this MRI.",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert code == 0
    out = tmp_path / template.name.split(".")[0]
    mask = np.array(Image.open(out / "mask.png")) > 0
    box = json.loads((out / "box.json").read_text())
    assert "brain" in (out / "answer.txt").read_text().lower()
    assert 0.2 < mask.mean() < 0.9 and box["box_xyxy"] is not None


def test_export_takes_the_released_model_by_name(tmp_path):
    from medisee.cli import main
    from medisee.model.medisee import MediSee

    assert main(["export", "--model", DEFAULT_MODEL, "--out", str(tmp_path / "full")]) == 0
    exported = MediSee.from_pretrained(tmp_path / "full")
    assert exported.config.preset == "lite" and exported.config.question_prior is not None
