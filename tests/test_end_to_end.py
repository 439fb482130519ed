"""Smoke run of the whole CLI on the tiny preset: data build -> train -> eval -> predict."""

import json

from medisee.cli import main
from medisee.data.manifest import read_manifest
from medisee.demo import write_overlays
from medisee.model.embedding_cache import EmbeddingCache, encoder_fingerprint
from medisee.model.medisee import MediSee


def test_build_train_eval_predict(tmp_path, monkeypatch):
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
                "--no-radiomics",
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
                "--grounding-refit-steps",
                "2",
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

    # The demo's overlays take the embeddings the evaluation cached: with the encoder
    # made to fail, they are still drawn.
    records, _ = read_manifest(manifest)
    chosen = [r for r in records if r.split == "test"][:2]
    model = MediSee.from_pretrained(run / "model")
    cache = EmbeddingCache(tmp_path / "cache", encoder_fingerprint(model.segmenter))
    cache.precompute(model.segmenter, [data / r.image for r in chosen], progress=False)

    def no_encoder(*args, **kwargs):
        raise AssertionError("an image with a cached embedding was encoded again")

    monkeypatch.setattr(MediSee, "embed_images", no_encoder)
    write_overlays(run / "model", records, data, tmp_path / "overlays", 2, tmp_path / "cache")
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 2


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
