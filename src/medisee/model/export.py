"""LoRA merge and standalone export of a trained MediSee checkpoint.

``medisee export --model DIR --out DIR`` loads a training checkpoint (``save_pretrained``
format, PEFT LoRA and trainable-token rows inside), merges every adapter into the base
weights (``merge_and_unload``: LoRA deltas into ``q_proj``/``v_proj``, the new token rows
into the input embedding and LM head) and writes a checkpoint without LoRA whose
outputs are the unmerged model's (up to float rounding).

Layout of the output:

* ``lite`` backbone: exactly ``MediSee.save_pretrained``'s (``config.json`` with
  ``language.lora = null``, ``model.safetensors``, ``tokenizer/``).
* ``llava`` backbone (``medisee-7b``): the same files, but the LLaVA model is a HF
  ``LlavaForConditionalGeneration`` directory ``language_model/`` (config, safetensors
  shards, tokenizer with the candidate tokens) and ``model.safetensors`` holds the rest
  (segmenter, routers, seg projection, box decoder). The checkpoint does not need the base
  LLaVA-Med directory any more, the 7B weights are read once in their stored dtype (no
  fp32 random init first), and the LLM can be loaded in bf16 or quantized by transformers
  (``MediSee.from_pretrained(..., llm_dtype=..., llm_quantization="4bit")``).
  ``config.json`` names ``language.pretrained_path = "language_model"``, resolved against
  the checkpoint directory when loading.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from medisee.model.medisee import (
    CONFIG_NAME,
    LANGUAGE_MODEL_DIR,
    LANGUAGE_PREFIX,
    TOKENIZER_DIR,
    WEIGHTS_NAME,
    MediSee,
    is_exported,
)

__all__ = ["LANGUAGE_MODEL_DIR", "ExportReport", "export_model", "is_exported", "merge_lora"]

_ADAPTER_MARKERS = ("lora_", "trainable_tokens", "token_adapter")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ExportReport:
    """What ``export_model`` wrote."""

    out_dir: Path
    backbone: str
    merged_lora: bool
    num_parameters: int

    def format(self) -> str:
        merged = "LoRA merged" if self.merged_lora else "no LoRA to merge"
        return (
            f"wrote {self.out_dir} ({self.backbone}, {merged}, {self.num_parameters:,} parameters)"
        )


def merge_lora(model: MediSee) -> bool:
    """Merge the PEFT adapters of ``model``'s language backbone into its weights, in place.

    LoRA deltas go into the wrapped linear layers, the ``trainable_token_indices`` rows
    into the input embedding and LM head; the PEFT wrapper is removed and
    ``config.language.lora`` set to ``None``. Returns whether there was anything to merge.

    Raises:
        RuntimeError: adapter modules survived the merge (a PEFT version that does not
            merge one of them).
    """
    language = model.language
    merge_and_unload = getattr(language.model, "merge_and_unload", None)
    if merge_and_unload is None:
        return False
    merged = merge_and_unload()
    leftovers = [
        name
        for name, _ in merged.named_modules()
        if any(marker in name for marker in _ADAPTER_MARKERS)
    ]
    if leftovers:
        raise RuntimeError(f"adapter modules left after merge_and_unload: {leftovers[:8]}")
    language.model = merged
    model.config = dataclasses.replace(
        model.config, language=dataclasses.replace(model.config.language, lora=None)
    )
    return True


def export_model(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    dtype: str | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Load ``model_dir``, merge LoRA, and write a standalone checkpoint to ``out_dir``.

    Args:
        model_dir: a ``MediSee.save_pretrained`` directory (e.g. ``runs/x/model``).
        out_dir: where to write (staged, then renamed into place).
        dtype: dtype of the LLaVA language model while merging and in the output
            (``float32``, ``bfloat16``, ``float16``); default: as stored. ``llava`` only.
        overwrite: replace a non-empty ``out_dir``.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")
    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    llm_dtype = _DTYPES[dtype] if dtype is not None else None
    model = MediSee.from_pretrained(model_dir, llm_dtype=llm_dtype).eval()
    backbone = model.config.language.backbone
    merged = merge_lora(model)
    save_exported(model, out)
    return ExportReport(
        out_dir=out,
        backbone=backbone,
        merged_lora=merged,
        num_parameters=sum(p.numel() for p in model.parameters()),
    )


def save_exported(model: MediSee, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``model`` (without PEFT wrappers) in the export layout described above."""
    from safetensors.torch import save_file

    from medisee.model.mllm import LlavaBackbone

    if hasattr(model.language.model, "peft_config"):
        raise ValueError("merge the adapters first (merge_lora)")
    out = Path(out_dir)
    if not isinstance(model.language, LlavaBackbone):
        return model.save_pretrained(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        config = dataclasses.replace(
            model.config,
            language=dataclasses.replace(
                model.config.language, pretrained_path=LANGUAGE_MODEL_DIR, hf_config=None
            ),
        )
        (staging / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2))
        llava_dir = staging / LANGUAGE_MODEL_DIR
        model.language.base_model.save_pretrained(str(llava_dir))
        model.tokenizer.save_pretrained(str(llava_dir))
        model.tokenizer.save_pretrained(str(staging / TOKENIZER_DIR))
        rest = {
            key: value.detach().contiguous()
            for key, value in model.state_dict().items()
            if not key.startswith(LANGUAGE_PREFIX)
        }
        save_file(rest, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out
