"""Analytical GPU memory of training (and serving) a LLaVA-backbone MediSee, per device.

Why: the paper trains ``medisee-7b`` at per-device batch 15 on 4 GPUs with DeepSpeed
ZeRO-2; LISA-style projects are known for running out of memory. This module says where
the bytes go before a GPU is rented, from the architecture's real sizes (LLaVA-Med v1.5:
Mistral-7B + CLIP ViT-L/14-336 + mlp2x_gelu projector; MedSAM ViT-B; medisee's heads).

Parameter counts are exact (tested against the real classes built on the ``meta``
device). Memory terms are estimates; each is documented where it is computed. The model
of a training step, per GPU (``N`` = data-parallel GPUs, ZeRO-2 as in
``configs/deepspeed_zero2.json``):

* **weights**: every parameter in bf16 (DeepSpeed's bf16 mode casts the whole module),
  replicated (ZeRO-2 does not shard weights).
* **optimizer states**: AdamW fp32 master copy + two fp32 moments of the *trainable*
  parameters, ``12 B/param``, sharded: ``/ N``.
* **gradients**: the gradient partition of the trainable parameters, bf16 (``2 B``) plus
  its fp32 copy at the optimizer step (``4 B``), sharded: ``/ N``.
* **reduce buckets**: DeepSpeed allocates ``reduce_bucket_size`` bf16 elements for the
  contiguous gradient bucket, twice with ``overlap_comm`` (replicated, independent of N).
* **inputs**: pixels (fp32 from the loader + the bf16 copy), SAM embeddings, CLIP pixels.
* **activations**, the largest of three phases of the step:
  - *SAM encoder* (frozen, ``no_grad``; skipped with the embedding cache): the decomposed
    relative-position bias of a global-attention block, ``B·heads·(g²)²`` bf16
    (transformers' SDPA path materialises it), plus the block's MLP activations.
  - *end of forward / loss backward*: the gradient-checkpoint inputs of every decoder
    layer (``L·B·T·d``, bf16), the logits' cross-entropy (``B·T·V`` at ``14 B``: the
    fp32 log-softmax kept for backward, its gradient, the input gradient and its bf16
    cast), the mask decoder's saved activations, the CLIP forward (transient).
  - *decoder-layer backward*: the checkpoints plus one layer recomputed with autograd
    (``≈ 30·d + 8·I`` bytes per token: two RMSNorms with their fp32 copies, q/k/v/out of
    SDPA with k/v repeated to all heads, LoRA dropout inputs and masks, the SwiGLU
    gate/up/act/product).
* **CUDA context**: outside PyTorch's allocator (``nvidia-smi`` shows it, ``max_memory_allocated``
  does not), assumed 0.5 GiB.

``T = image tokens (576) + text tokens`` (``text_tokens``: chat template, question,
answer with candidate tokens and explanation; 256 by default). Expect ±20 % on the
activation terms; ``scripts/gpu_check.sh`` measures the single-GPU case.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from medisee.model.config import GroundingConfig, LoraSettings, MaskConfig, ModelConfig

GiB = 2**30
BF16 = 2
FP32 = 4
#: bf16 cross-entropy over the logits, bytes per logit element at the loss backward.
LOGIT_BYTES = 14
#: DeepSpeed ZeRO-2 ``reduce_bucket_size`` of ``configs/deepspeed_zero2.json``.
REDUCE_BUCKET_SIZE = 500_000_000
CUDA_CONTEXT_BYTES = GiB // 2


@dataclass(frozen=True)
class TextSizes:
    """Decoder-only LM (Mistral/Llama layout, untied head). Defaults: Mistral-7B as in
    LLaVA-Med v1.5 (``vocab_size`` before medisee adds tokens)."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 8

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def hf_fields(self) -> dict[str, int]:
        """These sizes under transformers' ``MistralConfig`` names (vocabulary left out:
        callers add their tokens)."""
        return {
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
        }

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``(in, out)`` of each projection of one decoder layer."""
        d, q, kv, i = (
            self.hidden_size,
            self.num_heads * self.head_dim,
            self.kv_size,
            self.intermediate_size,
        )
        return {
            "q_proj": (d, q),
            "k_proj": (d, kv),
            "v_proj": (d, kv),
            "o_proj": (q, d),
            "gate_proj": (d, i),
            "up_proj": (d, i),
            "down_proj": (i, d),
        }


@dataclass(frozen=True)
class VisionSizes:
    """CLIP vision tower. Defaults: ViT-L/14 at 336 px (LLaVA-1.5 / LLaVA-Med v1.5)."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    num_channels: int = 3

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def hf_fields(self) -> dict[str, int]:
        """These sizes under transformers' ``CLIPVisionConfig`` names."""
        return {
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
        }


