"""Full-size check of ``medisee-7b`` on one GPU, with random weights (nothing downloaded).

    bash scripts/gpu_check.sh                    # on a machine with one CUDA GPU
    python benchmarks/gpu_check.py --tiny        # the same code path, tiny sizes, on CPU

Builds the paper's architecture at its real sizes (LLaVA-Med v1.5-shaped Mistral-7B +
CLIP ViT-L/14-336 + mlp2x_gelu projector, MedSAM ViT-B at 1024 px, medisee's heads, LoRA
r=8 on q/v, gradient checkpointing) with random weights: frozen weights in bf16, trainable
ones in fp32 (master weights), compute under bf16 autocast, AdamW (``--tiny`` on CPU uses
fp32 throughout by default: CPU bf16 kernels are slow). Then measures

* one training step at the paper's per-device batch (15 by default): step time and peak
  memory (``torch.cuda.max_memory_allocated``); on out-of-memory the batch is halved and
  the failure noted;
* inference at batch 1: SAM image encoder, LM prefill over the prompt, decode tokens/s
  with the KV cache, and the decoders (routers + box decoder + SAM mask decoder);

and writes everything to ``benchmarks/results/gpu_check.json`` (``--out``), next to the
analytical estimate of ``medisee.model.memory`` for the same single-GPU setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

DEFAULT_OUT = Path(__file__).parent / "results" / "gpu_check.json"
FALLBACK_BATCHES = (15, 8, 4, 2, 1)


# ----------------------------------------------------------------------------- model
def llava_med_hf_config(image_token_id: int, vocab_size: int, tiny: bool) -> dict[str, Any]:
    """LLaVA-Med v1.5 (as ``medisee convert llava-med`` writes it), or a tiny twin. The
    full sizes are ``medisee.model.memory``'s defaults, the ones the estimate counts."""
    from medisee.model.memory import TextSizes, VisionSizes

    if tiny:
        text = TextSizes(
            hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2
        ).hf_fields()
        vision = VisionSizes(
            hidden_size=32,
            intermediate_size=64,
            num_layers=2,
            num_heads=2,
            image_size=32,
            patch_size=8,
        ).hf_fields()
    else:
        text = TextSizes().hf_fields()
        vision = {**VisionSizes().hf_fields(), "hidden_act": "quick_gelu"}
    return {
        "text_config": {
            "model_type": "mistral",
            "vocab_size": vocab_size,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-5,
            "rope_theta": 1000000.0,
            "sliding_window": None,
            **text,
        },
        "vision_config": {"model_type": "clip_vision_model", "projection_dim": 768, **vision},
        "image_token_id": image_token_id,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "projector_hidden_act": "gelu",
    }


def build_config(tokenizer, tiny: bool):
    """The ``medisee-7b`` preset with an inline LLaVA config instead of a local checkpoint."""
    from medisee.model.config import LanguageConfig, MaskConfig, ViTConfig
    from medisee.model.presets import medisee_7b

    config = medisee_7b()
    # LLaVA-Med's 32000 + <image> + the candidate tokens medisee adds (the stand-in
    # tokenizer's ids all fall inside, so no resize happens here).
    vocab = len(tokenizer) if tiny else 32001 + config.num_candidate_tokens
    config.language = dataclasses.replace(
        config.language,
        pretrained_path=None,
        hf_config=llava_med_hf_config(tokenizer.convert_tokens_to_ids("<image>"), vocab, tiny),
    )
    if tiny:
        config.mask = MaskConfig(
            encoder="vit",
            image_size=32,
            prompt_dim=32,
            vit=ViTConfig(16, 2, 2, 32, 4, 3, (1,)),
            decoder_mlp_dim=64,
            decoder_num_heads=2,
            iou_head_hidden_dim=32,
        )
        config.fusion.router_hidden = 32
        config.box.hidden_size = 32
    assert isinstance(config.language, LanguageConfig)
    return config


@contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_full_size(device: torch.device, tiny: bool, dtype: torch.dtype = torch.bfloat16):
    """Random-weight model built directly on ``device`` in ``dtype``; trainable parameters
    are then kept in fp32 (master weights), as mixed-precision training does."""
    from medisee.model.medisee import build_model
    from medisee.model.tokenizer import default_corpus, train_lite_tokenizer

    # Any tokenizer with <image> works for random weights; its ids are < the LLaVA vocab.
    tokenizer = train_lite_tokenizer(default_corpus(), 400 if tiny else 4096)
    config = build_config(tokenizer, tiny)
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        model = build_model(config, tokenizer=tokenizer)
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    return model


