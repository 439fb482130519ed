"""LLaVA-Med v1.5 (original ``llava_mistral`` layout) -> HF LLaVA, and the public-release path
into a ``medisee-7b``-shaped model (converted LLaVA + segment-anything MedSAM checkpoint).

The source checkpoints are written here in the original layouts, from tiny random models:
the LLM keys are ``MistralForCausalLM``'s own (which the original ``llava_mistral`` class
extends), the projector is ``model.mm_projector.{0,2}``, the CLIP tower is a separate
directory with ``vision_model.*`` keys (as the public CLIP checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from medisee.model.config import MaskConfig
from medisee.model.convert import IMAGE_TOKEN, convert_llava_med

TEXT_SIZES = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "max_position_embeddings": 512,
}
CLIP_SIZES = {
    "hidden_size": 24,
    "intermediate_size": 48,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 16,
}
NUM_PATCHES = (32 // 8) ** 2


def make_tokenizer():
    """A small byte-level BPE tokenizer without ``<image>`` (as LLaVA-Med's own)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(
        ["[INST] Which organ filters the blood? [/INST] the liver"], trainer
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def _save_state(state: dict[str, torch.Tensor], directory: Path, fmt: str, shards: int) -> None:
    """Write ``state`` as HF does: one file, or ``shards`` files plus an index json."""
    from safetensors.torch import save_file

    keys = list(state)
    groups = [keys[i::shards] for i in range(shards)]
    stem, suffix = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    weight_map = {}
    for i, group in enumerate(groups):
        name = f"{stem}.{suffix}" if shards == 1 else f"{stem}-{i + 1:05d}-of-{shards:05d}.{suffix}"
        tensors = {k: state[k].contiguous() for k in group}
        if fmt == "safetensors":
            save_file(tensors, str(directory / name), metadata={"format": "pt"})
        else:
            torch.save(tensors, directory / name)
        weight_map.update(dict.fromkeys(group, name))
    if shards > 1:
        index = {"metadata": {}, "weight_map": weight_map}
        (directory / f"{stem}.{suffix}.index.json").write_text(json.dumps(index))


@dataclasses.dataclass
class Release:
    """A tiny LLaVA-Med-layout release and its CLIP tower on disk."""

    src: Path
    clip: Path
    llm_state: dict[str, torch.Tensor]  # original key names, as written
    clip_state: dict[str, torch.Tensor]
    config: dict
    tokenizer: object


def write_release(
    root: Path,
    fmt: str = "safetensors",
    shards: int = 2,
    edit_state=None,
    edit_config=None,
    clip_prefix: str = "vision_model.",
) -> Release:
    from transformers import CLIPVisionConfig, CLIPVisionModel, MistralConfig, MistralForCausalLM

    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    text_config = MistralConfig(vocab_size=len(tokenizer), **TEXT_SIZES)
    llm_state = dict(MistralForCausalLM(text_config).state_dict())
    d, mm = TEXT_SIZES["hidden_size"], CLIP_SIZES["hidden_size"]
    llm_state["model.mm_projector.0.weight"] = torch.randn(d, mm) * 0.2
    llm_state["model.mm_projector.0.bias"] = torch.randn(d) * 0.2
    llm_state["model.mm_projector.2.weight"] = torch.randn(d, d) * 0.2
    llm_state["model.mm_projector.2.bias"] = torch.randn(d) * 0.2
    # Older releases saved the rotary buffer: allow-listed.
    head_dim = d // TEXT_SIZES["num_attention_heads"]
    llm_state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.rand(head_dim // 2)
    if edit_state is not None:
        edit_state(llm_state)
    config = {
        "architectures": ["LlavaMistralForCausalLM"],
        "model_type": "llava_mistral",
        "vocab_size": len(tokenizer),
        "hidden_act": "silu",
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "mm_hidden_size": mm,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "mm_patch_merge_type": "flat",
        "image_aspect_ratio": "pad",
        "use_mm_proj": True,
        **TEXT_SIZES,
    }
    if edit_config is not None:
        edit_config(config)
    src = root / "llava-med-v1.5-mistral-7b"
    src.mkdir(parents=True)
    (src / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(str(src))
    _save_state(llm_state, src, fmt, shards)

    clip_config = CLIPVisionConfig(**CLIP_SIZES)
    # ``vision_model.*``: public CLIP checkpoints (and transformers 4); bare: transformers 5.
    clip_state = {
        f"{clip_prefix}{k}": v for k, v in CLIPVisionModel(clip_config).state_dict().items()
    }
    clip_state["logit_scale"] = torch.tensor(2.6592)  # a full CLIPModel's extra: allow-listed
    clip = root / "clip-vit-large-patch14-336"
    clip.mkdir()
    clip_config.save_pretrained(str(clip))
    _save_state(clip_state, clip, "safetensors", 1)
    return Release(src, clip, llm_state, clip_state, config, tokenizer)


def reference_logits(release: Release, prefix: list[int], suffix: list[int], pixels: torch.Tensor):
    """The unconverted model, composed by hand as the original LLaVA code runs it: CLIP
    hidden_states[-2] without CLS -> mlp2x_gelu projector -> spliced into the Mistral input
    embeddings at the image position -> MistralForCausalLM."""
    from transformers import CLIPVisionModel, MistralConfig, MistralForCausalLM

    text_config = MistralConfig(vocab_size=release.config["vocab_size"], **TEXT_SIZES)
    text_config._attn_implementation = "eager"
    lm = MistralForCausalLM(text_config).eval()
    lm_state = {
        k: v
        for k, v in release.llm_state.items()
        if not k.startswith("model.mm_projector") and "rotary_emb" not in k
    }
    lm.load_state_dict(lm_state, strict=True)
    tower = CLIPVisionModel.from_pretrained(str(release.clip), attn_implementation="eager").eval()
    written = {k.removeprefix("vision_model."): v for k, v in release.clip_state.items()}
    assert torch.equal(
        tower.embeddings.patch_embedding.weight, written["embeddings.patch_embedding.weight"]
    )
    projector = nn.Sequential(
        nn.Linear(CLIP_SIZES["hidden_size"], TEXT_SIZES["hidden_size"]),
        nn.GELU(),
        nn.Linear(TEXT_SIZES["hidden_size"], TEXT_SIZES["hidden_size"]),
    )
    projector.load_state_dict(
        {
            k.removeprefix("model.mm_projector."): v
            for k, v in release.llm_state.items()
            if "mm_projector" in k
        },
        strict=True,
    )
    with torch.no_grad():
        features = projector(tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:])
        embed = lm.get_input_embeddings()
        inputs = torch.cat(
            (embed(torch.tensor([prefix])), features, embed(torch.tensor([suffix]))), dim=1
        )
        return lm(inputs_embeds=inputs).logits


@pytest.mark.parametrize(
    ("fmt", "shards", "clip_prefix"),
    [("safetensors", 2, "vision_model."), ("bin", 2, "vision_model."), ("bin", 1, "")],
)
def test_converted_llava_med_gives_the_original_logits(
    tmp_path: Path, fmt: str, shards: int, clip_prefix: str
):
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    release = write_release(tmp_path, fmt=fmt, shards=shards, clip_prefix=clip_prefix)
    out = tmp_path / "llava-med-hf"
    report = convert_llava_med(release.src, release.clip, out, max_shard_size=20_000)
    vocab = release.config["vocab_size"]
    assert report.added_image_token and report.image_token_id == vocab
    assert report.vocab_size == vocab + 1
    assert len(list(out.glob("model-*.safetensors"))) > 1  # sharded output, with its index
    assert sorted(report.ignored_keys) == [
        "CLIP:logit_scale",
        "LLaVA-Med:model.layers.0.self_attn.rotary_emb.inv_freq",
    ]

    model = LlavaForConditionalGeneration.from_pretrained(
        str(out), attn_implementation="eager", local_files_only=True
    ).eval()
    config = model.config
    assert config.image_token_id == report.image_token_id
    assert config.vision_feature_layer == -2
    assert config.vision_feature_select_strategy == "default"
    assert config.image_seq_length == NUM_PATCHES
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == report.image_token_id
    assert tokenizer.pad_token == "<unk>"  # as the original LLaVA training code pads
    # The new <image> rows are the mean of the old ones.
    embed = model.get_input_embeddings().weight
    torch.testing.assert_close(embed[vocab], embed[:vocab].mean(0))

    prefix, suffix = [1, 40, 41, 42], [43, 44, 45, 46, 47]
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 32, 32)
    reference = torch.cat([reference_logits(release, prefix, suffix, p[None]) for p in pixels])
    input_ids = torch.tensor([prefix + [report.image_token_id] * NUM_PATCHES + suffix] * 2)
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=pixels).logits
    assert logits.shape == (2, input_ids.shape[1], vocab + 1)
    torch.testing.assert_close(logits[..., :vocab], reference, rtol=1e-5, atol=1e-5)


