"""Inference latency: image encoder, LM prefill/decode, mask decoder, end to end, a cached
follow-up, batch throughput, and the server's p50/p95 under concurrent clients.

    python benchmarks/bench_inference.py --preset lite      # real LiteMedSAM, random small LM
    python benchmarks/bench_inference.py --preset tiny      # random tiny model (seconds)
    python benchmarks/bench_inference.py --model DIR        # a save_pretrained checkpoint

A random LM neither stops nor emits its candidate tokens on its own, so every answer is
made exactly ``--new-tokens`` long (``min_new_tokens``) and its middle tokens are replaced
by the candidate group after generation: each request pays the real decode of that many
tokens, the re-run over prompt + answer, the routers, box decoder and mask decoder, and
the mapping of the mask back to the original image. The server runs on 127.0.0.1 only.

Results go to ``benchmarks/results/inference_<preset>.json``; a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import platform
import socket
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from host_load import load_average, write_results

QUESTION = "Which organ in this scan filters the blood and sits beside the spine?"
FOLLOW_UP = "What lies just above it?"


# ------------------------------------------------------------------------ helpers
def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock milliseconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
    }


def synthetic_image(height: int, width: int, seed: int) -> np.ndarray:
    """A grey ``H x W x 3`` uint8 image: an ellipse on noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    inside = ((yy - 0.5 * height) / (0.3 * height)) ** 2 + ((xx - 0.4 * width) / (0.2 * width)) ** 2
    gray = rng.integers(0, 80, size=(height, width)) + 150 * (inside < 1)
    return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)


def force_targets(model) -> None:
    """Full-length answers with the candidate group in the middle (see the docstring)."""
    language = model.language
    real = language.generate
    candidates = torch.tensor(model.candidate_token_ids)
    filler = model.tokenizer(" the", add_special_tokens=False).input_ids[-1]

    def generate(input_ids, attention_mask, vision_inputs, **kwargs):
        kwargs["min_new_tokens"] = kwargs["max_new_tokens"]
        out = real(input_ids, attention_mask, vision_inputs, **kwargs).clone()
        special = torch.isin(out, candidates) | (out == model.tokenizer.eos_token_id)
        out[special] = filler
        middle = out.shape[1] // 2
        out[:, middle : middle + len(candidates)] = candidates.to(out.device)
        return out

    language.generate = generate


def build(args: argparse.Namespace):
    from medisee.model.medisee import MediSee, build_model
    from medisee.model.presets import get_preset

    torch.manual_seed(0)
    if args.model:
        model = MediSee.from_pretrained(args.model, map_location=args.device)
        name = Path(args.model).name
    else:
        model = build_model(get_preset(args.preset))
        name = args.preset
    return model.to(args.device).eval(), name


