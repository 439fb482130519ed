"""Shared fixtures for the data tests: one small bundled build per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from medisee.data.ontology import Ontology


@pytest.fixture(scope="session")
def ontology() -> Ontology:
    return Ontology.load()


@pytest.fixture(scope="session")
def bundled(tmp_path_factory: pytest.TempPathFactory):
    """A bundled build with all phantom kinds, 12 MNI slices and the pydicom samples (not
    the radiomics scans: ``test_radiomics`` builds those from a small fake sdist)."""
    from medisee.data.build import BuildOptions
    from medisee.data.sources.bundled import build_bundled

    out = tmp_path_factory.mktemp("bundled")
    result = build_bundled(out, BuildOptions(seed=3), num_images=48, radiomics=False)
    return result


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two phantom images (about a dozen targets) for the LLM pipeline tests."""
    from medisee.data.build import BuildOptions
    from medisee.data.sources.bundled import build_bundled

    out = tmp_path_factory.mktemp("tiny")
    build_bundled(
        out,
        BuildOptions(seed=1),
        num_images=2,
        mni_slices=0,
        dicom=False,
        kinds=["pelvic_ct", "echocardiography"],
        radiomics=False,
    )
    return out / "manifest.jsonl"