# ----------------------------------------------------------------------------- inputs
def training_batch(model, batch_size: int, text_tokens: int, device: torch.device):
    """A teacher-forced batch whose text part has about ``text_tokens`` tokens."""
    builder = model.prompt_builder()
    question = "Which structure in this scan filters the blood and lies below the liver?"
    sentence = "It lies in the upper abdomen, lateral to the spine. "
    explanation = sentence
    while True:
        encoded = builder.encode([(question, builder.answer_text("The kidney.", explanation))])
        if len(encoded.input_ids) >= model.language.num_image_tokens + text_tokens:
            break
        explanation += sentence
    ids = torch.tensor([encoded.input_ids] * batch_size, device=device)
    size = model.config.mask.image_size
    low_res = model.config.mask.low_res_mask_size
    masks = torch.zeros(batch_size, low_res, low_res, device=device)
    masks[:, low_res // 4 : low_res // 2, low_res // 3 : 2 * low_res // 3] = 1
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.tensor([encoded.labels] * batch_size, device=device),
        "pixel_values": torch.rand(batch_size, 3, size, size, device=device),
        "image_sizes": torch.tensor([[size, size]] * batch_size, device=device),
        "target_masks": masks,
        "target_boxes": torch.tensor([[0.5, 0.375, 0.33, 0.25]] * batch_size, device=device),
    }


# ----------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls (after one warm-up call) and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
#: Compute dtype of the run (``--dtype``); bf16 runs under autocast.
COMPUTE_DTYPE = {"value": torch.bfloat16}


def autocast(device: torch.device):
    if COMPUTE_DTYPE["value"] == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=COMPUTE_DTYPE["value"])


# ----------------------------------------------------------------------------- checks
def train_step_check(
    model, device: torch.device, batch_size: int, text_tokens: int, steps: int
) -> dict[str, Any]:
    """One configuration: ``steps`` measured steps after a warm-up step."""
    from medisee.losses import LossWeights
    from medisee.train.task import MediSeeTask

    task = MediSeeTask(model, LossWeights()).train()
    trainable = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-4, betas=(0.9, 0.95))
    batch = training_batch(model, batch_size, text_tokens, device)

    def step() -> float:
        with autocast(device):
            loss = task(batch).total
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    reset_peak(device)
    seconds, loss = timed(step, device, steps)
    return {
        "batch_size": batch_size,
        "sequence_length": int(batch["input_ids"].shape[1]),
        "step_s_median": round(seconds, 4),
        "samples_per_s": round(batch_size / seconds, 3),
        "peak_memory_gib": round(peak_gib(device), 3),
        "loss": round(loss, 4),
    }


def train_with_fallback(
    model,
    device: torch.device,
    batch_size: int,
    text_tokens: int,
    steps: int,
    step_check: Callable[..., dict[str, Any]] = train_step_check,
) -> dict[str, Any]:
    """Try ``batch_size``, then smaller batches from ``FALLBACK_BATCHES`` on OOM."""
    notes = []
    candidates = [batch_size] + [b for b in FALLBACK_BATCHES if b < batch_size]
    for size in candidates:
        failure = None
        try:
            result = step_check(model, device, size, text_tokens, steps)
        except torch.OutOfMemoryError as error:
            failure = str(error).splitlines()[0] if str(error) else "out of memory"
        if failure is not None:
            # Outside the except block: the traceback (and the failed step's tensors it
            # keeps alive) is gone, so the cache can really be emptied.
            notes.append(f"batch {size}: out of memory ({failure})")
            model.zero_grad(set_to_none=True)
            reset_peak(device)
            continue
        result["requested_batch_size"] = batch_size
        result["notes"] = notes
        return result
    return {"requested_batch_size": batch_size, "notes": notes, "failed": True}


