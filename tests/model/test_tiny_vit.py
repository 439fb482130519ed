"""medisee's TinyViT: shapes, window padding, the offset-bias layout, size of LiteMedSAM's."""

from __future__ import annotations

import itertools

import pytest
import torch

from medisee.model.config import TinyViTConfig
from medisee.model.tiny_vit import ConvBN, TinyViT, _offset_index

TINY = TinyViTConfig(
    embed_dims=(8, 16, 16, 32),
    depths=(1, 1, 1, 1),
    num_heads=(1, 1, 1, 1),
    window_sizes=(2, 2, 2, 2),
)


def test_output_is_stride_4_with_out_dim_channels() -> None:
    torch.manual_seed(0)
    encoder = TinyViT(TINY, image_size=64, out_dim=24).eval()
    out = encoder(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 24, 16, 16)
    assert encoder.grid_size == 16
    assert torch.isfinite(out).all()


def test_windows_that_do_not_tile_the_map_are_padded() -> None:
    # 40 px -> stage maps 40, 20, 10, 10: windows of 3 and 4 need bottom/right padding.
    config = TinyViTConfig(
        embed_dims=(8, 16, 16, 32),
        depths=(1, 2, 1, 1),
        num_heads=(1, 2, 2, 4),
        window_sizes=(3, 3, 4, 3),
    )
    encoder = TinyViT(config, image_size=40, out_dim=16).eval()
    images = torch.rand(2, 3, 40, 40)
    out = encoder(images)
    assert out.shape == (2, 16, 10, 10)
    # Images in a batch do not see each other (windows never mix batch items).
    assert torch.allclose(encoder(images[1:]), out[1:], atol=1e-5)


def test_offset_index_matches_tinyvit_enumeration() -> None:
    # TinyViT numbers offsets (|dy|, |dx|) in the order they first appear when walking
    # every (query, key) pair of the window in raster order.
    window = 4
    points = list(itertools.product(range(window), range(window)))
    seen: dict[tuple[int, int], int] = {}
    expected = []
    for p in points:
        for q in points:
            offset = (abs(p[0] - q[0]), abs(p[1] - q[1]))
            expected.append(seen.setdefault(offset, len(seen)))
    assert torch.equal(_offset_index(window), torch.tensor(expected).view(16, 16))


def test_bias_index_is_not_in_the_state_dict() -> None:
    keys = TinyViT(TINY, image_size=64, out_dim=32).state_dict().keys()
    assert not any("bias_index" in key for key in keys)
    assert any(key.endswith("attn.bias_table") for key in keys)


def test_litemedsam_size() -> None:
    # LiteMedSAM's image encoder has 5.73 M parameters (ENVIRONMENT.md, reference model).
    encoder = TinyViT(TinyViTConfig(), image_size=256, out_dim=256)
    assert sum(p.numel() for p in encoder.parameters()) == 5_726_740


def test_rejects_wrong_input_size() -> None:
    encoder = TinyViT(TINY, image_size=64, out_dim=32)
    with pytest.raises(ValueError, match=r"\[B, 3, 64, 64\]"):
        encoder(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="multiple of 4"):
        TinyViT(TINY, image_size=66, out_dim=32)


def test_gradients_reach_the_stem() -> None:
    encoder = TinyViT(TINY, image_size=64, out_dim=32)
    encoder(torch.rand(1, 3, 64, 64)).square().mean().backward()
    assert encoder.patch_embed.conv1.conv.weight.grad is not None
    assert encoder.stages[1].blocks[0].attn.bias_table.grad is not None


def test_eval_convbn_folds_the_batchnorm_into_the_convolution() -> None:
    torch.manual_seed(0)
    layer = ConvBN(6, 10, kernel_size=3, stride=2, groups=2)
    with torch.no_grad():
        layer.bn.weight.uniform_(0.5, 2.0)
        layer.bn.bias.normal_()
        layer.bn.running_mean.normal_()
        layer.bn.running_var.uniform_(0.5, 3.0)
    x = torch.randn(2, 6, 9, 9)
    layer.eval()
    # The unfolded reference: conv, then the BatchNorm with its running statistics.
    reference = layer.bn(layer.conv(x))
    assert torch.allclose(layer(x), reference, atol=1e-5)
    # In training mode the BatchNorm normalises by the batch's statistics (and updates
    # the running ones), so nothing is folded.
    layer.train()
    out = layer(x)
    assert torch.allclose(out.mean(dim=(0, 2, 3)), layer.bn.bias, atol=1e-5)
    assert not torch.allclose(out, reference, atol=1e-3)


def test_channels_last_input_gives_the_same_contiguous_embedding() -> None:
    torch.manual_seed(0)
    encoder = TinyViT(TINY, image_size=64, out_dim=24).eval()
    images = torch.rand(2, 3, 64, 64)
    out = encoder(images)
    assert out.is_contiguous()
    assert torch.allclose(encoder(images.contiguous(memory_format=torch.channels_last)), out)