# -------------------------------------------------------------------- components
def bench_components(predictor, args) -> dict[str, Any]:
    model = predictor.model
    device = predictor.device
    size = model.config.mask.image_size
    pixels = torch.rand(1, 3, size, size, device=device)
    results: dict[str, Any] = {}
    results["image_encoder"] = summary(
        timed(lambda: model.embed_images(pixels), args.repeats, warmup=1)
    )
    embedding = model.embed_images(pixels)
    vision = model.vision_inputs(pixels, embedding)
    prompt = predictor.prompt_ids(QUESTION)
    ids = torch.tensor([prompt], device=device)
    mask = torch.ones_like(ids)

    @torch.no_grad()
    def prefill():
        return model.language(ids, mask, vision, use_cache=True)

    results["lm_prefill"] = {**summary(timed(prefill, args.repeats)), "prompt_tokens": len(prompt)}

    @torch.no_grad()
    def decode():
        out = prefill()
        past = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        full_mask = mask
        steps = []
        for _ in range(args.new_tokens):
            full_mask = torch.cat((full_mask, torch.ones_like(token)), dim=1)
            start = time.perf_counter()
            out = model.language(token, full_mask, None, past_key_values=past, use_cache=True)
            steps.append(1000 * (time.perf_counter() - start))
            past = out.past_key_values
            token = out.logits[:, -1:].argmax(-1)
        return steps

    decode()
    steps = [step for _ in range(max(1, args.repeats // 2)) for step in decode()]
    results["lm_decode_per_token"] = summary(steps)
    sizes = torch.tensor([[512, 384]], device=device)
    hidden = model.language.hidden_size
    seg, det = torch.randn(1, hidden, device=device), torch.randn(1, hidden, device=device)

    @torch.no_grad()
    def mask_decoder():
        return model.decode_targets(seg, det, embedding, sizes)

    results["mask_decoder"] = summary(timed(mask_decoder, args.repeats))
    return results


# ------------------------------------------------------------------ end to end
def bench_end_to_end(predictor, args) -> dict[str, Any]:
    results: dict[str, Any] = {}
    images = [synthetic_image(512, 384, seed) for seed in range(args.repeats + 1)]
    first, follow = [], []
    for index, image in enumerate(images):
        start = time.perf_counter()
        state = predictor.set_image(image)
        prediction = predictor.predict(QUESTION)
        middle = time.perf_counter()
        history = [(prediction.question, prediction.raw_text)]
        predictor.predict(FOLLOW_UP, history, image=state)
        end = time.perf_counter()
        if index:  # the first round warms up
            first.append(1000 * (middle - start))
            follow.append(1000 * (end - middle))
        assert prediction.found_target
    results["first_question"] = summary(first)
    results["follow_up_cached_image"] = summary(follow)

    batch = args.batch
    batch_images = [synthetic_image(512, 384, 100 + i) for i in range(batch)]
    predictor.batch_size = batch
    start = time.perf_counter()
    predictor.predict_batch([(image, QUESTION) for image in batch_images])
    batched = time.perf_counter() - start
    start = time.perf_counter()
    for image in batch_images:
        predictor.predict(QUESTION, image=image)
    sequential = time.perf_counter() - start
    results["batch_new_images"] = {
        "batch_size": batch,
        "batched_images_per_s": round(batch / batched, 3),
        "one_by_one_images_per_s": round(batch / sequential, 3),
    }
    from medisee.inference.predictor import PredictRequest

    states = [predictor.prepare(image) for image in batch_images]
    predictor.encode(states)
    requests = [PredictRequest(state, QUESTION) for state in states]
    start = time.perf_counter()
    predictor.run(requests)
    batched = time.perf_counter() - start
    start = time.perf_counter()
    for request in requests:
        predictor.run([request])
    sequential = time.perf_counter() - start
    results["batch_cached_images"] = {
        "batch_size": batch,
        "batched_questions_per_s": round(batch / batched, 3),
        "one_by_one_questions_per_s": round(batch / sequential, 3),
    }
    return results


# ---------------------------------------------------------------------- server
def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def bench_server(predictor, args) -> dict[str, Any]:
    import httpx
    import uvicorn

    from medisee.serve.app import create_app
    from medisee.serve.settings import ServeSettings

    settings = ServeSettings(
        max_new_tokens=args.new_tokens,
        queue_size=max(64, 4 * args.clients),
        max_batch_size=args.batch,
        request_timeout_s=600,
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(predictor, settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"

    async def scenario(kind: str, count: int) -> dict[str, Any]:
        """``count`` requests from ``args.clients`` clients, each in a loop. ``upload``:
        every request a new image. ``follow_up``: each client first opens its own
        conversation (not timed), then asks follow-ups in it (embedding cached)."""
        async with httpx.AsyncClient(base_url=base, timeout=600) as client:
            sessions: list[str] = []
            if kind == "follow_up":
                for index in range(args.clients):
                    data = _png(synthetic_image(512, 384, 500 + index))
                    response = await client.post(
                        "/v1/predict", files={"image": ("a.png", data)}, data={"question": QUESTION}
                    )
                    response.raise_for_status()
                    sessions.append(response.json()["session_id"])
            uploads = [_png(synthetic_image(512, 384, 1000 + i)) for i in range(count)]
            queue: asyncio.Queue[int] = asyncio.Queue()
            for index in range(count):
                queue.put_nowait(index)
            latencies: list[float] = []

            async def one_client(number: int) -> None:
                while not queue.empty():
                    index = queue.get_nowait()
                    start = time.perf_counter()
                    if kind == "follow_up":
                        body = {"question": FOLLOW_UP, "session_id": sessions[number]}
                        response = await client.post("/v1/predict", json=body)
                    else:
                        response = await client.post(
                            "/v1/predict",
                            files={"image": ("x.png", uploads[index])},
                            data={"question": QUESTION},
                        )
                    response.raise_for_status()
                    latencies.append(1000 * (time.perf_counter() - start))

            start = time.perf_counter()
            await asyncio.gather(*(one_client(n) for n in range(args.clients)))
            elapsed = time.perf_counter() - start
            return {
                **summary(latencies),
                "clients": args.clients,
                "requests_per_s": round(count / elapsed, 3),
            }

    try:
        results = {
            "server_upload": asyncio.run(scenario("upload", args.server_requests)),
            "server_follow_up": asyncio.run(scenario("follow_up", args.server_requests)),
        }
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    return results


# ------------------------------------------------------------------------ report
ROWS = [
    ("image_encoder", "image encoder (1 image)"),
    ("lm_prefill", "LM prefill (prompt)"),
    ("lm_decode_per_token", "LM decode, per token"),
    ("mask_decoder", "box + mask decoder"),
    ("first_question", "first question (encode + answer)"),
    ("follow_up_cached_image", "follow-up, cached image"),
    ("server_upload", "server: upload + question"),
    ("server_follow_up", "server: follow-up in own session"),
]


def markdown(results: dict[str, Any]) -> str:
    lines = ["| stage | p50 ms | p95 ms | n |", "|---|---:|---:|---:|"]
    for key, label in ROWS:
        row = results.get(key)
        if row:
            extra = ""
            if key == "lm_prefill":
                extra = f" ({row['prompt_tokens']} tokens)"
            if key.startswith("server"):
                extra = f" ({row['clients']} clients, {row['requests_per_s']} req/s)"
            lines.append(f"| {label}{extra} | {row['p50_ms']} | {row['p95_ms']} | {row['n']} |")
    for key in ("batch_new_images", "batch_cached_images"):
        row = results.get(key)
        if row:
            values = ", ".join(f"{k} {v}" for k, v in row.items())
            lines.append(f"| {key.replace('_', ' ')} | {values} | | |")
    return "\n".join(lines)


def main() -> None:
    from medisee.inference.predictor import GenerationOptions, Predictor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default="lite", help="tiny | lite (random LM) | ...")
    source.add_argument("--model", default=None, help="a save_pretrained checkpoint directory")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32, help="answer length")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--clients", type=int, default=4, help="concurrent server clients")
    parser.add_argument("--server-requests", type=int, default=12, help="per server scenario")
    parser.add_argument("--no-server", action="store_true")
    parser.add_argument(
        "--out", default=None, help="JSON path (default: results/inference_<name>.json)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, name = build(args)
    force_targets(model)
    predictor = Predictor(model, GenerationOptions(max_new_tokens=args.new_tokens), args.batch)
    results: dict[str, Any] = {
        "model": name,
        "device": str(predictor.device),
        "torch_threads": torch.get_num_threads(),
        "new_tokens": args.new_tokens,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        # The machine may be shared: the 1-minute load average says how much.
        "load_average_start": load_average(),
    }
    results.update(bench_components(predictor, args))
    results.update(bench_end_to_end(predictor, args))
    if not args.no_server:
        results.update(bench_server(predictor, args))
    out = (
        Path(args.out) if args.out else Path(__file__).parent / "results" / f"inference_{name}.json"
    )
    write_results(results, out, markdown)


if __name__ == "__main__":
    main()