def test_unmapped_missing_and_misshapen_keys_are_named(tmp_path: Path):
    def extra(state):
        state["model.mm_projector.4.weight"] = torch.zeros(2, 2)

    release = write_release(tmp_path / "a", edit_state=extra)
    with pytest.raises(
        ValueError, match=r"unexpected source keys: LLaVA-Med:model\.mm_projector\.4\.weight"
    ):
        convert_llava_med(release.src, release.clip, tmp_path / "out")
    assert not (tmp_path / "out").exists()

    release = write_release(tmp_path / "b", edit_state=lambda s: s.pop("model.norm.weight"))
    with pytest.raises(
        ValueError, match=r"missing target keys: model\.language_model\.norm\.weight"
    ):
        convert_llava_med(release.src, release.clip, tmp_path / "out")

    def wrong(state):
        state["model.mm_projector.2.bias"] = torch.zeros(7)

    release = write_release(tmp_path / "c", edit_state=wrong)
    with pytest.raises(
        ValueError, match=r"mm_projector\.2\.bias -> .*linear_2\.bias: \(7,\) vs \(32,\)"
    ):
        convert_llava_med(release.src, release.clip, tmp_path / "out")
    assert not list(tmp_path.glob(".out.*")), "staging directory left behind"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("mm_projector_type", "linear", "mm_projector_type 'linear'"),
        ("model_type", "llava_llama", "llava_mistral"),
        ("mm_use_im_start_end", True, "mm_use_im_start_end"),
        ("mm_hidden_size", 1024, r"mm_hidden_size \(1024\) differs"),
    ],
)
def test_unsupported_configs_are_refused(tmp_path: Path, field: str, value, message: str):
    release = write_release(tmp_path, edit_config=lambda c: c.__setitem__(field, value))
    with pytest.raises(ValueError, match=message):
        convert_llava_med(release.src, release.clip, tmp_path / "out")


