"""A stand-in for an OpenAI-compatible ``/v1/chat/completions`` server, for tests.

It listens on 127.0.0.1 only, answers the medisee pipeline's stages deterministically
from the JSON block in the prompt, and can be told to fail (429/500), hang, reply with
garbage, or leak the label into a question.

Structured output: ``accepts`` names the ``response_format`` forms it takes (the others get
``refuse_status``), as a real server of each kind would:

- :data:`OPENAI` ``json_schema`` and plain ``json_object`` (a ``schema`` key is refused);
- :data:`LLAMA_CPP_PYTHON` ``json_object`` with or without ``schema`` (``json_schema`` is
  refused, as llama-cpp-python 0.3 does);
- :data:`NO_FORMAT` no ``response_format`` at all.

Without a ``response_format`` it answers in prose around a fenced JSON block (with a stray
``{...}`` before it), as chat models do.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MARKER = "INPUT JSON:\n"
ALL_FORMS = frozenset({"json_schema", "json_object+schema", "json_object", "none"})
OPENAI = frozenset({"json_schema", "json_object", "none"})
LLAMA_CPP_PYTHON = frozenset({"json_object+schema", "json_object", "none"})
NO_FORMAT = frozenset({"none"})


def request_form(body: dict[str, Any]) -> str:
    """Which structured-output form a request body uses."""
    form = body.get("response_format")
    if form is None:
        return "none"
    if form.get("type") == "json_schema":
        return "json_schema"
    return "json_object+schema" if "schema" in form else "json_object"


class FakeLLM:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.plan: list[str] = []  # actions for the next requests: "429", "500", "hang", "body"
        self.delay = 0.0
        self.hang_seconds = 2.0
        self.garbage_stages: set[str] = set()  # first reply of these stages is not JSON
        self.leak = False  # transform adds a question that names the label
        self.revised = 0  # rejected questions sent back to be rewritten
        self.accepts: frozenset[str] = ALL_FORMS
        self.refuse_status = 400
        self.forms: Counter[str] = Counter()  # served requests by form
        self.schemas: dict[str, dict[str, Any]] = {}  # last schema sent per stage
        self.question_patterns: dict[str, set[str]] = {}  # every question pattern per stage
        self.probes = 0
        self.requests: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ server
    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                status, payload, headers = fake.handle(self.path, body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # ------------------------------------------------------------------ logic
    def handle(self, path: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if not path.endswith("/chat/completions"):
            return 404, {"error": "not found"}, {}
        with self.lock:
            action = self.plan.pop(0) if self.plan else "ok"
        if self.delay:
            time.sleep(self.delay)
        if action == "429":
            return self._count(429, {"error": "rate limited"}, {"Retry-After": "0"})
        if action == "500":
            return self._count(500, {"error": "boom"}, {})
        if action == "hang":
            time.sleep(self.hang_seconds)
        if action == "body":
            return self._count(200, b"<html>proxy error</html>", {})
        form = request_form(body)
        if form not in self.accepts:
            detail = {"error": {"message": f"response_format {form} is not supported"}}
            return self._count(self.refuse_status, detail, {})
        messages = body.get("messages", [])
        if any("Is the liver an organ?" in str(m.get("content")) for m in messages):
            with self.lock:
                self.probes += 1
            content = '{"answer": "yes"}' if form != "none" else "Yes, the liver is an organ."
            return self._count(200, _reply(content), {})
        stage, content = self.respond(messages)
        if form == "none" and content.startswith("{"):
            content = (
                "Sure! Here is the answer {as requested}:\n```json\n"
                + content
                + "\n```\nLet me know if you need more {or fewer} items."
            )
        with self.lock:
            self.requests[stage] += 1
            self.forms[form] += 1
            rf = body.get("response_format") or {}
            schema = rf.get("schema") or rf.get("json_schema", {}).get("schema")
            if schema is not None:
                self.schemas[stage] = schema
                items = schema.get("properties", {}).get("items", {})
                question = items.get("items", {}).get("properties", {}).get("question")
                if question is not None:
                    self.question_patterns.setdefault(stage, set()).add(question["pattern"])
        return self._count(200, _reply(content), {})

    def _count(
        self, status: int, payload: Any, headers: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        with self.lock:
            self.statuses[status] += 1
        return status, payload, headers

    def respond(self, messages: list[dict[str, Any]]) -> tuple[str, str]:
        user = [m for m in messages if m.get("role") == "user"]
        if user and isinstance(user[0].get("content"), list):
            return "caption", "An axial medical image with several soft-tissue structures."
        data = None
        for message in user:
            content = message.get("content", "")
            if isinstance(content, str) and MARKER in content:
                data = json.loads(content.split(MARKER, 1)[1])
                break
        if data is None:
            return "unknown", "I do not understand."
        stage = data["stage"]
        corrections = sum(
            1 for m in user if str(m.get("content", "")).startswith("Your reply was not valid")
        )
        if stage in self.garbage_stages and corrections == 0:
            return stage, "Sure! Here are some thoughts, but no JSON, sorry."
        label = data["label"]
        if stage == "describe":
            x0, y0, x1, y1 = data["box_xyxy"]
            where = f"centred near x={(x0 + x1) // 2}, y={(y0 + y1) // 2}"
            return stage, json.dumps(
                {
                    "attribute": {
                        "short": f"the object with the area of {(x1 - x0) * (y1 - y0)} box pixels, {where}",
                        "long": f"the object that occupies a box of {x1 - x0} by {y1 - y0} pixels, {where}; its appearance differs from its neighbours",
                    },
                    "location": {
                        "short": f"the object {where}",
                        "long": f"the object {where}, among {len(data['other_objects'])} other annotated objects",
                    },
                }
            )
        if stage == "evaluate":
            return stage, "```json\n" + json.dumps(data["descriptions"]) + "\n```"
        if stage == "transform":
            items = []
            for perspective, block in sorted(data["descriptions"].items()):
                for length, text in sorted(block.items()):
                    items.append(
                        {
                            "perspective": perspective,
                            "length": length,
                            "question": f"Which structure is {text}?",
                            "answer": f"It is the {label}.",
                            "explanation": f"The {label} is {text}.",
                        }
                    )
            if self.leak:
                items.append(
                    {
                        "perspective": "attribute",
                        "length": "short",
                        "question": f"Where is the {label}?",
                        "answer": f"It is the {label}.",
                        "explanation": "direct",
                    }
                )
            return stage, json.dumps({"items": items})
        if stage == "extra":
            n = int(data.get("n", 1))
            items = [
                {
                    "perspective": "location",
                    "length": "short",
                    "question": f"Which object is number {i + 1} of the extra set, near box "
                    + ", ".join(str(v) for v in data["box_xyxy"])
                    + "?",
                    "answer": f"The {label}.",
                    "explanation": "It matches the box.",
                }
                for i in range(n)
            ]
            return stage, json.dumps({"items": items})
        if stage == "revise":
            self.revised += len(data["rejected"])
            items = [
                {
                    "perspective": entry["perspective"],
                    "length": entry["length"],
                    "question": f"Which object is rewrite {i + 1}, near box "
                    + ", ".join(str(v) for v in data["box_xyxy"])
                    + "?",
                    "answer": f"The {label}.",
                    "explanation": f"It was rejected as {entry['reason']}; it matches the box.",
                }
                for i, entry in enumerate(data["rejected"])
            ]
            return stage, json.dumps({"items": items})
        return stage, "{}"


def _reply(content: str) -> dict[str, Any]:
    return {
        "id": "fake",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
    }
