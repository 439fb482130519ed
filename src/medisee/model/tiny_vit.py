"""medisee's TinyViT image encoder, the one LiteMedSAM distilled from MedSAM's ViT-B.

Structure (TinyViT, Wu et al. 2022, as adapted by MobileSAM and LiteMedSAM):

* **patch embedding**: two 1x1 conv+BN layers with a GELU between. LiteMedSAM replaced
  TinyViT's two stride-2 3x3 convolutions by stride-1 1x1 ones, so the stem keeps the
  full input resolution ``S``.
* **stage 0**: MBConv blocks (inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project).
* **stages 1-3**: TinyViT blocks: window self-attention with a learned bias per
  ``(|dy|, |dx|)`` offset, a 3x3 depthwise "local" convolution, then an MLP.
* **patch merging** after stages 0, 1 and 2 (1x1, 3x3 depthwise, 1x1). The first two halve
  the resolution; the last keeps it (MobileSAM's change, so the output stays at stride 4).
* **neck** (SAM's): 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d to ``out_dim`` channels.

So a ``[B, 3, S, S]`` image gives a ``[B, out_dim, S/4, S/4]`` embedding (256 px -> 64x64x256
for LiteMedSAM). Stage resolutions: ``S, S/2, S/4, S/4``.

The parameter names are medisee's own; ``medisee.model.sam_checkpoint`` maps the
segment-anything/LiteMedSAM checkpoint layout onto them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medisee.model.config import TinyViTConfig

# Output stride of the whole encoder: the stem is stride 1 and the merges are 2, 2, 1.
TINY_VIT_STRIDE = 4
_MERGE_STRIDES = (2, 2, 1)


class ConvBN(nn.Module):
    """Convolution without bias followed by BatchNorm (TinyViT's ``Conv2d_BN``).

    ``bn_weight_init=0`` makes a residual branch start as the identity.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, H, W] -> [B, C_out, H / stride, W / stride]``.

        In eval mode the BatchNorm's affine map is folded into the convolution's weight
        and bias (the same function to float rounding, ~1e-6 here): one pass over the
        activations instead of two, which matters at the full-resolution stem of the
        frozen encoder (docs/install.md, "Speed on a CPU").
        """
        bn, conv = self.bn, self.conv
        mean, var = bn.running_mean, bn.running_var
        if self.training or mean is None or var is None:
            return bn(conv(x))
        scale = bn.weight * torch.rsqrt(var + bn.eps)
        weight = conv.weight * scale.view(-1, 1, 1, 1)
        bias = bn.bias - mean * scale
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a ``[B, C, H, W]`` map (SAM's neck norm)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """Stride-1 stem: ``[B, 3, S, S] -> [B, dim, S, S]``."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(in_channels, dim // 2)
        self.act = nn.GELU()
        self.conv2 = ConvBN(dim // 2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x)))


class MBConv(nn.Module):
    """Inverted residual block, ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.expand = ConvBN(dim, hidden)
        self.depthwise = ConvBN(hidden, hidden, kernel_size=3, groups=hidden)
        self.project = ConvBN(hidden, dim, bn_weight_init=0.0)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.expand(x))
        y = self.act(self.depthwise(y))
        y = self.project(y)
        # TinyViT applies the activation after the residual sum, not before it.
        return self.act(x + y)


class PatchMerging(nn.Module):
    """Change width and (for ``stride=2``) halve resolution: ``[B, C, H, W] -> [B, C', H/s, W/s]``."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.pointwise1 = ConvBN(dim, out_dim)
        self.depthwise = ConvBN(out_dim, out_dim, kernel_size=3, stride=stride, groups=out_dim)
        self.pointwise2 = ConvBN(out_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.pointwise1(x))
        x = self.act(self.depthwise(x))
        return self.pointwise2(x)


def _offset_index(window_size: int) -> torch.Tensor:
    """``[w*w, w*w]`` index of the bias-table column for each (query, key) pair in a window.

    The table has one column per offset ``(|dy|, |dx|)``, ordered ``|dy| * w + |dx|`` (the
    order in which TinyViT enumerates offsets starting from the window's first token).
    """
    coords = torch.arange(window_size)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = (ys[:, None] - ys[None, :]).abs()
    dx = (xs[:, None] - xs[None, :]).abs()
    return dy * window_size + dx


class WindowAttention(nn.Module):
    """Multi-head self-attention inside one window, with TinyViT's learned offset biases.

    Input/output: ``[N_windows, w*w, C]``. The LayerNorm is inside the attention, so zero
    padding added by the caller is normalised too (TinyViT does the same, and the
    pretrained weights expect it).
    """

    bias_index: torch.Tensor

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"WindowAttention: dim {dim} not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.norm = nn.LayerNorm(dim)
        # Output features are laid out head-major, [head][q, k, v][head_dim], as in the
        # TinyViT checkpoints.
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        # Recomputed from the window size, so not part of the state dict.
        self.register_buffer("bias_index", _offset_index(window_size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(self.norm(x)).view(n, length, self.num_heads, 3, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each [N, heads, L, head_dim]
        bias = self.bias_table[:, self.bias_index].to(q.dtype)  # [heads, L, L]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Mlp(nn.Module):
    """Pre-norm MLP: LayerNorm, Linear, GELU, Linear on ``[..., C]``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention (residual), depthwise local conv (no residual), MLP (residual).

    Input/output: channels-last ``[B, H, W, C]``.
    """

    def __init__(
        self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.local_conv = ConvBN(dim, dim, kernel_size=local_conv_size, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window_size
        pad_h, pad_w = (-h) % ws, (-w) % ws
        # Pad bottom/right with zeros so windows tile the map; the padded tokens take part
        # in attention as keys, exactly as in TinyViT.
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        windows = (
            x.view(b, hp // ws, ws, wp // ws, ws, c)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(-1, ws * ws, c)
        )
        windows = self.attn(windows)
        x = (
            windows.view(b, hp // ws, wp // ws, ws, ws, c)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(b, hp, wp, c)
        )
        return x[:, :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._windowed_attention(x)
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks then patch merging, ``[B, C, H, W] -> [B, C', H/s, W/s]``."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class AttentionStage(nn.Module):
    """Stages 1-3: TinyViT blocks then optional patch merging; ``[B, C, H, W]`` in and out."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        downsample: PatchMerging | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size)
            for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return x if self.downsample is None else self.downsample(x)


class Neck(nn.Module):
    """SAM's neck: ``[B, C, g, g] -> [B, out_dim, g, g]``."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, out_dim, kernel_size=1, bias=False)
        self.norm1 = LayerNorm2d(out_dim)
        self.conv2 = nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, bias=False)
        self.norm2 = LayerNorm2d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(self.norm1(self.conv1(x))))


class TinyViT(nn.Module):
    """TinyViT image encoder for LiteMedSAM.

    Args:
        config: widths, depths, heads and window sizes of the four stages.
        image_size: side ``S`` of the square input (a multiple of 4).
        out_dim: channels of the output embedding (SAM's prompt dim, 256).

    ``forward(pixel_values [B, 3, S, S]) -> [B, out_dim, S/4, S/4]``. Pixel values are the
    padded SAM input in ``[0, 1]`` (no ImageNet mean/std: LiteMedSAM was trained that way).

    The BatchNorm layers use running statistics only in ``eval()`` mode: keep the encoder
    in eval mode when it is frozen.
    """

    def __init__(self, config: TinyViTConfig, image_size: int, out_dim: int) -> None:
        super().__init__()
        if image_size % TINY_VIT_STRIDE:
            raise ValueError(
                f"TinyViT: image_size ({image_size}) must be a multiple of {TINY_VIT_STRIDE}"
            )
        self.config = config
        self.image_size = image_size
        self.out_dim = out_dim
        dims = config.embed_dims
        self.patch_embed = PatchEmbed(3, dims[0])
        stages: list[nn.Module] = [
            ConvStage(
                dims[0],
                config.depths[0],
                config.mbconv_expand_ratio,
                PatchMerging(dims[0], dims[1], _MERGE_STRIDES[0]),
            )
        ]
        for i in range(1, 4):
            downsample = PatchMerging(dims[i], dims[i + 1], _MERGE_STRIDES[i]) if i < 3 else None
            stages.append(
                AttentionStage(
                    dims[i],
                    config.depths[i],
                    config.num_heads[i],
                    config.window_sizes[i],
                    config.mlp_ratio,
                    config.local_conv_size,
                    downsample,
                )
            )
        self.stages = nn.ModuleList(stages)
        self.neck = Neck(dims[-1], out_dim)
        self.apply(_init_weights)

    @property
    def grid_size(self) -> int:
        """Side of the output embedding grid, ``image_size / 4``."""
        return self.image_size // TINY_VIT_STRIDE

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` in ``[0, 1]`` -> ``[B, out_dim, S/4, S/4]``."""
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (
            3,
            self.image_size,
            self.image_size,
        ):
            raise ValueError(
                f"TinyViT expects pixel values [B, 3, {self.image_size}, {self.image_size}], "
                f"got {tuple(pixel_values.shape)}"
            )
        # Channels-last from the start: oneDNN's convolutions run faster on it, and the
        # attention stages' [B, H, W, C] view of the map is then contiguous.
        x = self.patch_embed(pixel_values.contiguous(memory_format=torch.channels_last))
        for stage in self.stages:
            x = stage(x)
        return self.neck(x).contiguous()


def _init_weights(module: nn.Module) -> None:
    # TinyViT's initialisation for linear layers; convolutions keep PyTorch's default.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
