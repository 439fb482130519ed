"""``medisee data build|generate|stats`` through ``medisee.cli.main``."""

from __future__ import annotations

import json

from medisee.cli import main
from medisee.data.manifest import read_manifest
from medisee.data.sources.radiomics import RadiomicsConfig


def test_build_generate_stats(tmp_path, capsys):
    out = tmp_path / "ds"
    args = [
        "data",
        "build",
        "--source",
        "bundled",
        "--out",
        str(out),
        "--num-images",
        "16",
        "--mni-slices",
        "2",
        "--seed",
        "5",
        "--no-radiomics",
    ]
    assert main([*args, "--no-progress"]) == 0
    assert "16 images" in capsys.readouterr().out
    records, report = read_manifest(out, check_files=True)
    assert len(records) == 16 and not report

    # Building into the same directory again needs --overwrite.
    assert main([*args, "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err

    # Regenerating template QA with the same seed reproduces the build's QA.
    before = (out / "manifest.jsonl").read_text()
    assert (
        main(["data", "generate", "--manifest", str(out), "--engine", "template", "--seed", "5"])
        == 0
    )
    assert (out / "manifest.jsonl").read_text() == before
    assert (
        main(
            [
                "data",
                "generate",
                "--manifest",
                str(out),
                "--seed",
                "6",
                "--out",
                str(out / "m6.jsonl"),
            ]
        )
        == 0
    )
    assert (out / "m6.jsonl").read_text() != before

    assert main(["data", "stats", "--manifest", str(out)]) == 0
    text = capsys.readouterr().out
    assert "images 16" in text
    stats = json.loads((out / "stats.json").read_text())
    assert stats["num_images"] == 16 and stats["num_qa"] > 0 and stats["skipped"]["total"] == 0
    assert set(stats["qa"]["length"]) == {"short", "long"}
    png = (out / "stats.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert (out / "stats.txt").read_text().startswith("images 16")


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["data", "build", "--source", "folder", "--out", str(tmp_path / "x")]) == 2
    assert "--input" in capsys.readouterr().err
    assert main(["data", "stats", "--manifest", str(tmp_path / "nothing")]) == 2
    assert (
        main(["data", "generate", "--manifest", str(tmp_path / "nothing"), "--engine", "llm"]) == 2
    )


def test_build_passes_the_radiomics_options(tmp_path, monkeypatch):
    import medisee.data.sources.bundled as bundled

    seen = {}

    def fake_build(out, options, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)  # stop before any work: only the arguments are checked

    monkeypatch.setattr(bundled, "build_bundled", fake_build)
    args = ["data", "build", "--source", "bundled", "--out", str(tmp_path / "ds")]
    try:
        main(
            [
                *args,
                *("--radiomics-brain-pastes", "3", "--radiomics-ct-window", "chest_wide"),
                *("--radiomics-view-shift", "0.25", "--radiomics-centred-views", "0"),
            ]
        )
    except SystemExit:
        pass
    config = seen["radiomics_config"]
    assert config.train_brain_pastes == 3 and config.ct_window == "chest_wide"
    assert config.view_shift == 0.25 and config.centred_views == 0
    seen.clear()
    try:
        main(args)
    except SystemExit:
        pass
    assert seen["radiomics_config"].train_brain_pastes == 0
    assert seen["radiomics_config"].view_shift == RadiomicsConfig().view_shift
    assert seen["radiomics_config"].centred_views == RadiomicsConfig().centred_views