@dataclass(frozen=True)
class ArchitectureSizes:
    """Everything the counts depend on. ``added_tokens``: tokens added before medisee's
    candidates (``<image>`` by ``medisee convert llava-med``)."""

    text: TextSizes = field(default_factory=TextSizes)
    vision: VisionSizes = field(default_factory=VisionSizes)
    mask: MaskConfig = field(default_factory=lambda: MaskConfig(encoder="vit", image_size=1024))
    num_candidates: int = 2
    added_tokens: int = 1
    router_hidden: int = 1024
    box_hidden: int = 512
    box_layers: int = 3
    seg_projection_hidden: int | None = None
    grounding: GroundingConfig | None = None  # the grounding head when enabled
    lora: LoraSettings | None = field(default_factory=LoraSettings)

    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size + self.added_tokens + self.num_candidates

    @property
    def num_image_tokens(self) -> int:
        """LLaVA image tokens: patches without CLS (``vision_feature_select_strategy="default"``)."""
        return self.vision.num_patches

    @classmethod
    def from_config(
        cls,
        config: ModelConfig,
        text: TextSizes | None = None,
        vision: VisionSizes | None = None,
        added_tokens: int = 1,
    ) -> ArchitectureSizes:
        """Sizes of a llava-backbone ``ModelConfig``; the LLaVA sizes (which live in the
        checkpoint, not the preset) default to LLaVA-Med v1.5's."""
        if config.language.backbone != "llava":
            raise ValueError(
                f"the memory estimate covers llava-backbone presets, got {config.language.backbone!r}"
            )
        if config.mask.encoder != "vit":
            raise ValueError(
                f"the memory estimate covers the ViT SAM encoder, got {config.mask.encoder!r}"
            )
        return cls(
            text=text or TextSizes(),
            vision=vision or VisionSizes(),
            mask=config.mask,
            num_candidates=config.num_candidate_tokens,
            added_tokens=added_tokens,
            router_hidden=config.fusion.router_hidden,
            box_hidden=config.box.hidden_size,
            box_layers=config.box.num_layers,
            seg_projection_hidden=config.seg_projection_hidden,
            grounding=config.grounding if config.grounding.enabled else None,
            lora=config.language.lora,
        )


# ------------------------------------------------------------------ parameter counts
def _linear(inp: int, out: int, bias: bool = True) -> int:
    return inp * out + (out if bias else 0)


def text_parameters(text: TextSizes, vocab_size: int) -> dict[str, int]:
    """``MistralForCausalLM`` / ``LlamaForCausalLM`` (no biases, untied head)."""
    d = text.hidden_size
    layer = sum(i * o for i, o in text.linear_shapes().values()) + 2 * d  # + 2 RMSNorms
    return {
        "embed_tokens": vocab_size * d,
        "layers": text.num_layers * layer,
        "norm": d,
        "lm_head": vocab_size * d,
    }


def vision_parameters(vision: VisionSizes) -> int:
    """``CLIPVisionModel``: embeddings, pre-LN, encoder layers, post-LN."""
    d, f = vision.hidden_size, vision.intermediate_size
    embeddings = (
        d  # class embedding
        + d * vision.num_channels * vision.patch_size**2  # patch conv, no bias
        + (vision.num_patches + 1) * d  # positions
    )
    layer = 4 * _linear(d, d) + 2 * 2 * d + _linear(d, f) + _linear(f, d)
    return embeddings + 2 * d + vision.num_layers * layer + 2 * d


def projector_parameters(vision_hidden: int, text_hidden: int) -> int:
    """LLaVA ``mlp2x_gelu``: Linear(vision, text), GELU, Linear(text, text), with biases."""
    return _linear(vision_hidden, text_hidden) + _linear(text_hidden, text_hidden)


