"""The segmenter adapter on tiny configs: shapes, prompt combinations, gradients, checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from medisee.model.config import MaskConfig
from medisee.model.mask_decoder import PromptableSegmenter, SegmenterOutput, build_segmenter


def _segmenter(config: MaskConfig) -> PromptableSegmenter:
    torch.manual_seed(0)
    return build_segmenter(config)


def _prompts(config: MaskConfig, batch: int = 2) -> dict[str, torch.Tensor]:
    s = config.image_size
    return {
        "text_embeddings": torch.randn(batch, config.prompt_dim, requires_grad=True),
        "boxes": torch.tensor([[0.1 * s, 0.2 * s, 0.6 * s, 0.7 * s], [0, 0, s, s]])[:batch],
        "points": torch.tensor([[0.35 * s, 0.45 * s], [0.5 * s, 0.5 * s]])[:batch],
    }


@pytest.mark.parametrize("encoder", ["tiny_tinyvit_config", "tiny_vit_config"])
def test_embed_images_shape(encoder: str, request: pytest.FixtureRequest) -> None:
    config: MaskConfig = request.getfixturevalue(encoder)
    segmenter = _segmenter(config).eval()
    g = config.embedding_size
    embeddings = segmenter.embed_images(torch.rand(2, 3, config.image_size, config.image_size))
    assert embeddings.shape == (2, config.prompt_dim, g, g)
    assert torch.isfinite(embeddings).all()


@pytest.mark.parametrize(
    "used",
    [
        ("boxes",),
        ("text_embeddings",),
        ("points",),
        ("text_embeddings", "boxes"),
        ("text_embeddings", "boxes", "points"),
    ],
)
def test_decode_prompt_combinations(tiny_tinyvit_config: MaskConfig, used: tuple[str, ...]) -> None:
    config = tiny_tinyvit_config
    segmenter = _segmenter(config)
    embeddings = torch.randn(2, config.prompt_dim, config.embedding_size, config.embedding_size)
    prompts = {k: v for k, v in _prompts(config).items() if k in used}
    out = segmenter.decode(embeddings, **prompts)
    assert isinstance(out, SegmenterOutput)
    low_res = config.low_res_mask_size
    assert out.mask_logits.shape == (2, 1, low_res, low_res)
    assert out.iou_scores.shape == (2, 1)
    assert torch.isfinite(out.mask_logits).all()


def test_gradients_reach_text_and_decoder(tiny_tinyvit_config: MaskConfig) -> None:
    config = tiny_tinyvit_config
    segmenter = _segmenter(config)
    embeddings = segmenter.embed_images(torch.rand(2, 3, 64, 64)).detach()
    prompts = _prompts(config)
    prompts["boxes"].requires_grad_(True)  # MediSee may let the mask loss reach the box
    out = segmenter.decode(embeddings, **prompts)
    (out.mask_logits.mean() + out.iou_scores.mean()).backward()
    assert prompts["boxes"].grad is not None and prompts["boxes"].grad.abs().sum() > 0
    text_grad = prompts["text_embeddings"].grad
    assert text_grad is not None and text_grad.abs().sum() > 0
    decoder_grads = [p.grad for p in segmenter.mask_decoder.parameters()]
    assert all(g is not None for g in decoder_grads)
    assert sum(g.abs().sum() for g in decoder_grads) > 0
    assert segmenter.prompt_encoder.point_embed[2].weight.grad is not None  # box corner


def test_text_token_changes_the_mask(tiny_tinyvit_config: MaskConfig) -> None:
    config = tiny_tinyvit_config
    segmenter = _segmenter(config).eval()
    embeddings = torch.randn(1, config.prompt_dim, 16, 16)
    box = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    with torch.no_grad():
        a = segmenter.decode(embeddings, torch.randn(1, config.prompt_dim), boxes=box)
        b = segmenter.decode(embeddings, torch.randn(1, config.prompt_dim), boxes=box)
    assert not torch.allclose(a.mask_logits, b.mask_logits)


def test_batch_items_are_independent(tiny_tinyvit_config: MaskConfig) -> None:
    # segment-anything's decoder repeats image embeddings per prompt; batched decoding
    # must still equal one-by-one decoding.
    config = tiny_tinyvit_config
    segmenter = _segmenter(config).eval()
    embeddings = torch.randn(2, config.prompt_dim, 16, 16)
    prompts = {k: v.detach() for k, v in _prompts(config).items()}
    with torch.no_grad():
        batched = segmenter.decode(embeddings, **prompts)
        for i in range(2):
            single = segmenter.decode(
                embeddings[i : i + 1], **{k: v[i : i + 1] for k, v in prompts.items()}
            )
            assert torch.allclose(single.mask_logits, batched.mask_logits[i : i + 1], atol=1e-5)
            assert torch.allclose(single.iou_scores, batched.iou_scores[i : i + 1], atol=1e-5)


def test_vit_segmenter_decodes(tiny_vit_config: MaskConfig) -> None:
    config = tiny_vit_config
    segmenter = _segmenter(config)
    embeddings = segmenter.embed_images(torch.rand(2, 3, 32, 32))
    out = segmenter.decode(embeddings, **_prompts(config))
    assert out.mask_logits.shape == (2, 1, 32, 32)


def test_positional_embedding_is_shared_once(tiny_tinyvit_config: MaskConfig) -> None:
    segmenter = _segmenter(tiny_tinyvit_config)
    assert segmenter.positional_embedding is segmenter.prompt_encoder.shared_embedding
    keys = [k for k in segmenter.state_dict() if k.endswith("positional_embedding")]
    assert keys == ["prompt_encoder.shared_embedding.positional_embedding"]
    pe = segmenter.image_positional_embeddings()
    assert pe.shape == (1, 32, 16, 16)


def test_decode_rejects_bad_inputs(tiny_tinyvit_config: MaskConfig) -> None:
    config = tiny_tinyvit_config
    segmenter = _segmenter(config)
    embeddings = torch.randn(2, 32, 16, 16)
    with pytest.raises(ValueError, match="at least one"):
        segmenter.decode(embeddings)
    with pytest.raises(ValueError, match=r"boxes must have shape \[2, 4\]"):
        segmenter.decode(embeddings, boxes=torch.zeros(2, 1, 4))
    with pytest.raises(ValueError, match="text_embeddings"):
        segmenter.decode(embeddings, text_embeddings=torch.zeros(2, 16))
    with pytest.raises(ValueError, match="image_embeddings"):
        segmenter.decode(torch.randn(2, 32, 8, 8), boxes=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="pixel values"):
        segmenter.embed_images(torch.rand(1, 3, 32, 32))


def test_build_rejects_bad_sizes_and_weights(
    tiny_tinyvit_config: MaskConfig, tiny_vit_config: MaskConfig
) -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        build_segmenter(
            dataclasses.replace(tiny_tinyvit_config, prompt_dim=36, decoder_num_heads=2)
        )
    with pytest.raises(ValueError, match="encoder='tiny_vit'"):
        build_segmenter(dataclasses.replace(tiny_vit_config, weights="litemedsam"))
    with pytest.raises(FileNotFoundError, match="no_such_file"):
        build_segmenter(
            dataclasses.replace(tiny_vit_config, weights="/nonexistent/no_such_file.pth")
        )


def test_two_way_transformer_reads_token_major_memory_with_unchanged_results(
    tiny_tinyvit_config: MaskConfig,
) -> None:
    # The pre-hook only changes the memory layout of the transformer's image inputs: the
    # mask, the IoU score and every gradient must stay bitwise equal without it.
    segmenter = _segmenter(tiny_tinyvit_config)
    transformer = segmenter.mask_decoder.transformer
    seen = {}

    def spy(module, args, kwargs):
        seen.update({k: kwargs[k] for k in ("image_embeddings", "image_positional_embeddings")})

    embeddings = torch.randn(2, tiny_tinyvit_config.prompt_dim, 16, 16)
    prompts = {k: v.detach() for k, v in _prompts(tiny_tinyvit_config).items()}

    def run() -> list[torch.Tensor]:
        segmenter.zero_grad()
        text = prompts["text_embeddings"].clone().requires_grad_(True)
        out = segmenter.decode(embeddings, text, boxes=prompts["boxes"])
        (out.mask_logits.sigmoid().mean() + out.iou_scores.mean()).backward()
        grads = [p.grad.clone() for p in segmenter.mask_decoder.parameters() if p.grad is not None]
        return [out.mask_logits.detach(), out.iou_scores.detach(), text.grad, *grads]

    handle = transformer.register_forward_pre_hook(spy, with_kwargs=True)  # runs after ours
    with_hook = run()
    handle.remove()
    for name, value in seen.items():
        flat = value.flatten(2).transpose(1, 2)
        assert flat.is_contiguous(), name  # the [B, g*g, C] token view needs no copy
    hooks = dict(transformer._forward_pre_hooks)
    transformer._forward_pre_hooks.clear()
    try:
        without_hook = run()
    finally:
        transformer._forward_pre_hooks.update(hooks)
    assert len(with_hook) == len(without_hook) > 3
    for a, b in zip(with_hook, without_hook):
        assert torch.equal(a, b)
