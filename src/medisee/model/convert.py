"""The original LLaVA-Med v1.5 release -> a HF ``LlavaForConditionalGeneration`` directory.

LLaVA-Med v1.5 (``microsoft/llava-med-v1.5-mistral-7b``) ships in the layout of the
original LLaVA code base, which transformers cannot load: ``config.json`` has
``model_type: llava_mistral`` and the ``mm_*`` fields, and the weights are a Mistral LM
(``model.embed_tokens``, ``model.layers.*``, ``model.norm``, ``lm_head``) plus the
projector ``model.mm_projector.{0,2}`` (``mlp2x_gelu``: Linear, GELU, Linear). The CLIP
tower is not in it: the original code loads it from ``mm_vision_tower``
(``openai/clip-vit-large-patch14-336``), a separate directory here.

``convert_llava_med`` writes the transformers 5 layout that medisee's ``medisee-7b``
preset loads (``LanguageConfig.pretrained_path``)::

    model.language_model.*           <- model.embed_tokens / model.layers.* / model.norm
    lm_head.weight                   <- lm_head.weight
    model.multi_modal_projector.linear_1/linear_2 <- model.mm_projector.0/.2
    model.vision_tower.*             <- the CLIP directory (vision_model.* or bare keys)

The key map is explicit and strict: every source key is mapped or matches an allow-list
(``SOURCE_IGNORED_KEYS``, ``CLIP_IGNORED_KEYS``), every target key is produced, shapes must
agree; otherwise a ``ValueError`` names the keys. The ``<image>`` token is added to the
tokenizer when absent (the original code uses the out-of-vocabulary id -200 instead); its
new rows of the input embedding and LM head are the mean of the existing rows. A tokenizer
without a pad token pads with ``<unk>``, as the original LLaVA training code does. Tensors
are read lazily and written shard by shard, so a 7B conversion holds one output shard
(``max_shard_size`` bytes) in memory, not the whole model.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch

from medisee.model.sam_checkpoint import format_keys

logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"

#: Source (LLaVA-Med) keys that may be present and are dropped, with the reason.
SOURCE_IGNORED_KEYS: dict[str, str] = {
    # Rotary frequencies: recomputed from the config (older checkpoints saved them).
    r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq": "rotary buffer, recomputed",
    # A saved vision tower: the original code builds the tower with delay_load and loads it
    # from mm_vision_tower, ignoring these; the CLIP directory is the tower here too.
    r"model\.vision_tower\.vision_tower\..+": "vision tower copy (original code ignores it)",
}
#: CLIP-directory keys that may be present and are dropped (a full ``CLIPModel``
#: checkpoint, such as openai/clip-vit-large-patch14-336, carries its text side too).
CLIP_IGNORED_KEYS: dict[str, str] = {
    r"(vision_model\.)?embeddings\.position_ids": "position index buffer, recomputed",
    r"text_model\..+": "CLIP text encoder",
    r"text_projection\.weight": "CLIP text projection",
    r"visual_projection\.weight": "CLIP image projection (LLaVA reads hidden states)",
    r"logit_scale": "CLIP contrastive temperature",
}

_LLM_RULES: tuple[tuple[str, str], ...] = (
    (r"model\.embed_tokens\.weight", "model.language_model.embed_tokens.weight"),
    (r"model\.layers\.(\d+)\.(.+)", r"model.language_model.layers.\1.\2"),
    (r"model\.norm\.weight", "model.language_model.norm.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
    (r"model\.mm_projector\.0\.(weight|bias)", r"model.multi_modal_projector.linear_1.\1"),
    (r"model\.mm_projector\.2\.(weight|bias)", r"model.multi_modal_projector.linear_2.\1"),
)
_CLIP_RULES: tuple[tuple[str, str], ...] = (
    (r"vision_model\.(.+)", r"model.vision_tower.\1"),
    (r"((?:embeddings|pre_layrnorm|encoder|post_layernorm)\..+)", r"model.vision_tower.\1"),
)
#: Target rows that grow when tokens are added (new rows: mean of the existing ones).
_VOCAB_KEYS = ("model.language_model.embed_tokens.weight", "lm_head.weight")

#: ``MistralConfig`` fields read from the ``llava_mistral`` config (the rest are LLaVA's).
_MISTRAL_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sliding_window",
    "attention_dropout",
    "rope_theta",
    "rope_parameters",
)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_MAX_SHARD_SIZE = 5 * 10**9


# --------------------------------------------------------------------------- reading
class CheckpointReader:
    """Lazy, read-only view of the tensors of a HF-style checkpoint directory.

    Finds ``model.safetensors.index.json``, ``model.safetensors``,
    ``pytorch_model.bin.index.json`` or ``pytorch_model.bin`` (in that order). safetensors
    files are opened lazily; ``.bin`` files are loaded with ``mmap=True`` and
    ``weights_only=True`` (nothing is executed, pages are read on use).
    """

    _CANDIDATES = (
        ("model.safetensors.index.json", True),
        ("model.safetensors", False),
        ("pytorch_model.bin.index.json", True),
        ("pytorch_model.bin", False),
    )

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"checkpoint directory not found: {self.directory}")
        self._bin_cache: dict[Path, dict[str, torch.Tensor]] = {}
        self.files: dict[str, Path] = {}  # key -> file
        for name, is_index in self._CANDIDATES:
            path = self.directory / name
            if not path.is_file():
                continue
            if is_index:
                weight_map = json.loads(path.read_text())["weight_map"]
                self.files = {key: self.directory / file for key, file in weight_map.items()}
            else:
                self.files = dict.fromkeys(self._file_keys(path), path)
            break
        else:
            names = ", ".join(name for name, _ in self._CANDIDATES)
            raise FileNotFoundError(f"{self.directory} holds none of: {names}")
        missing = sorted({str(p) for p in self.files.values() if not p.is_file()})
        if missing:
            raise FileNotFoundError(f"{self.directory}: shard files listed but absent: {missing}")

    def _file_keys(self, path: Path) -> list[str]:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return list(handle.keys())
        return list(self._bin(path))

    def _bin(self, path: Path) -> dict[str, torch.Tensor]:
        if path not in self._bin_cache:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if not isinstance(state, dict):
                raise ValueError(f"{path} does not hold a state dict")
            self._bin_cache[path] = state
        return self._bin_cache[path]

    def keys(self) -> list[str]:
        return list(self.files)

    def shape(self, key: str) -> tuple[int, ...]:
        path = self.files[key]
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return tuple(handle.get_slice(key).get_shape())
        return tuple(self._bin(path)[key].shape)

    def get(self, key: str) -> torch.Tensor:
        path = self.files[key]
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return handle.get_tensor(key)
        return self._bin(path)[key]

    def release(self) -> None:
        """Drop the memory maps of ``.bin`` files."""
        self._bin_cache.clear()


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------- config
def check_llava_med_config(source: Mapping[str, Any]) -> None:
    """Refuse what this converter does not reproduce exactly (ValueError naming the field)."""
    model_type = source.get("model_type")
    if model_type != "llava_mistral":
        raise ValueError(
            f"expected model_type 'llava_mistral' (LLaVA-Med v1.5), got {model_type!r}"
        )
    projector = source.get("mm_projector_type", "linear")
    if projector != "mlp2x_gelu":
        raise ValueError(f"mm_projector_type {projector!r} is not supported (only 'mlp2x_gelu')")
    feature = source.get("mm_vision_select_feature", "patch")
    if feature not in ("patch", "cls_patch"):
        raise ValueError(f"mm_vision_select_feature {feature!r} must be 'patch' or 'cls_patch'")
    if source.get("mm_use_im_start_end", False):
        raise ValueError("mm_use_im_start_end=True (image start/end tokens) is not supported")
    merge = source.get("mm_patch_merge_type", "flat")
    if merge != "flat":
        raise ValueError(f"mm_patch_merge_type {merge!r} is not supported (only 'flat')")
    if source.get("tie_word_embeddings", False):
        raise ValueError("tied input/output embeddings are not supported (LLaVA-Med is untied)")


def build_llava_config(
    source: Mapping[str, Any],
    clip_directory: Path,
    vocab_size: int,
    image_token_id: int,
    dtype: torch.dtype,
):
    """``LlavaConfig`` (Mistral text + CLIP vision) equivalent to a ``llava_mistral`` config."""
    from transformers import CLIPVisionConfig, LlavaConfig, MistralConfig, PreTrainedConfig

    check_llava_med_config(source)
    text_fields = {k: source[k] for k in _MISTRAL_FIELDS if k in source}
    text_config = MistralConfig(vocab_size=vocab_size, tie_word_embeddings=False, **text_fields)
    # A full CLIPModel config is accepted too: base_config_key picks its vision_config.
    vision_config = CLIPVisionConfig.from_pretrained(str(clip_directory), local_files_only=True)
    mm_hidden = source.get("mm_hidden_size", vision_config.hidden_size)
    if mm_hidden != vision_config.hidden_size:
        raise ValueError(
            f"mm_hidden_size ({mm_hidden}) differs from the CLIP tower's hidden_size "
            f"({vision_config.hidden_size}): wrong --clip directory?"
        )
    strategy: Literal["default", "full"] = (
        "default" if source.get("mm_vision_select_feature", "patch") == "patch" else "full"
    )
    image_size, patch_size = vision_config.image_size, vision_config.patch_size
    if not isinstance(image_size, int) or not isinstance(patch_size, int):
        raise ValueError(
            f"the CLIP tower needs integer image_size and patch_size, got {image_size!r} "
            f"and {patch_size!r}"
        )
    patches = (image_size // patch_size) ** 2
    config = LlavaConfig(
        text_config=text_config.to_dict(),
        vision_config=vision_config.to_dict(),
        image_token_index=image_token_id,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        vision_feature_layer=int(source.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy=strategy,
        image_seq_length=patches + (1 if strategy == "full" else 0),
        tie_word_embeddings=False,
    )
    config.dtype = dtype
    # LlavaConfig turns the two dicts into configs.
    for sub_config in (config.text_config, config.vision_config):
        if not isinstance(sub_config, PreTrainedConfig):
            raise TypeError(f"LlavaConfig left a sub-config as {type(sub_config)}")
        sub_config.dtype = dtype
    return config


def _source_dtype(source: Mapping[str, Any]) -> torch.dtype:
    name = source.get("torch_dtype") or source.get("dtype") or "float32"
    if name not in _DTYPES:
        raise ValueError(f"source dtype {name!r} is not one of {sorted(_DTYPES)}")
    return _DTYPES[name]


# ----------------------------------------------------------------------------- mapping
@dataclass
class KeyPlan:
    """Where each target tensor comes from, checked against the target model."""

    sources: dict[str, tuple[CheckpointReader, str]] = field(default_factory=dict)
    grown: dict[str, int] = field(default_factory=dict)  # target key -> rows added
    ignored: list[str] = field(default_factory=list)


def _map(key: str, rules: Iterable[tuple[str, str]]) -> str | None:
    for pattern, replacement in rules:
        match = re.fullmatch(pattern, key)
        if match is not None:
            return match.expand(replacement)
    return None


def plan_conversion(
    llm: CheckpointReader,
    clip: CheckpointReader,
    target_shapes: Mapping[str, tuple[int, ...]],
) -> KeyPlan:
    """Map every source key to a target key, strictly.

    Raises:
        ValueError: naming unexpected source keys (no rule, not allow-listed, or no such
            target), target keys no source fills, keys filled twice and shape mismatches.
            Only ``embed_tokens``/``lm_head`` may have fewer rows than the target (tokens
            added to the vocabulary).
    """
    plan = KeyPlan()
    unexpected: list[str] = []
    duplicated: list[str] = []
    mismatched: list[str] = []
    for reader, rules, ignored_patterns, label in (
        (llm, _LLM_RULES, SOURCE_IGNORED_KEYS, "LLaVA-Med"),
        (clip, _CLIP_RULES, CLIP_IGNORED_KEYS, "CLIP"),
    ):
        for key in reader.keys():
            if any(re.fullmatch(pattern, key) for pattern in ignored_patterns):
                plan.ignored.append(f"{label}:{key}")
                continue
            target = _map(key, rules)
            if target is None or target not in target_shapes:
                unexpected.append(f"{label}:{key}")
                continue
            if target in plan.sources:
                duplicated.append(f"{label}:{key} -> {target}")
                continue
            plan.sources[target] = (reader, key)
            have, want = reader.shape(key), tuple(target_shapes[target])
            if have == want:
                continue
            grows = (
                target in _VOCAB_KEYS
                and len(have) == 2
                and have[1] == want[1]
                and 0 < have[0] < want[0]
            )
            if grows:
                plan.grown[target] = want[0] - have[0]
            else:
                mismatched.append(f"{label}:{key} -> {target}: {have} vs {want}")
    missing = sorted(set(target_shapes) - set(plan.sources))
    problems = []
    if unexpected:
        problems.append(f"unexpected source keys: {format_keys(unexpected, limit=12)}")
    if missing:
        problems.append(f"missing target keys: {format_keys(missing, limit=12)}")
    if duplicated:
        problems.append(f"target keys filled twice: {format_keys(duplicated, limit=12)}")
    if mismatched:
        problems.append(f"shape mismatches (source vs target): {format_keys(mismatched, limit=12)}")
    if problems:
        raise ValueError("cannot convert: " + "; ".join(problems))
    return plan


def _grow_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Append ``rows`` rows equal to the mean of the existing ones (computed in fp32)."""
    mean = tensor.float().mean(dim=0, keepdim=True).to(tensor.dtype)
    return torch.cat((tensor, mean.expand(rows, -1)), dim=0)


