"""Server reliability: a burst of concurrent clients through ``medisee.client``, and a soak.

    python benchmarks/bench_serve.py                  # tiny model (about a minute on 2 cores)
    python benchmarks/bench_serve.py --preset lite    # real LiteMedSAM, random small LM (long)

The server runs in a child process (``uvicorn`` on 127.0.0.1, an ephemeral port) so that
its memory is measured alone; the clients are ``medisee.client.AsyncClient`` instances,
which retry a shed request (503) after the server's ``Retry-After`` plus jitter. Answers
are made full length with the candidate group in the middle, as in
``bench_inference.py``, so each one pays for the decode, the mask decoder and the mapping
back to the image (with the tiny model the figures are the server's own costs).

* **single**: one client alone, ``--single`` pairs (upload + follow-up), the baseline.
* **load**: ``--clients`` clients at once, each an upload then a follow-up in its session;
  per-request latency (retry waits included) p50/p95, the 503s retried, throughput.
  The server has its default limits (queue 32, batches of 4).
* **soak**: ``--soak-requests`` requests across ``--soak-sessions`` conversations (an upload
  then follow-ups), ``--soak-parallel`` at a time, on a server that keeps ``--store``
  sessions. The server's RSS after the first 50 and after the last 50 requests; then one
  follow-up per session: those evicted must answer 410, the ``--store`` most recent 200.

Results go to ``benchmarks/results/bench_serve.json``; a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from host_load import load_average, write_results

QUESTION = "Which organ in this scan filters the blood and sits beside the spine?"
FOLLOW_UP = "What lies just above it?"
HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------- the server
def serve(args: argparse.Namespace) -> None:
    """Child process: build the model, bind 127.0.0.1:0, print the port, serve. The
    allocator is set up as ``medisee serve`` sets up its own (``medisee.allocator``)."""
    import socket

    import torch
    import uvicorn

    from medisee.allocator import tune_from_environment

    tuned = tune_from_environment()

    sys.path.insert(0, str(HERE))
    from bench_inference import build, force_targets

    from medisee.inference.predictor import GenerationOptions, Predictor
    from medisee.serve.app import create_app
    from medisee.serve.settings import ServeSettings

    torch.set_num_threads(args.threads)
    model, _ = build(argparse.Namespace(model=None, preset=args.preset, device="cpu"))
    force_targets(model)
    clean_replies(model)
    predictor = Predictor(model, GenerationOptions(max_new_tokens=args.new_tokens), 4)
    settings = ServeSettings(
        max_sessions=args.store,
        max_new_tokens=args.new_tokens,
        request_timeout_s=args.timeout,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    print(f"PORT {sock.getsockname()[1]} TUNED {int(tuned)}", flush=True)
    config = uvicorn.Config(create_app(predictor, settings), log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


def clean_replies(model) -> None:
    """No special token but the candidates in a forced reply.

    A random LM may emit the image token; the follow-up turn, whose history holds that
    reply, then has one image token too many and fails. A trained model is not expected to
    emit it, so the benchmark keeps such tokens out of the replies it forces.
    """
    import torch

    forced = model.language.generate
    candidates = torch.tensor(model.candidate_token_ids)
    tokenizer = model.tokenizer
    special = torch.tensor(sorted(set(tokenizer.all_special_ids) - set(candidates.tolist())))
    filler = tokenizer(" the", add_special_tokens=False).input_ids[-1]

    def generate(input_ids, attention_mask, vision_inputs, **kwargs):
        out = forced(input_ids, attention_mask, vision_inputs, **kwargs).clone()
        out[torch.isin(out, special.to(out.device))] = filler
        return out

    model.language.generate = generate


class Server:
    """The child server process: started, its port read, its RSS sampled, stopped."""

    def __init__(self, args: argparse.Namespace, store: int) -> None:
        command = [sys.executable, __file__, "--serve", "--preset", args.preset,
                   "--new-tokens", str(args.new_tokens), "--threads", str(args.threads),
                   "--store", str(store), "--timeout", str(args.timeout)]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line.startswith("PORT "):
            self.process.kill()
            raise RuntimeError(f"the server did not start: {line!r}")
        words = line.split()
        self.url = f"http://127.0.0.1:{int(words[1])}"
        #: whether the server process keeps freed memory mapped (``medisee.allocator``)
        self.allocator_tuned = words[2:4] == ["TUNED", "1"]

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/statm") as handle:
            pages = int(handle.read().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)

    async def ready(self, client, limit_s: float = 300) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            try:
                if (await client.health())["status"] == "ok":
                    return
            except Exception:  # not listening yet
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError("the server did not become ready")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


# ------------------------------------------------------------------------ helpers
def percentiles(values_ms: list[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(p95, 1),
        "max_ms": round(ordered[-1], 1),
    }


def image_bytes(seed: int, height: int, width: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    inside = ((yy - 0.5 * height) / (0.3 * height)) ** 2 + ((xx - 0.4 * width) / (0.2 * width)) ** 2
    gray = (rng.integers(0, 80, size=(height, width)) + 150 * (inside < 1)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG")
    return buffer.getvalue()


class Timed:
    """A client whose requests are timed (retry waits included)."""

    def __init__(self, client) -> None:
        self.client = client
        self.times: dict[str, list[float]] = {"upload": [], "follow_up": []}

    async def ask(self, question: str, *, image: bytes | None = None, session: str | None = None):
        start = time.perf_counter()
        answer = await self.client.predict(question, image=image, session_id=session)
        kind = "upload" if image is not None else "follow_up"
        self.times[kind].append(1000 * (time.perf_counter() - start))
        return answer


# ------------------------------------------------------------------------ phases
async def single_and_load(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    from medisee.client import AsyncClient, RetryPolicy

    size = (args.height, args.width)
    retry = RetryPolicy(deadline_s=args.timeout)
    async with AsyncClient(server.url, timeout=args.timeout) as probe:
        await server.ready(probe)
        alone = Timed(probe)
        for index in range(args.single + 1):
            first = await alone.ask(QUESTION, image=image_bytes(10_000 + index, *size))
            await alone.ask(FOLLOW_UP, session=first["session_id"])
        for kind in alone.times:  # the first pair warms up
            alone.times[kind] = alone.times[kind][1:]

    images = [image_bytes(index, *size) for index in range(args.clients)]
    clients = [
        AsyncClient(server.url, timeout=args.timeout, retry=retry, seed=n)
        for n in range(args.clients)
    ]
    timed = [Timed(client) for client in clients]

    async def one(number: int) -> bool:
        first = await timed[number].ask(f"{QUESTION} ({number})", image=images[number])
        second = await timed[number].ask(FOLLOW_UP, session=first["session_id"])
        return second["turn"] == 2 and second["session_id"] == first["session_id"]

    rss_before = server.rss_mb()
    start = time.perf_counter()
    try:
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(one(n) for n in range(args.clients)), return_exceptions=True),
            args.timeout * 4,
        )
    finally:
        await asyncio.gather(*(client.close() for client in clients))
    elapsed = time.perf_counter() - start
    uploads = [t for c in timed for t in c.times["upload"]]
    follow_ups = [t for c in timed for t in c.times["follow_up"]]
    answered = len(uploads) + len(follow_ups)
    failures = [repr(o) for o in outcomes if o is not True]
    return {
        "single": {
            "upload": percentiles(alone.times["upload"]),
            "follow_up": percentiles(alone.times["follow_up"]),
        },
        "load": {
            "clients": args.clients,
            "requests": 2 * args.clients,
            "answered": answered,
            "clients_with_both_answers": sum(o is True for o in outcomes),
            "failures": failures[:5],
            "retries_503": sum(c.retries for c in clients),
            "wall_s": round(elapsed, 2),
            "requests_per_s": round(answered / elapsed, 2),
            "upload": percentiles(uploads),
            "follow_up": percentiles(follow_ups),
            "all": percentiles(uploads + follow_ups),
            "server_rss_mb": {"before": rss_before, "after": server.rss_mb()},
        },
    }


async def soak(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    from medisee.client import AsyncClient, RetryPolicy, ServerError

    sessions = args.soak_sessions
    follow_ups = args.soak_requests // sessions - 1
    size = (args.height, args.width)
    early = min(50, args.soak_requests // 2)  # RSS after this many requests and at the end
    rss: dict[str, float] = {"early_at_request": early}
    series: list[tuple[int, float]] = []
    done = 0
    pending = list(range(sessions))
    order: list[str] = [""] * sessions
    retry = RetryPolicy(deadline_s=args.timeout)

    async with AsyncClient(server.url, timeout=args.timeout, retry=retry) as client:
        await server.ready(client)
        timed = Timed(client)

        def counted() -> None:
            nonlocal done
            done += 1
            if done % 25 == 0:
                series.append((done, server.rss_mb()))
            if done == early:
                rss["early_mb"] = server.rss_mb()

        async def worker() -> None:
            while pending:
                number = pending.pop(0)
                image = image_bytes(20_000 + number, *size)
                first = await timed.ask(f"{QUESTION} ({number})", image=image)
                counted()
                order[number] = first["session_id"]
                for turn in range(follow_ups):
                    answer = await timed.ask(f"Turn {turn}?", session=first["session_id"])
                    if answer["turn"] != turn + 2:
                        raise RuntimeError(f"session {number}: turn {answer['turn']}")
                    counted()

        start = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(worker() for _ in range(args.soak_parallel))), args.timeout * 20
        )
        elapsed = time.perf_counter() - start
        rss["end_at_request"] = done
        rss["end_mb"] = server.rss_mb()
        # One more question in each conversation: evicted ones answer 410.
        statuses: dict[str, int] = {}
        details = set()
        for session_id in order:
            try:
                await client.predict("Still there?", session_id=session_id)
                statuses["200"] = statuses.get("200", 0) + 1
            except ServerError as error:
                statuses[str(error.status)] = statuses.get(str(error.status), 0) + 1
                details.add(error.detail)
        health = await client.health()
    growth = rss["end_mb"] / rss["early_mb"] - 1
    return {
        "soak": {
            "sessions": sessions,
            "requests": sessions * (1 + follow_ups),
            "answered": done,
            "parallel": args.soak_parallel,
            "store": args.store,
            "wall_s": round(elapsed, 2),
            "requests_per_s": round(done / elapsed, 2),
            "upload": percentiles(timed.times["upload"]),
            "follow_up": percentiles(timed.times["follow_up"]),
            "all": percentiles(timed.times["upload"] + timed.times["follow_up"]),
            "server_rss": rss,
            "rss_growth": round(growth, 4),
            "rss_series": series,
            "after_soak_follow_up_statuses": statuses,
            "after_soak_details": sorted(details),
            "sessions_held": health["sessions"],
            "queue_depth_after": health["queue_depth"],
        }
    }


# ------------------------------------------------------------------------ report
def markdown(results: dict[str, Any]) -> str:
    """The table of ``docs/serving.md``."""
    load, soaked, single = results["load"], results["soak"], results["single"]

    def row(label: str, figures: dict[str, float], rate: Any = "") -> str:
        return (
            f"| {label} | {figures['n']} | {figures['p50_ms']:.0f} | {figures['p95_ms']:.0f} "
            f"| {figures['max_ms']:.0f} | {rate} |"
        )

    clients = load["clients"]
    soak_label = f"soak ({soaked['sessions']} sessions, {soaked['parallel']} at a time)"
    lines = [
        "| run | requests answered | p50 ms | p95 ms | max ms | req/s |",
        "|---|---:|---:|---:|---:|---:|",
        row("one client alone: upload + question", single["upload"]),
        row("one client alone: follow-up", single["follow_up"]),
        row(f"{clients} clients at once: upload + question", load["upload"]),
        row(f"{clients} clients at once: follow-up", load["follow_up"]),
        row(f"{clients} clients at once: all", load["all"], load["requests_per_s"]),
        row(f"{soak_label}: upload", soaked["upload"]),
        row(f"{soak_label}: follow-up", soaked["follow_up"]),
        row(f"{soak_label}: all", soaked["all"], soaked["requests_per_s"]),
    ]
    rss = soaked["server_rss"]
    lines += [
        "",
        f"Load: {load['answered']} of {load['requests']} answered in {load['wall_s']} s, "
        f"{load['retries_503']} retries after a 503.",
        f"Soak: {soaked['answered']} of {soaked['requests']} answered in {soaked['wall_s']} s; "
        f"server RSS {rss['early_mb']} MB after request {rss['early_at_request']}, "
        f"{rss['end_mb']} MB after request {rss['end_at_request']} "
        f"({100 * soaked['rss_growth']:+.1f} %); then one follow-up per session: "
        f"{soaked['after_soak_follow_up_statuses']}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="tiny | lite (random LM) | ...")
    parser.add_argument("--new-tokens", type=int, default=16, help="answer length")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--single", type=int, default=10, help="pairs timed alone")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--soak-requests", type=int, default=300)
    parser.add_argument("--soak-sessions", type=int, default=30)
    parser.add_argument("--soak-parallel", type=int, default=6)
    parser.add_argument("--store", type=int, default=8, help="sessions the soak server keeps")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--out", default=str(HERE / "results" / "bench_serve.json"))
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    if args.soak_parallel > args.store:
        parser.error("--soak-parallel must be <= --store (live sessions would be evicted)")

    import torch

    results: dict[str, Any] = {
        "command": shlex.join(["python", "benchmarks/bench_serve.py", *sys.argv[1:]]),
        "model": args.preset,
        "new_tokens": args.new_tokens,
        "server_torch_threads": args.threads,
        "image": [args.height, args.width],
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "load_average_start": load_average(),
    }
    server = Server(args, store=64)
    results["server_allocator_tuned"] = server.allocator_tuned
    try:
        results.update(asyncio.run(single_and_load(args, server)))
    finally:
        server.stop()
    server = Server(args, store=args.store)
    try:
        results.update(asyncio.run(soak(args, server)))
    finally:
        server.stop()
    write_results(results, Path(args.out), markdown)


if __name__ == "__main__":
    main()