def sam_parameters(mask: MaskConfig) -> dict[str, int]:
    """State-dict sizes of the ViT segmenter (transformers' SAM modules, as built by
    ``build_segmenter``): image encoder, prompt encoder (with the shared random-Fourier
    matrix), mask decoder."""
    vit, c = mask.vit, mask.prompt_dim
    d, g, m = vit.hidden_size, mask.embedding_size, vit.mlp_dim
    head_dim = d // vit.num_attention_heads
    encoder = _linear(3 * vit.patch_size**2, d) + g * g * d  # patch embedding, positions
    for index in range(vit.num_hidden_layers):
        size = g if index in vit.global_attn_indexes else vit.window_size
        encoder += 2 * 2 * d + _linear(d, 3 * d) + _linear(d, d) + _linear(d, m) + _linear(m, d)
        encoder += 2 * (2 * size - 1) * head_dim  # decomposed relative positions h, w
    encoder += c * d + 2 * c + c * c * 9 + 2 * c  # neck: 1x1 conv, LN, 3x3 conv, LN

    channels = 16  # SAM's dense mask-prompt branch
    prompt = (
        2 * (c // 2)  # random-Fourier matrix
        + 4 * c  # point embeddings
        + 2 * c  # not-a-point, no-mask
        + _linear(4, channels // 4)  # 2x2 conv 1 -> 4 channels
        + 2 * (channels // 4)
        + _linear((channels // 4) * 4, channels)  # 2x2 conv 4 -> 16
        + 2 * channels
        + _linear(channels, c)  # 1x1 conv 16 -> c
    )

    inner, tokens = c // 2, mask.num_multimask_outputs + 1
    cross = 3 * _linear(c, inner) + _linear(inner, c)
    layer = 4 * _linear(c, c) + 2 * cross + 4 * 2 * c + _linear(c, mask.decoder_mlp_dim)
    layer += _linear(mask.decoder_mlp_dim, c)
    h = mask.iou_head_hidden_dim
    iou_head = _linear(c, h) + (mask.iou_head_depth - 2) * _linear(h, h) + _linear(h, tokens)
    decoder = (
        c  # IoU token
        + tokens * c  # mask tokens
        + mask.decoder_depth * layer
        + cross  # final token-to-image attention
        + 2 * c
        + (c * (c // 4) * 4 + c // 4)  # transposed conv c -> c/4
        + 2 * (c // 4)
        + ((c // 4) * (c // 8) * 4 + c // 8)  # transposed conv c/4 -> c/8
        + tokens * (2 * _linear(c, c) + _linear(c, c // 8))  # hypernetwork MLPs
        + iou_head
    )
    return {"image_encoder": encoder, "prompt_encoder": prompt, "mask_decoder": decoder}


def head_parameters(sizes: ArchitectureSizes) -> dict[str, int]:
    """medisee's routers (R_s, R_d), box decoder, seg projection and, when enabled, the
    grounding head (query MLP d -> d -> k, 1x1 key conv C -> k, a scalar bias, and the
    optional refiner: 1x1 k -> r, L 3x3 r -> r, 1x1 r -> 1)."""
    d, n = sizes.text.hidden_size, sizes.num_candidates
    router = _linear(n * d, sizes.router_hidden) + _linear(sizes.router_hidden, n)
    h = sizes.box_hidden
    box = _linear(d, h) + (sizes.box_layers - 2) * _linear(h, h) + _linear(h, 4)
    inner = sizes.seg_projection_hidden or d
    heads = {
        "fusion": 2 * router,
        "box_decoder": box,
        "seg_projection": _linear(d, inner) + _linear(inner, sizes.mask.prompt_dim),
    }
    if sizes.grounding is not None:
        k = sizes.grounding.dim
        grounding = _linear(d, d) + _linear(d, k) + _linear(sizes.mask.prompt_dim, k) + 1
        if sizes.grounding.refine_layers:
            r = sizes.grounding.refine_dim
            grounding += _linear(k, r) + sizes.grounding.refine_layers * _linear(9 * r, r)
            grounding += _linear(r, 1)
        heads["grounding"] = grounding
    return heads


def lora_parameters(text: TextSizes, lora: LoraSettings | None) -> int:
    """LoRA A (``r x in``) and B (``out x r``) on each target projection of each layer."""
    if lora is None:
        return 0
    shapes = text.linear_shapes()
    unknown = set(lora.target_modules) - set(shapes)
    if unknown:
        raise ValueError(
            f"LoRA targets {sorted(unknown)} are not decoder projections {sorted(shapes)}"
        )
    per_layer = sum(lora.r * (shapes[t][0] + shapes[t][1]) for t in lora.target_modules)
    return text.num_layers * per_layer


def parameter_counts(sizes: ArchitectureSizes) -> dict[str, int]:
    """Parameters by part (``frozen``/``trainable`` as ``apply_trainable_policy`` sets them)."""
    text = text_parameters(sizes.text, sizes.vocab_size)
    sam = sam_parameters(sizes.mask)
    heads = head_parameters(sizes)
    lora = lora_parameters(sizes.text, sizes.lora)
    # PEFT trainable_token_indices: a delta of the new rows in the embedding and the head.
    tokens = 2 * sizes.num_candidates * sizes.text.hidden_size if sizes.lora is not None else 0
    counts = {
        "llm": sum(text.values()),
        "vision_tower": vision_parameters(sizes.vision),
        "projector": projector_parameters(sizes.vision.hidden_size, sizes.text.hidden_size),
        "lora": lora,
        "new_token_rows": tokens,
        "sam_image_encoder": sam["image_encoder"],
        "sam_prompt_encoder": sam["prompt_encoder"],
        "sam_mask_decoder": sam["mask_decoder"],
        **heads,
    }
    trainable_parts = ["lora", "new_token_rows", "sam_mask_decoder", *heads]
    if sizes.lora is None:
        trainable_parts.append("llm")  # a full fine-tune of the LM
    counts["trainable"] = sum(counts[p] for p in trainable_parts)
    counts["total"] = sum(v for k, v in counts.items() if k != "trainable")
    counts["frozen"] = counts["total"] - counts["trainable"]
    return counts


# ------------------------------------------------------------------------ memory
@dataclass(frozen=True)
class TrainingSetup:
    """The distributed step being estimated (defaults: the paper's recipe)."""

    gpus: int = 4
    batch_size: int = 15
    text_tokens: int = 256
    cache_embeddings: bool = False
    gradient_checkpointing: bool = True
    reduce_bucket_size: int = REDUCE_BUCKET_SIZE
    overlap_comm: bool = True

    def __post_init__(self) -> None:
        for name in ("gpus", "batch_size", "text_tokens", "reduce_bucket_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainingSetup.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-GPU bytes of one training step, and the parameter counts behind them.

    ``per_gpu``: persistent rows plus ``activations`` (the largest phase); ``phases``:
    the activation bytes of each phase; ``inference``: weight (+ one-sequence KV cache)
    bytes of serving the model in each LLM precision.
    """

    setup: TrainingSetup
    sizes: ArchitectureSizes
    sequence_length: int
    parameters: dict[str, int]
    per_gpu: dict[str, int]
    phases: dict[str, int]
    inference: dict[str, int]

    @property
    def total_bytes(self) -> int:
        return sum(self.per_gpu.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.__getitem__)

    def as_dict(self) -> dict[str, Any]:
        return {
            "setup": dataclasses.asdict(self.setup),
            "sequence_length": self.sequence_length,
            "vocab_size": self.sizes.vocab_size,
            "parameters": dict(self.parameters),
            "per_gpu_bytes": dict(self.per_gpu),
            "per_gpu_total_bytes": self.total_bytes,
            "per_gpu_total_gib": round(self.total_bytes / GiB, 2),
            "activation_phases_bytes": dict(self.phases),
            "peak_phase": self.peak_phase,
            "inference_bytes": dict(self.inference),
        }


def _layer_recompute_bytes_per_token(text: TextSizes) -> int:
    """Autograd-saved bytes per token of one Mistral decoder layer with LoRA on q/v (bf16).

    Two RMSNorms: fp32 input copy (4d) + bf16 output (2d) + the bf16 normalised input the
    weight multiplies (2d), i.e. 8d each; SDPA: q, k, v (k/v repeated to all heads) and
    the output, 4 x 2d; LoRA dropout output (2d) + mask (1d) on two targets, 6d; SwiGLU:
    gate, up, act(gate), act*up, 4 x 2I.
    """
    d, i = text.hidden_size, text.intermediate_size
    return 16 * d + 8 * d + 6 * d + 8 * i


def _mask_decoder_bytes_per_image(mask: MaskConfig) -> int:
    """Saved activations of SAM's mask decoder for one image (bf16): about ten image-sized
    ``g² x C`` tensors per two-way block plus four for the final attention, and a dozen
    upscaling maps of ``C/8`` channels at ``4g x 4g``."""
    g, c = mask.embedding_size, mask.prompt_dim
    image_side = (10 * mask.decoder_depth + 4) * g * g * c
    upscaling = 12 * (c // 8) * (4 * g) ** 2
    return BF16 * (image_side + upscaling)


def estimate_training_memory(
    preset: str | ModelConfig = "medisee-7b",
    gpus: int = 4,
    batch_size: int = 15,
    text_tokens: int = 256,
    cache_embeddings: bool = False,
    sizes: ArchitectureSizes | None = None,
    setup: TrainingSetup | None = None,
) -> MemoryEstimate:
    """Per-GPU memory of one training step of ``preset`` (see the module docstring).

    Args:
        preset: a preset name or a llava-backbone ``ModelConfig``.
        gpus: data-parallel GPUs; ZeRO-2 shards optimizer states and gradients over them.
        batch_size: per-device batch.
        text_tokens: text tokens per sample besides the image tokens.
        cache_embeddings: SAM image embeddings come from the cache (no SAM encoder pass).
        sizes: override the architecture sizes (default: from the preset + LLaVA-Med v1.5).
        setup: override the whole step description (then the four above are ignored).
    """
    from medisee.model.presets import get_preset

    config = get_preset(preset) if isinstance(preset, str) else preset
    sizes = sizes or ArchitectureSizes.from_config(config)
    setup = setup or TrainingSetup(gpus, batch_size, text_tokens, cache_embeddings)
    counts = parameter_counts(sizes)
    text, vision, mask = sizes.text, sizes.vision, sizes.mask
    b, n = setup.batch_size, setup.gpus
    t = sizes.num_image_tokens + setup.text_tokens
    tokens = b * t
    trainable = counts["trainable"]

    per_gpu = {
        "weights_bf16": BF16 * counts["total"],
        "optimizer_states": math.ceil(3 * FP32 * trainable / n),
        "gradients": math.ceil((BF16 + FP32) * trainable / n),
        "reduce_buckets": BF16 * setup.reduce_bucket_size * (2 if setup.overlap_comm else 1),
        "inputs": b
        * (
            (FP32 + BF16) * 3 * mask.image_size**2  # SAM-frame pixels
            + BF16 * mask.prompt_dim * mask.embedding_size**2  # SAM embeddings
            + FP32 * 3 * vision.image_size**2  # CLIP pixels
        ),
    }

    g2 = mask.embedding_size**2
    sam_phase = 0
    if not setup.cache_embeddings:
        heads = mask.vit.num_attention_heads
        sam_phase = BF16 * b * (heads * g2 * g2 + 3 * g2 * mask.vit.mlp_dim)
    layers = text.num_layers if setup.gradient_checkpointing else 0
    checkpoints = BF16 * layers * tokens * text.hidden_size
    recompute = tokens * _layer_recompute_bytes_per_token(text)
    if not setup.gradient_checkpointing:  # every layer keeps its activations
        recompute *= text.num_layers
    logits = LOGIT_BYTES * tokens * sizes.vocab_size
    mask_decoder = b * _mask_decoder_bytes_per_image(mask)
    clip_transient = (
        BF16 * b * (vision.num_patches + 1) * (6 * vision.hidden_size + vision.intermediate_size)
    )
    phases = {
        "sam_encoder": sam_phase,
        "loss_backward": checkpoints + logits + mask_decoder + clip_transient,
        "layer_backward": checkpoints + recompute,
    }
    per_gpu["activations"] = max(phases.values())
    per_gpu["cuda_context"] = CUDA_CONTEXT_BYTES

    return MemoryEstimate(
        setup=setup,
        sizes=sizes,
        sequence_length=t,
        parameters=counts,
        per_gpu=per_gpu,
        phases=phases,
        inference=_inference_bytes(sizes, counts, t),
    )


def _inference_bytes(
    sizes: ArchitectureSizes, counts: dict[str, int], length: int
) -> dict[str, int]:
    """Weights of a merged export + the KV cache of one ``length``-token sequence, with
    the LLM in bf16, 8-bit or 4-bit (bitsandbytes quantizes the decoder-layer linears; the
    embedding, LM head, CLIP tower and projector stay bf16; SAM and the heads fp32). 4-bit
    NF4 with double quantization costs about 4.13 bits per weight."""
    text = text_parameters(sizes.text, sizes.vocab_size)
    linear = text["layers"] - sizes.text.num_layers * 2 * sizes.text.hidden_size
    bf16_rest = counts["llm"] - linear + counts["vision_tower"] + counts["projector"]
    fp32 = sum(counts[p] for p in ("sam_image_encoder", "sam_prompt_encoder", "sam_mask_decoder"))
    fp32 += sum(counts.get(p, 0) for p in ("fusion", "box_decoder", "seg_projection", "grounding"))
    kv_cache = 2 * sizes.text.num_layers * sizes.text.kv_size * length * BF16
    common = BF16 * bf16_rest + FP32 * fp32 + kv_cache
    return {
        "bf16": common + BF16 * linear,
        "8bit": common + linear,
        "4bit": common + math.ceil(linear * 4.13 / 8),
        "kv_cache_per_sequence": kv_cache,
    }


def memory_breakdown(**kwargs: Any) -> dict[str, Any]:
    """``estimate_training_memory(**kwargs).as_dict()``: a plain, JSON-ready breakdown."""
    return estimate_training_memory(**kwargs).as_dict()


_ROW_LABELS = {
    "weights_bf16": "weights, bf16 (replicated)",
    "optimizer_states": "AdamW fp32 master + 2 moments (/N)",
    "gradients": "gradient partition bf16 + fp32 (/N)",
    "reduce_buckets": "ZeRO-2 reduce buckets",
    "inputs": "batch inputs (pixels, embeddings)",
    "activations": "activations (peak phase)",
    "cuda_context": "CUDA context (assumed)",
}


def format_estimate(estimate: MemoryEstimate) -> str:
    """A plain-text table of the estimate (what ``medisee memory`` prints)."""
    s, p = estimate.setup, estimate.parameters
    lines = [
        f"per-GPU training memory: {s.gpus} GPU(s), ZeRO-2, per-device batch {s.batch_size}, "
        f"sequence {estimate.sequence_length} tokens ({estimate.sizes.num_image_tokens} image + "
        f"{s.text_tokens} text), gradient checkpointing {'on' if s.gradient_checkpointing else 'off'}, "
        f"SAM embeddings {'cached' if s.cache_embeddings else 'computed'}",
        "",
        f"parameters: total {p['total'] / 1e9:.3f} B, trainable {p['trainable'] / 1e6:.2f} M "
        f"(LoRA {p['lora'] / 1e6:.2f} M, new token rows {p['new_token_rows'] / 1e3:.1f} k, "
        f"mask decoder {p['sam_mask_decoder'] / 1e6:.2f} M, routers {p['fusion'] / 1e6:.2f} M, "
        f"box decoder {p['box_decoder'] / 1e6:.2f} M, seg projection {p['seg_projection'] / 1e6:.2f} M)",
        f"            LLM {p['llm'] / 1e9:.3f} B, CLIP {p['vision_tower'] / 1e6:.1f} M, projector "
        f"{p['projector'] / 1e6:.1f} M, SAM encoder {p['sam_image_encoder'] / 1e6:.1f} M",
        "",
        f"{'item':<40}{'GiB':>10}",
    ]
    for key, value in estimate.per_gpu.items():
        lines.append(f"{_ROW_LABELS.get(key, key):<40}{value / GiB:>10.2f}")
    lines.append(f"{'total per GPU':<40}{estimate.total_bytes / GiB:>10.2f}")
    lines += ["", f"{'activation phase':<40}{'GiB':>10}"]
    for key, value in estimate.phases.items():
        mark = "  <- peak" if key == estimate.peak_phase else ""
        lines.append(f"{key:<40}{value / GiB:>10.2f}{mark}")
    lines += ["", f"{'inference (weights + 1-sequence KV cache)':<40}{'GiB':>10}"]
    for key in ("bf16", "8bit", "4bit"):
        label = f"LLM {key}, rest bf16/fp32 (SAM, heads fp32)"
        lines.append(f"{label:<40}{estimate.inference[key] / GiB:>10.2f}")
    return "\n".join(lines)
