"""``medisee predict`` and ``medisee chat`` through ``main(argv)``."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from medisee.cli import main
from tests.inference.helpers import sample_image, write_ct_dicom, write_ct_series


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predict_png_and_dicom(saved_tiny_model, tmp_path):
    png = tmp_path / "in" / "wide.png"
    png.parent.mkdir()
    Image.fromarray(sample_image(30, 70)).save(png)
    dcm = tmp_path / "in" / "ct.dcm"
    write_ct_dicom(dcm, np.linspace(-1000, 1000, 24 * 40).reshape(24, 40))
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--model",
            str(saved_tiny_model),
            "--images",
            str(png.parent),
            "--question",
            "Which organ filters the blood?",
            "--out",
            str(out),
            "--max-new-tokens",
            "4",
            "--quiet",
        ]  # fmt: skip
    )
    assert code == 0
    rows = _read_jsonl(out / "predictions.jsonl")
    assert [r["id"] for r in rows] == ["ct", "wide"]
    assert [r["image_size"] for r in rows] == [[24, 40], [30, 70]]
    for row in rows:
        folder = out / row["id"]
        assert {p.name for p in folder.iterdir()} == {
            "mask.png", "box.json", "answer.txt", "overlay.png"
        }  # fmt: skip
        mask = np.asarray(Image.open(folder / "mask.png"))
        assert list(mask.shape) == row["image_size"]


def test_quiet_predict_turns_the_libraries_bars_off_while_it_runs(
    saved_tiny_model, tmp_path, monkeypatch
):
    from transformers.utils import logging as transformers_logging

    from medisee.inference import cli

    seen = []
    run = cli._run_predict

    def spy(args):
        seen.append(transformers_logging.is_progress_bar_enabled())
        return run(args)

    monkeypatch.setattr(cli, "_run_predict", spy)
    png = tmp_path / "scan.png"
    Image.fromarray(sample_image(30, 40)).save(png)
    args = ["predict", "--model", str(saved_tiny_model), "--image", str(png)]
    args += ["--question", "Where is the liver?", "--max-new-tokens", "4"]
    assert main([*args, "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    # Off under --quiet ("Loading weights" of the pretrained LM), and back on after it.
    assert seen == [False, True]
    assert transformers_logging.is_progress_bar_enabled()


def test_predict_manifest_with_several_questions_and_a_volume(saved_tiny_model, tmp_path):
    nib = pytest.importorskip("nibabel")
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.random.rand(10, 8, 3).astype(np.float32), affine),
             tmp_path / "vol.nii.gz")  # fmt: skip
    Image.fromarray(sample_image(20, 20)).save(tmp_path / "a.png")
    manifest = tmp_path / "items.jsonl"
    manifest.write_text(
        json.dumps({"image": "a.png", "questions": ["Where?", "What?"], "id": "case 1"}) + "\n"
        + json.dumps({"image": "vol.nii.gz", "question": "Which region?"}) + "\n"
    )  # fmt: skip
    out = tmp_path / "out"
    args = ["predict", "--model", str(saved_tiny_model), "--manifest", str(manifest),
            "--out", str(out), "--all-slices", "--max-new-tokens", "3", "--quiet"]  # fmt: skip
    assert main(args) == 0
    rows = _read_jsonl(out / "predictions.jsonl")
    assert [r["id"] for r in rows] == ["case_1_q0", "case_1_q1", "vol"]
    assert rows[2]["slices"] == 3
    labels = nib.load(out / "vol" / "mask.nii.gz")
    assert labels.shape == (10, 8, 3) and np.allclose(labels.affine, affine)
    boxes = json.loads((out / "vol" / "boxes.json").read_text())
    assert len(boxes["slices"]) == 3


def test_predict_a_dicom_series_directory_as_a_volume(saved_tiny_model, tmp_path):
    nib = pytest.importorskip("nibabel")
    from medisee.data.dicom_series import read_dicom_series

    rng = np.random.default_rng(0)
    slices = [rng.integers(-1000, 1000, (12, 10)).astype(np.int16) for _ in range(4)]
    series = tmp_path / "ct_series"
    write_ct_series(series, slices, positions=[0.0, 2.0, 4.0, 6.0])
    out = tmp_path / "out"
    base = ["predict", "--model", str(saved_tiny_model), "--image", str(series),
            "--question", "Where is the liver?", "--max-new-tokens", "3", "--quiet"]  # fmt: skip
    # One slice (the middle one, or --slice), as for a NIfTI file.
    assert main([*base, "--out", str(out / "one"), "--slice", "1"]) == 0
    (row,) = _read_jsonl(out / "one" / "predictions.jsonl")
    assert row["id"] == "ct_series" and row["image_size"] == [12, 10]
    # Every slice: a label volume on the series' own grid.
    assert main([*base, "--out", str(out / "all"), "--all-slices"]) == 0
    (row,) = _read_jsonl(out / "all" / "predictions.jsonl")
    assert row["slices"] == 4
    labels = nib.load(out / "all" / "ct_series" / "mask.nii.gz")
    source = read_dicom_series(series).image
    assert labels.shape == (10, 12, 4) and np.allclose(labels.affine, source.affine)
    # A second series beside it: the reader lists both, and --series picks one.
    write_ct_series(series / "b", slices[:2], positions=[0.0, 2.0], series_uid="1.2.3.4")
    for path in (series / "b").iterdir():
        path.rename(series / f"b_{path.name}")
    assert main([*base, "--out", str(out / "two"), "--all-slices"]) == 2
    picked = [*base, "--out", str(out / "two"), "--all-slices", "--series", "1.2.3.4"]
    assert main(picked) == 0
    assert nib.load(out / "two" / "ct_series" / "mask.nii.gz").shape == (10, 12, 2)


def test_predict_reports_missing_inputs(saved_tiny_model, tmp_path, capsys):
    args = ["predict", "--model", str(saved_tiny_model), "--image", str(tmp_path / "no.png"),
            "--question", "Where?", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 2
    assert "no such image" in capsys.readouterr().err
    Image.fromarray(sample_image(8, 8)).save(tmp_path / "a.png")
    no_question = ["predict", "--model", str(saved_tiny_model), "--image", str(tmp_path / "a.png"),
                   "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(no_question) == 2
    assert "--question is required" in capsys.readouterr().err


def test_chat_conversation_reset_save_quit(saved_tiny_model, tmp_path, monkeypatch, capsys):
    image = tmp_path / "img.png"
    Image.fromarray(sample_image(24, 36)).save(image)
    save_dir = tmp_path / "saved"
    script = (
        f"Which organ?\nAnd below it?\n/save {save_dir}\n/reset\n/bogus\nAgain?\n/quit\nnot read\n"
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    args = ["chat", "--model", str(saved_tiny_model), "--image", str(image),
            "--max-new-tokens", "3"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("medisee> ") == 3
    assert "(conversation reset; same image)" in out and "unknown command /bogus" in out
    transcript = json.loads((save_dir / "conversation.json").read_text())
    assert [t["question"] for t in transcript["turns"]] == ["Which organ?", "And below it?"]
    assert (save_dir / "mask.png").is_file() and (save_dir / "overlay.png").is_file()


@pytest.mark.parametrize("flag", [[], ["--no-knowledge"]])
def test_chat_passes_knowledge_and_marks_knowledge_replies(
    saved_tiny_model, tmp_path, monkeypatch, capsys, flag
):
    from medisee.inference import predictor as predictor_module

    image = tmp_path / "img.png"
    Image.fromarray(sample_image(24, 36)).save(image)
    requested = []
    conversation = predictor_module.Predictor.conversation

    def spy(self, image=None, knowledge=True):
        requested.append(knowledge)
        return conversation(self, image, knowledge)

    def ask(self, question, **generation):
        return predictor_module.Prediction(
            mask=np.zeros((24, 36), bool),
            box=None,
            text="It filters the blood.",
            scores={"reply": "knowledge"},
            question=question,
        )

    monkeypatch.setattr(predictor_module.Predictor, "conversation", spy)
    monkeypatch.setattr(predictor_module.Conversation, "ask", ask)
    monkeypatch.setattr("sys.stdin", io.StringIO("What does it do?\n/quit\n"))
    assert main(["chat", "--model", str(saved_tiny_model), "--image", str(image), *flag]) == 0
    assert requested == [not flag]
    out = capsys.readouterr().out
    assert "medisee> It filters the blood. (from the language model's knowledge)" in out


@pytest.mark.parametrize("flag", [[], ["--free-answer"]])
def test_predict_free_answer_flag(saved_tiny_model, tmp_path, monkeypatch, flag):
    from medisee.inference import predictor as predictor_module

    seen = []
    run = predictor_module.Predictor.run

    def spy(self, requests, options=None):
        seen.append((options or self.generation).constrain_answer)
        return run(self, requests, options)

    monkeypatch.setattr(predictor_module.Predictor, "run", spy)
    image = tmp_path / "img.png"
    Image.fromarray(sample_image(24, 36)).save(image)
    args = ["predict", "--model", str(saved_tiny_model), "--image", str(image)]
    args += ["--question", "Where is the liver?", "--out", str(tmp_path / "o"), "--quiet"]
    assert main([*args, "--max-new-tokens", "4", *flag]) == 0
    assert seen == [not flag]