@torch.no_grad()
def inference_check(model, device: torch.device, new_tokens: int, repeats: int) -> dict[str, Any]:
    """Batch-1 latencies: SAM encoder, prefill, decode, decoders."""
    model.eval()
    builder = model.prompt_builder()
    prompt = builder.encode([("Which organ in this image filters the blood?", None)]).input_ids
    input_ids = torch.tensor([prompt], device=device)
    attention_mask = torch.ones_like(input_ids)
    size = model.config.mask.image_size
    pixels = torch.rand(1, 3, size, size, device=device)
    image_sizes = torch.tensor([[size, size]], device=device)
    reset_peak(device)
    with autocast(device):
        encoder_s, embeddings = timed(lambda: model.embed_images(pixels), device, repeats)
        vision = model.vision_inputs(pixels, embeddings)
        prefill_s, _ = timed(
            lambda: model.language(input_ids, attention_mask, vision, use_cache=True),
            device,
            repeats,
        )
        generate_s, tokens = timed(
            lambda: model.language.generate(
                input_ids,
                attention_mask,
                vision,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=model.tokenizer.pad_token_id,
            ),
            device,
            repeats,
        )
        hidden = model.language.hidden_size
        states = torch.randn(1, hidden, device=device)
        decoders_s, _ = timed(
            lambda: model.decode_targets(states, states, embeddings, image_sizes), device, repeats
        )
    produced = int(tokens.shape[1])
    decode_s = max(generate_s - prefill_s, 1e-9)
    return {
        "prompt_tokens": len(prompt),
        "sam_encoder_s": round(encoder_s, 4),
        "prefill_s": round(prefill_s, 4),
        "generate_s": round(generate_s, 4),
        "new_tokens": produced,
        "decode_tokens_per_s": round((produced - 1) / decode_s, 2) if produced > 1 else None,
        "decoders_s": round(decoders_s, 5),
        "peak_memory_gib": round(peak_gib(device), 3),
    }


def estimate_for(batch_size: int, sequence_length: int, num_image_tokens: int) -> dict[str, Any]:
    """The analytical estimate for one GPU without DeepSpeed buckets (as measured here)."""
    from medisee.model.memory import TrainingSetup, estimate_training_memory

    setup = TrainingSetup(
        gpus=1,
        batch_size=batch_size,
        text_tokens=max(sequence_length - num_image_tokens, 1),
        reduce_bucket_size=1,
        overlap_comm=False,
    )
    estimate = estimate_training_memory(setup=setup)
    data = estimate.as_dict()
    return {
        "total_gib": data["per_gpu_total_gib"],
        "activations_gib": round(estimate.per_gpu["activations"] / 2**30, 2),
        "peak_phase": data["peak_phase"],
        "note": "models DeepSpeed bf16 weights; here trainable weights are fp32 (+4 B/param)",
    }


# ----------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CPU smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype",
        choices=sorted(_DTYPES),
        default=None,
        help="frozen weights / autocast dtype (default: bfloat16 on GPU, float32 on CPU, "
        "where bf16 kernels are slow)",
    )
    parser.add_argument("--batch", type=int, default=15, help="per-device training batch")
    parser.add_argument("--text-tokens", type=int, default=256, help="text tokens per sample")
    parser.add_argument("--steps", type=int, default=3, help="measured training steps")
    parser.add_argument("--new-tokens", type=int, default=64, help="decoded tokens")
    parser.add_argument("--repeats", type=int, default=3, help="timed inference repeats")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON result path")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import transformers

    from medisee.model.builder import parameter_report

    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible to torch")
    dtype = _DTYPES[args.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
    COMPUTE_DTYPE["value"] = dtype
    started = time.perf_counter()
    model = build_full_size(device, args.tiny, dtype)
    report = parameter_report(model)
    build_s = time.perf_counter() - started
    static_gib = round(peak_gib(device), 3)
    print(
        f"built in {build_s:.1f} s: {report.total_trainable:,} trainable, "
        f"{report.total_frozen:,} frozen parameters",
        flush=True,
    )

    train = train_with_fallback(model, device, args.batch, args.text_tokens, args.steps)
    print(f"training: {json.dumps(train)}", flush=True)
    inference = inference_check(model, device, args.new_tokens, args.repeats)
    print(f"inference: {json.dumps(inference)}", flush=True)

    result = {
        "what": "medisee-7b architecture, random weights, one device",
        "tiny": args.tiny,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.machine(),
        "parameters": {"trainable": report.total_trainable, "frozen": report.total_frozen},
        "build_s": round(build_s, 2),
        "memory_after_build_gib": static_gib,
        "train": train,
        "inference": inference,
        "precision": f"frozen weights {str(dtype).removeprefix('torch.')}, trainable fp32, "
        f"{'bf16 autocast' if dtype == torch.bfloat16 else 'no autocast'}, AdamW",
        "memory_note": "torch.cuda.max_memory_allocated on GPU (nvidia-smi shows more: CUDA "
        "context, allocator cache); process max RSS on CPU",
    }
    if not args.tiny and "sequence_length" in train:
        result["estimate"] = estimate_for(
            train["batch_size"], train["sequence_length"], model.language.num_image_tokens
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