def test_existing_output_needs_overwrite(tmp_path: Path):
    release = write_release(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        convert_llava_med(release.src, release.clip, out)
    convert_llava_med(release.src, release.clip, out, overwrite=True, dtype="bfloat16")
    assert not (out / "keep.txt").exists()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_public_releases_build_a_medisee_7b_shaped_model(
    tmp_path: Path, tiny_vit_config: MaskConfig
):
    """Converted LLaVA-Med + a segment-anything-format MedSAM file -> ``build_model`` of the
    ``medisee-7b`` preset (sizes shrunk): the SAM file loads strictly into the segmenter, the
    tokenizer comes from the converted directory, LoRA is on, a forward pass runs."""
    from medisee.model.medisee import build_model
    from medisee.model.presets import medisee_7b
    from tests.conftest import make_batch
    from tests.model.test_sam_checkpoint import sam_vit_state

    release = write_release(tmp_path)
    llava_dir = tmp_path / "llava-med-hf"
    convert_llava_med(release.src, release.clip, llava_dir)
    torch.manual_seed(2)
    sam_state = sam_vit_state(tiny_vit_config)
    sam_path = tmp_path / "medsam_vit_b.pth"
    torch.save({"model": sam_state}, sam_path)

    config = medisee_7b(llava_path=str(llava_dir), medsam_path=str(sam_path))
    config.mask = dataclasses.replace(tiny_vit_config, weights=str(sam_path))
    config.language = dataclasses.replace(config.language, attn_implementation="eager")
    config.fusion.router_hidden = 16
    config.box.hidden_size = 16
    model = build_model(config)

    segmenter_state = model.segmenter.state_dict()
    assert torch.equal(
        segmenter_state["image_encoder.layers.1.attn.rel_pos_h"],
        sam_state["image_encoder.blocks.1.attn.rel_pos_h"],
    )
    assert torch.equal(
        segmenter_state["mask_decoder.iou_token.weight"], sam_state["mask_decoder.iou_token.weight"]
    )
    assert sum(v.numel() for v in segmenter_state.values()) == sum(
        v.numel() for v in sam_state.values()
    )
    base = model.language.base_model
    assert torch.equal(
        base.model.multi_modal_projector.linear_1.weight,
        release.llm_state["model.mm_projector.0.weight"],
    )
    assert model.language.num_image_tokens == NUM_PATCHES
    assert any("lora_A" in name for name, _ in model.language.model.named_parameters())

    batch = make_batch(model)
    out = model(
        batch["input_ids"], batch["attention_mask"], batch["image_sizes"], batch["pixel_values"]
    )
    assert out.mask_logits.shape == (2, 32, 32)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.mask_logits).all()


def test_convert_cli(tmp_path: Path, capsys) -> None:
    from medisee.cli import main

    release = write_release(tmp_path)
    out = tmp_path / "hf"
    argv = ["convert", "llava-med", "--src", str(release.src), "--clip", str(release.clip)]
    assert main([*argv, "--out", str(out), "--max-shard-size", "0.00002"]) == 0
    assert "<image> id" in capsys.readouterr().out
    assert (out / "model.safetensors.index.json").is_file()
    assert main([*argv, "--out", str(out)]) == 2  # not empty, no --overwrite
    assert "not empty" in capsys.readouterr().err
    assert (
        main(
            [
                "convert",
                "llava-med",
                "--src",
                str(tmp_path / "nope"),
                "--clip",
                str(release.clip),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
