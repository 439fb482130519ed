"""Smoke run of the whole CLI on the tiny preset: data build -> train -> eval -> predict."""

import json

from medisee.cli import main


def test_build_train_eval_predict(tmp_path):
    data, run, evaluation, predictions = (tmp_path / n for n in ("data", "run", "eval", "pred"))
    assert (
        main(
            [
                "data",
                "build",
                "--source",
                "bundled",
                "--out",
                str(data),
                "--num-images",
                "30",
                "--no-progress",
            ]
        )
        == 0
    )
    manifest = data / "manifest.jsonl"
    assert (
        main(
            [
                "train",
                "--manifest",
                str(manifest),
                "--out",
                str(run),
                "--model",
                "tiny",
                "--max-steps",
                "3",
                "--batch-size",
                "2",
                "--save-every",
                "3",
                "--cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (run / "model" / "model.safetensors").is_file()
    assert (
        main(
            [
                "eval",
                "--model",
                str(run / "model"),
                "--manifest",
                str(manifest),
                "--split",
                "test",
                "--out",
                str(evaluation),
                "--max-examples",
                "4",
                "--baselines",
                "none",
            ]
        )
        == 0
    )
    summary = json.loads((evaluation / "summary.json").read_text())
    assert summary["medisee (generated)"]["count"] == 4
    assert summary["medisee (teacher-forced)"]["count"] == 4
    record = json.loads(manifest.read_text().splitlines()[-1])
    assert (
        main(
            [
                "predict",
                "--model",
                str(run / "model"),
                "--image",
                str(data / record["image"]),
                "--question",
                "Which organ here filters the blood?",
                "--out",
                str(predictions),
            ]
        )
        == 0
    )
    assert any(predictions.rglob("*.png")), "predict wrote no overlay/mask"


def test_cli_reports_bad_input_with_exit_code_2(tmp_path, capsys):
    code = main(
        [
            "train",
            "--manifest",
            str(tmp_path / "missing.jsonl"),
            "--out",
            str(tmp_path / "r"),
            "--model",
            "tiny",
        ]
    )
    assert code == 2
    assert "error" in capsys.readouterr().err