# ----------------------------------------------------------------------------- writing
def _write_shards(
    directory: Path,
    order: list[str],
    nbytes: Mapping[str, int],
    load: Callable[[str], torch.Tensor],
    max_shard_size: int,
) -> None:
    """Write ``order``'s tensors as safetensors shards (+ index when more than one)."""
    from safetensors.torch import save_file

    groups: list[list[str]] = [[]]
    size = 0
    for key in order:
        if groups[-1] and size + nbytes[key] > max_shard_size:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += nbytes[key]
    names = (
        ["model.safetensors"]
        if len(groups) == 1
        else [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    )
    weight_map: dict[str, str] = {}
    for name, keys in zip(names, groups):
        tensors = {key: load(key).contiguous() for key in keys}
        save_file(tensors, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, name))
        del tensors
    if len(groups) > 1:
        index = {"metadata": {"total_size": sum(nbytes.values())}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


@dataclass(frozen=True)
class ConversionReport:
    """What ``convert_llava_med`` wrote."""

    out_dir: Path
    num_tensors: int
    num_parameters: int
    vocab_size: int
    image_token_id: int
    added_image_token: bool
    dtype: str
    ignored_keys: tuple[str, ...]

    def format(self) -> str:
        return (
            f"wrote {self.out_dir}: {self.num_tensors} tensors, {self.num_parameters:,} "
            f"parameters ({self.dtype}), vocab {self.vocab_size}, <image> id "
            f"{self.image_token_id}{' (added)' if self.added_image_token else ''}, "
            f"{len(self.ignored_keys)} allow-listed source keys dropped"
        )


def convert_llava_med(
    src: str | os.PathLike[str],
    clip: str | os.PathLike[str],
    out: str | os.PathLike[str],
    dtype: str | None = None,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
) -> ConversionReport:
    """Convert an original LLaVA-Med v1.5 directory + a CLIP tower into a HF LLaVA directory.

    Args:
        src: the ``llava_mistral`` release (config.json, tokenizer files, weights as
            safetensors or ``.bin``, single or sharded with an index).
        clip: the CLIP ViT-L/14-336 tower in HF format (``CLIPVisionModel`` or a full
            ``CLIPModel`` directory).
        out: the directory to write (config.json, safetensors shards, tokenizer, and the
            CLIP ``preprocessor_config.json`` when the CLIP directory has one). Written to
            a staging directory and renamed into place.
        dtype: ``float32``/``bfloat16``/``float16``; default: the source's ``torch_dtype``.
        max_shard_size: bytes per output shard.
        overwrite: replace a non-empty ``out``.

    Raises:
        ValueError: unsupported LLaVA config, or keys that do not map (see ``plan_conversion``).
        FileNotFoundError: missing directories, configs or weight files.
    """
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    src, clip, out = Path(src), Path(clip), Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")
    source_config = _read_json(src / "config.json")
    check_llava_med_config(source_config)
    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    target_dtype = _DTYPES[dtype] if dtype is not None else _source_dtype(source_config)

    tokenizer = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    added = IMAGE_TOKEN not in tokenizer.get_vocab()
    if added:
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    # One token gives one id; the stubs return ``int | list[int]`` for both.
    image_token_id = int(cast(int, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)))
    if tokenizer.pad_token is None and tokenizer.unk_token is not None:
        # Batched training needs a pad token; the original LLaVA code pads with <unk>.
        tokenizer.pad_token = tokenizer.unk_token
    vocab_size = max(int(source_config.get("vocab_size", 0)), len(tokenizer), image_token_id + 1)

    config = build_llava_config(source_config, clip, vocab_size, image_token_id, target_dtype)
    with torch.device("meta"):
        target = LlavaForConditionalGeneration(config)
    target_shapes = {key: tuple(value.shape) for key, value in target.state_dict().items()}
    del target

    llm_reader, clip_reader = CheckpointReader(src), CheckpointReader(clip)
    plan = plan_conversion(llm_reader, clip_reader, target_shapes)
    for key in plan.ignored:
        logger.info("dropped allow-listed source key %s", key)

    def load(key: str) -> torch.Tensor:
        reader, source_key = plan.sources[key]
        tensor = reader.get(source_key).to(target_dtype)
        rows = plan.grown.get(key)
        return _grow_rows(tensor, rows) if rows else tensor

    element = torch.empty((), dtype=target_dtype).element_size()
    nbytes = {key: element * _numel(shape) for key, shape in target_shapes.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_shards(staging, list(target_shapes), nbytes, load, max_shard_size)
        config.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        processor = clip / "preprocessor_config.json"
        if processor.is_file():
            shutil.copy2(processor, staging / processor.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        llm_reader.release()
        clip_reader.release()
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return ConversionReport(
        out_dir=out,
        num_tensors=len(target_shapes),
        num_parameters=sum(_numel(shape) for shape in target_shapes.values()),
        vocab_size=vocab_size,
        image_token_id=image_token_id,
        added_image_token=added,
        dtype=str(target_dtype).removeprefix("torch."),
        ignored_keys=tuple(plan.ignored),
    )


def _numel(shape: Iterable[int]) -> int:
    total = 1
    for size in shape:
        total *= int(size)
    return total
