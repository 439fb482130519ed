"""The MLMR-SD question-generation pipeline against any OpenAI-compatible chat endpoint.

Per target (one *job*), following the paper's Fig. 3:

1. optional **caption** of the image by a vision-language model (``caption_model``);
2. the **describer** gets caption, label, box, modality and the other objects and writes
   attribute- and location-oriented descriptions, short and long; the label is
   authoritative where the caption disagrees;
3. the **evaluator** revises weak descriptions (too direct, no logic) or drops them;
4. **transform** turns each kept description into question + answer + explanation;
5. a second prompt asks for ``extra_pairs`` more, different, pairs;
6. **revise**: the questions rejected by the checks below for a reason the model can fix
   (the label or a synonym leaked, off-topic, no referent noun, not a question, too
   short) go back once, each with its reason and the forbidden words, to be rewritten;
   the rewrites pass the same checks (``revise_rounds``, default 1; 0 turns it off).

Replies must be JSON. Every stage but the caption sends the JSON schema of its reply in
the server's *dialect* of structured output (:data:`DIALECTS`): OpenAI's ``json_schema``
(also vLLM and llama.cpp's ``llama-server``), ``json_object`` with a ``schema`` key
(llama-cpp-python), plain ``json_object``, or nothing, in which case the first JSON object
is extracted from the text. ``structured="auto"`` finds the dialect once per run with a
small probe request per form (a refused form falls back to the next); the
outcome is kept in the cache directory, so a rerun sends no probe. A malformed reply (not
JSON, fields missing or of the wrong type) is answered with a correction request up to
``max_attempts`` times, then the stage fails.

The question stages also get the target's ontology facts in words; their schema fixes
the answer ("The <label>."), makes the question start "Which <referent noun>" and bans
from it every word that starts with one of the label's forbidden words
(:func:`question_pattern`): a server that decodes under the schema cannot write the
label, whatever its tokens. Accepted items pass :func:`item_problem`: a reasoning
question must not contain the label, its synonyms, category name or adjectives (the check
the template engine applies), must be a question of at least :data:`MIN_QUESTION_WORDS`
words that refers to the target by a generic noun and is grounded in its position or its
ontology entry, and the answer must name the target; a question accepted for two targets
of one image is dropped from both. Every rejection is counted per reason.

Engineering: requests run on a thread pool of ``workers``; HTTP 429/5xx, timeouts and
connection errors are retried with exponential back-off and jitter (``Retry-After`` is
honoured); every successful reply is cached on disk under the SHA-256 of the request
(atomic writes), and every finished job is appended to ``journal.jsonl`` in the cache
directory (one line, flushed and fsynced). A killed run resumes: finished jobs are read
back from the journal (a torn last line is truncated away), unfinished ones re-run and
hit the cache for the stages they had completed. The output manifest is written once,
atomically, at the end, so nothing is lost or duplicated. Run one generator per cache
directory at a time.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medisee.checks import check_choice
from medisee.data.ontology import KIND_NOUNS, Ontology, term_pattern
from medisee.data.qa_template import MODALITY_NOUNS
from medisee.data.schema import LENGTHS, PERSPECTIVES, QAItem, Record
from medisee.data.writer import atomic_write_text

log = logging.getLogger(__name__)

#: Bump when prompts change: it is part of every job key, so old journal lines no longer match.
PROMPT_VERSION = "mlmr-7"
JOURNAL_NAME = "journal.jsonl"
DIALECT_NAME = "dialect.json"

#: Forms of structured output, in the order ``structured="auto"`` tries them.
DIALECTS = ("json_schema", "json_object+schema", "json_object", "none")
#: What ``LLMConfig.structured`` accepts: ``json_object`` tries the form with a schema first.
STRUCTURED_MODES = ("auto", "json_schema", "json_object", "none")
_MODE_CANDIDATES = {
    "auto": DIALECTS,
    "json_schema": ("json_schema",),
    "json_object": ("json_object+schema", "json_object"),
    "none": ("none",),
}


class LLMError(RuntimeError):
    """A request that failed for good (bad status, retries exhausted)."""


class TransientLLMError(LLMError):
    """Retries exhausted on 429/5xx/timeouts: worth running again later."""


class RefusedError(LLMError):
    """The server rejects the request as such (HTTP 400/422, or a 5xx naming the
    ``response_format``): retrying would not help."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


class ReplyError(ValueError):
    """A reply that does not follow the requested format; ``reason`` names the problem."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class LLMConfig:
    """Endpoint and pipeline settings. ``endpoint`` is the API base (``.../v1``) or the full
    ``.../chat/completions`` URL."""

    endpoint: str
    model: str
    api_key: str | None = None
    caption_model: str | None = None
    temperature: float = 0.2
    max_tokens: int = 1024
    timeout: float = 60.0
    max_retries: int = 5
    backoff: float = 1.0
    backoff_max: float = 30.0
    workers: int = 4
    extra_pairs: int = 2
    max_attempts: int = 2
    revise_rounds: int = 1
    structured: str = "auto"
    seed: int | None = 0

    def __post_init__(self) -> None:
        check_choice("structured", self.structured, STRUCTURED_MODES)
        if not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must be an http(s) URL, got {self.endpoint!r}")
        if not self.model:
            raise ValueError("model must not be empty")
        if self.workers < 1 or self.max_retries < 0 or self.max_attempts < 1:
            raise ValueError("workers >= 1, max_retries >= 0 and max_attempts >= 1 are required")
        if self.backoff < 0 or self.timeout <= 0 or self.extra_pairs < 0:
            raise ValueError("backoff >= 0, timeout > 0 and extra_pairs >= 0 are required")
        if self.revise_rounds < 0:
            raise ValueError(f"revise_rounds must be >= 0, got {self.revise_rounds}")

    @property
    def url(self) -> str:
        base = self.endpoint.rstrip("/")
        return base if base.endswith("/chat/completions") else f"{base}/chat/completions"


def _is_refusal(status: int, text: str, payload: dict[str, Any]) -> bool:
    """HTTP 400/422, or a 5xx whose body names the ``response_format`` we sent
    (llama-cpp-python 0.3 answers an unknown form with a 500 wrapping the validation
    error): not worth retrying."""
    if status in (400, 422):
        return True
    return status >= 500 and "response_format" in payload and "response_format" in text


class ChatClient:
    """``POST /chat/completions`` with retries and an on-disk cache keyed by the request."""

    def __init__(self, config: LLMConfig, cache_dir: str | os.PathLike[str]) -> None:
        import httpx

        self.config = config
        self.cache_dir = Path(cache_dir) / "responses"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        headers = {"Content-Type": "application/json"}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        self._http = httpx.Client(timeout=config.timeout, headers=headers)
        self._lock = threading.Lock()
        self._random = random.Random()
        self.stats: Counter[str] = Counter()

    def close(self) -> None:
        self._http.close()

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def request_key(self, payload: dict[str, Any]) -> str:
        return hashlib.sha256(
            json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
        ).hexdigest()

    def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        response_format: dict[str, Any] | None = None,
        max_tokens: int | None = None,
    ) -> str:
        """The assistant's reply text (from the cache if this exact request was made before).

        Raises:
            RefusedError: HTTP 400/422 or a 5xx naming ``response_format`` (not retried).
            TransientLLMError: retries exhausted on 429/5xx/timeouts.
        """
        payload: dict[str, Any] = {
            "model": model or self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": max_tokens or self.config.max_tokens,
        }
        # ``seed`` and ``response_format`` only when set.
        if self.config.seed is not None:
            payload["seed"] = self.config.seed
        if response_format is not None:
            payload["response_format"] = response_format
        key = self.request_key(payload)
        path = self.cache_dir / key[:2] / f"{key}.json"
        if path.exists():
            try:
                cached = json.loads(path.read_text("utf-8"))
                self._count("cache hits")
                return str(cached["content"])
            except (json.JSONDecodeError, KeyError, OSError):
                self._count("corrupt cache entries")
        content = self._post(payload)
        atomic_write_text(
            path, json.dumps({"key": key, "model": payload["model"], "content": content})
        )
        return content

    def _post(self, payload: dict[str, Any]) -> str:
        import httpx

        config = self.config
        last = ""
        for attempt in range(config.max_retries + 1):
            if attempt:
                self._count("retries")
            retry_after: float | None = None
            try:
                response = self._http.post(config.url, json=payload)
            except httpx.TimeoutException as error:
                last = f"timeout: {error}"
                self._count("timeouts")
            except httpx.TransportError as error:
                last = f"connection error: {error}"
                self._count("connection errors")
            else:
                self._count("requests")
                status = response.status_code
                if _is_refusal(status, response.text, payload):
                    self._count(f"HTTP {status}")
                    raise RefusedError(status, f"{config.url}: {response.text[:300]}")
                if status == 429 or status >= 500:
                    last = f"HTTP {status}"
                    self._count(f"HTTP {status}")
                    header = response.headers.get("Retry-After")
                    if header:
                        try:
                            retry_after = float(header)
                        except ValueError:
                            retry_after = None
                elif status >= 400:
                    self._count(f"HTTP {status}")
                    raise LLMError(f"HTTP {status} from {config.url}: {response.text[:300]}")
                else:
                    try:
                        return str(response.json()["choices"][0]["message"]["content"])
                    except (ValueError, KeyError, IndexError, TypeError) as error:
                        # A 200 with an unusable body: a proxy or server glitch; retry.
                        last = f"bad response body: {error}"
                        self._count("bad response bodies")
            if attempt < config.max_retries:
                delay = min(config.backoff_max, config.backoff * (2**attempt))
                delay *= 0.5 + 0.5 * self._random.random()  # jitter: spread synchronized retries
                if retry_after is not None:
                    delay = min(config.backoff_max, max(delay, retry_after))
                time.sleep(delay)
        raise TransientLLMError(f"gave up after {config.max_retries + 1} attempts: {last}")


# ---------------------------------------------------------------------- prompts
SYSTEM_CAPTION = (
    "You are a radiology assistant. Describe the medical image briefly in one or two "
    "sentences: modality, body region and the main visible structures. State only what "
    "you are sure of; do not guess diagnoses."
)
SYSTEM_DESCRIBE = (
    "You write training data for medical reasoning segmentation. You cannot see the image; "
    "you get its modality, a short caption, and the label, bounding box and neighbours of one "
    "target object, as if you could see it. The label is authoritative: if the caption "
    "disagrees with it, trust the label. Write descriptions that identify the target without "
    "naming it or any synonym:\n"
    "- attribute-oriented: through its function, composition, appearance on this modality or "
    "diseases that affect it, distinguishing it from the other objects;\n"
    "- location-oriented: through its position in the image and relative to the other objects "
    "(image left/right as given; patient sides only when the display convention is given).\n"
    "For each perspective give a short (one clause) and a long (two or three sentences, with a "
    "chain of reasoning) description. Reply with JSON only: an object with the keys "
    '"attribute" and "location", each an object with the keys "short" and "long" whose '
    "values are the descriptions."
)
SYSTEM_EVALUATE = (
    "You review descriptions written to identify a medical object without naming it. Revise a "
    "description that is too direct (names or all but names the object), too simple, or "
    "lacks a clear logical path to the object; replace it with null if it cannot be fixed. "
    "Keep good ones unchanged. Reply with JSON only, in the shape of the input descriptions: "
    'the keys "attribute" and "location", each with "short" and "long" (a description or '
    "null)."
)
_ITEMS_SHAPE = (
    'Reply with JSON only: an object with the key "items", a list of objects with the keys '
    '"perspective" ("attribute" or "location"), "length" ("short" or "long"), "question", '
    '"answer" and "explanation".'
)
SYSTEM_TRANSFORM = (
    "Turn each description into a question a non-expert could ask about the image, whose "
    "answer is the labelled object. The question must not name the object or any synonym. "
    "The answer names the object; the explanation gives the reasoning from the description "
    "to the object in one or two sentences. One item per description. " + _ITEMS_SHAPE
)
SYSTEM_REVISE = (
    "Some questions about the labelled object were rejected; each comes with the reason. "
    "Rewrite each one so that it follows the rules: it is a question a non-expert could ask "
    "about the image, it refers to the object by a generic word (structure, organ, region, "
    "area, tissue, lesion), it never uses any of the forbidden words, and it points to the "
    "object through its function, appearance or position, using the facts given. Keep the "
    "answer and give an explanation. " + _ITEMS_SHAPE
)
#: Rejection reasons a rewrite can fix (the others are about the answer or duplicates).
REVISABLE = frozenset(
    {"label leaked", "off-topic", "no referent noun", "not a question", "too short"}
)
SYSTEM_EXTRA = (
    "Write additional question-answer pairs about the labelled object that differ from the "
    "existing questions in wording and reasoning. Same rules: the question must not name the "
    "object or a synonym; the answer names it; add an explanation. " + _ITEMS_SHAPE
)


# ---------------------------------------------------------------------- structured output
#: A non-empty string. No ``maxLength``: llama.cpp turns a bounded string into one nested
#: optional rule per character, which slows constrained decoding; ``max_tokens`` bounds
#: the reply instead. The ``json_schema`` dialect drops ``minLength`` too (OpenAI's strict
#: mode refuses it).
TEXT: dict[str, Any] = {"type": "string", "minLength": 1}
#: Generic nouns by which a reasoning question refers to its unnamed target.
REFERENT_NOUNS = (
    "structure",
    "organ",
    "region",
    "tissue",
    "part",
    "area",
    "vessel",
    "bone",
    "chamber",
    "abnormality",
    "lesion",
    "object",
)


def _noun_forms(noun: str) -> str:
    """``noun`` or its plural, as a regex: "organs?", "abnormalit(y|ies)"."""
    return noun[:-1] + "(y|ies)" if noun.endswith("y") else noun + "s?"


#: A question: "Which <referent noun> ...", ending with its only question mark ("What"
#: let SmolLM2 turn "What are" into "What area ...").
QUESTION_PATTERN = (
    r"^Which (" + "|".join(_noun_forms(noun) for noun in REFERENT_NOUNS) + r') [^"?\\]+[?]$'
)
#: What separates words in a question written under a banned-word pattern: a space, digits
#: and the punctuation of a sentence. No newline or brace: given any other character,
#: SmolLM2 under a ban escaped into runs of braces and newlines.
_SEPARATOR = r"[ ,;:'()0-9-]"


def banned_words(terms: Sequence[str]) -> list[str]:
    """The lowercase words a question pattern bans for ``terms`` (a label's forbidden
    terms): each one-word term, and the last word of each longer term ("gray matter" ->
    "matter", "lung tumour" -> "tumour"), which is enough to make the phrase unwritable
    without banning a word as common as "lung"."""
    words: list[str] = []
    for term in terms:
        parts = [w for w in re.split(r"[^a-z]+", term.lower()) if w]
        if parts and parts[-1] not in words:
            words.append(parts[-1])
    return words


def _letters_class(letters: set[str]) -> str:
    """A regex class of ``letters`` (lowercase) in both cases, as ranges where they run."""
    ranges: list[str] = []
    ordered = sorted(letters)
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ord(ordered[i]) != ord(ordered[i - 1]) + 1:
            first, last = ordered[start], ordered[i - 1]
            span = first if first == last else f"{first}-{last}"
            ranges.append(span + span.upper())
            start = i
    return "[" + "".join(ranges) + "]"


def word_excluding(words: Sequence[str]) -> str:
    """A regex for one word of ASCII letters (either case) that does not start with any of
    ``words`` ("brain" bans "brains", "brainstem" and "brainis" too). The complement of
    their trie, so a grammar built from it cannot spell a banned word whatever the
    tokenisation; banning the prefixes, not only the words, keeps a model from finishing
    a banned word with stray letters ("brain" + "is")."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for letter in word:
            node = node.setdefault(letter, {})
        node["$"] = {}
    alphabet = set("abcdefghijklmnopqrstuvwxyz")

    def rest(node: dict[str, Any], at_root: bool) -> str:
        children = sorted(key for key in node if key != "$")
        # A child where a banned word ends is a dead end: no branch for its letter.
        branches = [
            f"[{c}{c.upper()}]" + rest(node[c], False) for c in children if "$" not in node[c]
        ]
        others = alphabet - set(children)
        if others:
            branches.insert(0, _letters_class(others) + "[A-Za-z]*")
        group = "(" + "|".join(branches) + ")"
        # Inside a banned word's prefix the word may also end there ("bra").
        return group if at_root else group + "?"

    return rest(trie, True)


def question_pattern(banned: Sequence[str] = ()) -> str:
    """:data:`QUESTION_PATTERN`, and with ``banned`` (lowercase words, see
    :func:`banned_words`) a question none of whose words is a banned one or its plural:
    constrained decoding then cannot leak the label at all (the item checks stay the
    authority; this keeps a small model from wasting its replies)."""
    if not banned:
        return QUESTION_PATTERN
    nouns = [
        noun for noun in REFERENT_NOUNS if not any(noun.startswith(word) for word in banned)
    ] or list(REFERENT_NOUNS)
    word = word_excluding(banned)
    return (
        r"^Which (" + "|".join(_noun_forms(noun) for noun in nouns) + r") "
        rf"{_SEPARATOR}*({word}{_SEPARATOR}+)*({word})?[?]$"
    )


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    # Every property required and nothing else allowed: what OpenAI's strict mode demands.
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def descriptions_schema(*, nullable: bool) -> dict[str, Any]:
    """``{"attribute": {"short", "long"}, "location": {"short", "long"}}``; with ``nullable``
    (the evaluator) each description may be ``null``."""
    text = {"anyOf": [TEXT, {"type": "null"}]} if nullable else TEXT
    return _object(
        {perspective: _object({length: text for length in LENGTHS}) for perspective in PERSPECTIVES}
    )


def items_schema(
    max_items: int,
    answers: Sequence[str] | None = None,
    min_items: int = 1,
    banned: Sequence[str] = (),
) -> dict[str, Any]:
    """``{"items": [{perspective, length, question, answer, explanation}, ...]}`` with
    ``min_items`` to ``max_items`` items (a small model otherwise stops after one); with
    ``answers`` the answer must be one of them (the pipeline knows the answer: the label);
    the question follows :func:`question_pattern` of ``banned``."""
    answer = {"type": "string", "enum": list(answers)} if answers else TEXT
    item = _object(
        {
            "perspective": {"type": "string", "enum": list(PERSPECTIVES)},
            "length": {"type": "string", "enum": list(LENGTHS)},
            "question": {"type": "string", "pattern": question_pattern(banned)},
            "answer": answer,
            "explanation": TEXT,
        }
    )
    return _object(
        {
            "items": {
                "type": "array",
                "items": item,
                "minItems": max(1, min(min_items, max_items)),
                "maxItems": max(1, max_items),
            }
        }
    )


def answer_text(label: str) -> str:
    """The answer an LLM item gives (fixed by the schema where the dialect carries one)."""
    return f"The {label}."


def _without_lengths(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {
            k: _without_lengths(v) for k, v in schema.items() if k not in ("minLength", "maxLength")
        }
    if isinstance(schema, list):
        return [_without_lengths(v) for v in schema]
    return schema


def response_format(dialect: str, name: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    """The ``response_format`` field asking for ``schema`` in ``dialect`` (``None``: send none)."""
    if dialect == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": name, "schema": _without_lengths(schema), "strict": True},
        }
    if dialect == "json_object+schema":
        return {"type": "json_object", "schema": schema}
    if dialect == "json_object":
        return {"type": "json_object"}
    if dialect == "none":
        return None
    raise ValueError(f"unknown structured-output dialect {dialect!r}; known: {DIALECTS}")


PROBE_SCHEMA = _object({"answer": {"type": "string", "enum": ["yes", "no"]}})
PROBE_MESSAGES = [
    {"role": "system", "content": "You answer with JSON only."},
    {
        "role": "user",
        "content": 'Is the liver an organ? Reply with JSON: {"answer": "yes"} or {"answer": "no"}.',
    },
]


@dataclass
class StructuredOutput:
    """The dialect a run uses, how it was chosen, and what each probed form did."""

    requested: str
    dialect: str
    source: str  # "forced" | "probe" | "cache"
    probes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "dialect": self.dialect,
            "source": self.source,
            "probes": dict(self.probes),
        }


def detect_dialect(
    client: ChatClient, cache_dir: str | os.PathLike[str] | None = None
) -> StructuredOutput:
    """The structured-output dialect to use with ``client``'s endpoint.

    A forced single form (``json_schema``, ``none``) is used as is. Otherwise each
    candidate form is tried, in :data:`DIALECTS` order, with one small request
    (:data:`PROBE_MESSAGES`): the first form the server answers with a JSON object wins;
    :class:`RefusedError` counts as refused, prose as ignored; ``none`` is taken without a request
    when every earlier form failed (``json_object`` mode ends with plain ``json_object``).
    The result is kept in ``cache_dir`` and reused for the same endpoint, model and mode.
    """
    config = client.config
    candidates = _MODE_CANDIDATES[config.structured]
    if len(candidates) == 1:
        return StructuredOutput(config.structured, candidates[0], "forced")
    identity = {"endpoint": config.url, "model": config.model, "requested": config.structured}
    path = Path(cache_dir) / DIALECT_NAME if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            saved = json.loads(path.read_text("utf-8"))
            if all(saved.get(k) == v for k, v in identity.items()) and saved["dialect"] in (
                candidates
            ):
                return StructuredOutput(
                    config.structured, saved["dialect"], "cache", dict(saved.get("probes", {}))
                )
        except (json.JSONDecodeError, KeyError, OSError, TypeError):
            pass  # probe again
    probes: dict[str, str] = {}
    chosen = candidates[-1]
    for form in candidates:
        if form == "none":  # nothing to ask the server: the last resort
            probes[form] = "fallback"
            chosen = form
            break
        try:
            reply = client.complete(
                PROBE_MESSAGES,
                response_format=response_format(form, "probe", PROBE_SCHEMA),
                max_tokens=32,
            )
        except RefusedError as error:
            probes[form] = f"refused (HTTP {error.status})"
            continue
        try:
            parse_json_reply(reply)
        except ReplyError:
            probes[form] = "ignored (no JSON in the reply)"
            continue
        probes[form] = "ok"
        chosen = form
        break
    result = StructuredOutput(config.structured, chosen, "probe", probes)
    if path is not None:
        atomic_write_text(
            path, json.dumps({**identity, "dialect": chosen, "probes": probes}, indent=2) + "\n"
        )
    return result


def _user(instruction: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A user message: the instruction, then the data as a JSON block (easy for models and
    for the test stand-in server to read)."""
    return {
        "role": "user",
        "content": f"{instruction}\n\nINPUT JSON:\n{json.dumps(payload, ensure_ascii=False, sort_keys=True)}",
    }


_DECODER = json.JSONDecoder()


def parse_json_reply(text: str) -> dict[str, Any]:
    """The first JSON object in a reply: tolerates a Markdown code fence, prose before or
    after it and stray braces in the prose (each ``{`` is tried until one starts a valid
    object)."""
    start = text.find("{")
    tries = 0
    while start >= 0 and tries < 200:  # bounded: prose with many braces
        tries += 1
        try:
            data, _ = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(data, dict):
            return data
        start = text.find("{", start + 1)
    raise ReplyError("non-json", text[:120])


def _descriptions(data: dict[str, Any], *, allow_null: bool) -> dict[str, dict[str, str | None]]:
    out: dict[str, dict[str, str | None]] = {}
    for perspective in PERSPECTIVES:
        block = data.get(perspective)
        if block is None and allow_null:
            block = {}  # the evaluator may leave out what it drops
        if not isinstance(block, dict):
            raise ReplyError("missing fields", f"no {perspective!r} object")
        out[perspective] = {}
        for length in LENGTHS:
            if length not in block and not allow_null:
                raise ReplyError("missing fields", f"no {perspective}.{length}")
            value = block.get(length)
            if value is None and allow_null:
                out[perspective][length] = None
            elif isinstance(value, str) and value.strip():
                out[perspective][length] = value.strip()
            else:
                raise ReplyError("wrong type", f"{perspective}.{length} must be a non-empty string")
    return out


def _raw_items(data: dict[str, Any]) -> list[Any]:
    items = data.get("items")
    if not isinstance(items, list):
        raise ReplyError("missing fields", "no 'items' list")
    return items


# ---------------------------------------------------------------------- item checks
#: A reasoning question shorter than this many words is rejected as too short.
MIN_QUESTION_WORDS = 5
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_ASKING = re.compile(
    r"^(which|what|where|whose|who|how|can|could|would|identify|find|locate|point|show|"
    r"segment|mark|highlight|outline|indicate|select|delineate|please)\b",
    re.IGNORECASE,
)
#: Words that place a target in the image (a location question is grounded by them).
POSITION_WORDS = frozenset(
    """left right upper lower top bottom centre center central middle above below near
    beside between adjacent next side corner edge inside outside surrounding beneath
    under over deep outer inner front back anterior posterior midline""".split()
)
_REFERENTS = frozenset(
    [*REFERENT_NOUNS, *(noun + "s" for noun in REFERENT_NOUNS), "abnormalities"]
    + [word for noun in KIND_NOUNS.values() for word in noun.split() if word != "blood"]
)
_STOPWORDS = frozenset(
    """the and for with that this from which what where into onto over under than then
    their there these those they them its it's is are was were be been being has have
    had does do did can could would should will shall may might must not only also very
    about each other such most more less some any all one two both""".split()
)


_MARKUP = re.compile(r"[_{}\[\]<>]")


def _content_words(text: str) -> set[str]:
    return {
        word
        for word in (w.lower() for w in _WORD.findall(text))
        if len(word) >= 4 and word not in _STOPWORDS
    }


def _stems(text: str) -> set[str]:
    """Crude stems (the first 5 letters) of the content words: "processing" ~ "process"."""
    return {word[:5] for word in _content_words(text)}


def _target_stems(record: Record, target_index: int, ontology: Ontology) -> set[str]:
    """Stems of the target's ontology entry (function, location, attributes, appearance,
    conditions), less those of the other targets' labels (naming a neighbour does not
    ground a question in the target)."""
    resolved = ontology.resolve(record.targets[target_index].label)
    if resolved is None:
        return set()
    category = resolved.category
    stems: set[str] = set()
    for text in (
        category.function,
        category.location,
        *category.attributes,
        *category.appearance.values(),
        *category.conditions,
    ):
        stems |= _stems(text)
    for i, other in enumerate(record.targets):
        if i != target_index:
            stems -= _stems(other.label)
    return stems


def item_problem(item: QAItem, record: Record, target_index: int, ontology: Ontology) -> str | None:
    """Why an LLM reasoning item about ``record.targets[target_index]`` is rejected, or
    ``None`` if it is accepted.

    In order: ``"label leaked"`` (the question contains the label, its category name, a
    synonym or an adjective: :meth:`Ontology.leaked_term`, the template engine's check),
    ``"too short"`` (fewer than :data:`MIN_QUESTION_WORDS` words),
    ``"not a question"`` (no question mark and no asking/imperative opening),
    ``"markup in the question"`` (``_``, brackets, braces: copied input fields),
    ``"no referent noun"`` (the target is not referred to by a generic noun of
    :data:`REFERENT_NOUNS` or a kind noun: "What is the function of the brain?" asks about
    a named neighbour, not about the target),
    ``"off-topic"`` (no position word and no content word of the target's ontology entry
    other than a neighbour's label: "Which part of the brain produces dopamine?" is not
    grounded in the lateral ventricle), and
    ``"answer does not name the target"``.
    """
    label = record.targets[target_index].label
    question = item.question.strip()
    words = _WORD.findall(question)
    if ontology.leaked_term(question, label) is not None:
        return "label leaked"
    if len(words) < MIN_QUESTION_WORDS:
        return "too short"
    if not (question.endswith("?") or _ASKING.match(question)):
        return "not a question"
    if _MARKUP.search(question):
        return "markup in the question"
    lowered = {word.lower() for word in words}
    if not lowered & _REFERENTS:
        return "no referent noun"
    if not lowered & POSITION_WORDS and not _stems(question) & _target_stems(
        record, target_index, ontology
    ):
        return "off-topic"
    if ontology.leaked_term(item.answer, label) is None:
        return "answer does not name the target"
    return None


def redact(text: str, label: str, ontology: Ontology) -> str:
    """``text`` with every forbidden term of ``label`` replaced by "the target"."""
    for term in sorted(ontology.forbidden_terms(label), key=len, reverse=True):
        text = term_pattern(term).sub("the target", text)
    # "the the target" where the term followed an article.
    return re.sub(r"\b(the|a|an) the target\b", "the target", text, flags=re.IGNORECASE)


@dataclass
class Job:
    """One target of one record to generate questions for."""

    key: str
    record: Record
    target_index: int
    root: Path

    @property
    def label(self) -> str:
        return self.record.targets[self.target_index].label


@dataclass
class JobResult:
    key: str
    status: str  # "ok" | "failed"
    items: list[QAItem] = field(default_factory=list)
    reason: str | None = None
    rejects: Counter[str] = field(default_factory=Counter)


def job_key(config: LLMConfig, record: Record, target_index: int, dialect: str = "none") -> str:
    """Stable id of a job: record, target, label and every setting that shapes the output
    (the structured-output dialect among them)."""
    parts = [
        PROMPT_VERSION,
        dialect,
        config.model,
        config.caption_model or "",
        str(config.extra_pairs),
        str(config.revise_rounds),
        record.id,
        str(target_index),
        record.targets[target_index].label,
    ]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


@dataclass(eq=False)
class Pipeline:
    """Runs the five stages for one job with a :class:`ChatClient`."""

    config: LLMConfig
    client: ChatClient
    ontology: Ontology
    dialect: str = "none"

    def __post_init__(self) -> None:
        check_choice("dialect", self.dialect, DIALECTS)

    def _ask(
        self,
        messages: list[dict[str, Any]],
        parse: Callable[[str], Any],
        rejects: Counter[str],
        stage: str,
        schema: dict[str, Any] | None = None,
        model: str | None = None,
    ) -> Any:
        """Send ``messages`` (asking for ``schema`` in the run's dialect); on a malformed
        reply, ask again with a correction (bounded by ``max_attempts``)."""
        form = response_format(self.dialect, stage, schema) if schema is not None else None
        for attempt in range(self.config.max_attempts):
            reply = self.client.complete(messages, model=model, response_format=form)
            try:
                return parse(reply)
            except ReplyError as error:
                rejects[f"{stage}: {error.reason}"] += 1
                if attempt + 1 >= self.config.max_attempts:
                    raise
                messages = [
                    *messages,
                    {"role": "assistant", "content": reply},
                    {
                        "role": "user",
                        "content": f"Your reply was not valid ({error}). Reply again with JSON only, exactly in the requested format.",
                    },
                ]
        raise AssertionError("unreachable")

    def _context(self, job: Job) -> dict[str, Any]:
        record = job.record
        target = record.targets[job.target_index]
        others = [
            {"label": other.label, "box_xyxy": list(other.box_xyxy)}
            for i, other in enumerate(record.targets)
            if i != job.target_index
        ]
        context = {
            "modality": record.modality,
            "image_size": {"height": record.height, "width": record.width},
            "label": target.label,
            "box_xyxy": list(target.box_xyxy),
            "box_convention": "pixel-edge x0,y0,x1,y1; x to the right, y down; image left/right",
            "display": record.display or "none (no patient sides)",
            "other_objects": others,
        }
        resolved = self.ontology.resolve(target.label)
        if resolved is not None:
            context["knowledge"] = {
                "function": resolved.category.function,
                "location": resolved.category.location,
            }
        return context

    def _banned(self, job: Job) -> list[str]:
        """Words the question schema bans for ``job``'s target (see :func:`banned_words`)."""
        return banned_words(self.ontology.forbidden_terms(job.label))

    def _facts(self, job: Job) -> str:
        """The target's ontology entry as plain sentences, for the question stages (a small
        model uses facts given in words; the same facts in the JSON block it ignored)."""
        resolved = self.ontology.resolve(job.label)
        if resolved is None:
            return ""
        category = resolved.category
        parts = [f"it {category.function}", f"it lies {category.location}"]
        parts += [f"it {attribute}" for attribute in category.attributes]
        appearance = category.appearance_for(job.record.modality)
        if appearance:
            parts.append(f"it {appearance}")
        facts = redact("; ".join(parts), job.label, self.ontology)
        return f" Facts about the target (use them; never name it): {facts}."

    def _caption(self, job: Job, rejects: Counter[str]) -> str | None:
        from medisee.data.samples import load_record_image

        if not self.config.caption_model:
            return None
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(load_record_image(job.record, job.root)).save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        modality = MODALITY_NOUNS.get(job.record.modality, "medical image")
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM_CAPTION},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"Describe this {modality} briefly."},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            },
        ]

        def parse(text: str) -> str:
            text = text.strip()
            if not text:
                raise ReplyError("empty caption")
            return text[:600]

        try:
            return self._ask(messages, parse, rejects, "caption", model=self.config.caption_model)
        except ReplyError:
            return None

    def _valid_items(
        self,
        raw: list[Any],
        job: Job,
        rejects: Counter[str],
        stage: str,
        seen: set[str],
        revisable: list[dict[str, str]] | None = None,
    ) -> list[QAItem]:
        """The items of ``raw`` that pass :func:`item_problem` and are new; the others
        are counted in ``rejects``, and those a rewrite can fix (:data:`REVISABLE`) are
        appended to ``revisable`` with their reason."""
        out = []
        for entry in raw:
            if not isinstance(entry, dict):
                rejects[f"{stage}: wrong type"] += 1
                continue
            length = entry.get("length")
            if not isinstance(length, str):  # QAItem would reject it too
                rejects[f"{stage}: missing fields"] += 1
                continue
            try:
                item = QAItem(
                    kind="reasoning",
                    perspective=entry.get("perspective"),
                    length=length,
                    question=" ".join(str(entry.get("question", "")).split()),
                    answer=" ".join(str(entry.get("answer", "")).split()),
                    explanation=" ".join(str(entry.get("explanation", "")).split()),
                    engine="llm",
                )
            except ValueError:
                rejects[f"{stage}: missing fields"] += 1
                continue
            problem = item_problem(item, job.record, job.target_index, self.ontology)
            if problem is not None:
                rejects[f"{stage}: {problem}"] += 1
                if revisable is not None and problem in REVISABLE:
                    revisable.append(
                        {
                            "perspective": item.perspective or "",
                            "length": item.length,
                            "question": item.question,
                            "reason": problem,
                        }
                    )
                continue
            key = item.question.lower()
            if key in seen:
                rejects[f"{stage}: duplicate question"] += 1
                continue
            seen.add(key)
            out.append(item)
        return out

    def _revise(
        self, job: Job, revisable: list[dict[str, str]], rejects: Counter[str], seen: set[str]
    ) -> list[QAItem]:
        """One revise round over ``revisable`` (emptied, then refilled with what the
        rewrites still get wrong); returns the rewrites that pass."""
        rejected = revisable[:]
        revisable.clear()
        forbidden = ", ".join(self.ontology.forbidden_terms(job.label))
        try:
            raw = self._ask(
                [
                    {"role": "system", "content": SYSTEM_REVISE},
                    _user(
                        f"Rewrite these {len(rejected)} rejected questions. Forbidden words: "
                        f"{forbidden}." + self._facts(job),
                        {
                            "stage": "revise",
                            "label": job.label,
                            "modality": job.record.modality,
                            "box_xyxy": list(job.record.targets[job.target_index].box_xyxy),
                            "rejected": rejected,
                        },
                    ),
                ],
                lambda text: _raw_items(parse_json_reply(text)),
                rejects,
                "revise",
                items_schema(
                    len(rejected),
                    [answer_text(job.label)],
                    min_items=len(rejected),
                    banned=self._banned(job),
                ),
            )
        except ReplyError:
            return []  # the rejection is counted; the job keeps what it has
        return self._valid_items(raw[: len(rejected)], job, rejects, "revise", seen, revisable)

    def run(self, job: Job) -> JobResult:
        """All stages for one job; :class:`LLMError` propagates (the job is not finished)."""
        rejects: Counter[str] = Counter()
        label = job.label
        context = self._context(job)
        context["caption"] = self._caption(job, rejects) or "(no caption)"
        try:
            described = self._ask(
                [
                    {"role": "system", "content": SYSTEM_DESCRIBE},
                    _user("Describe the target.", {"stage": "describe", **context}),
                ],
                lambda text: _descriptions(parse_json_reply(text), allow_null=False),
                rejects,
                "describe",
                descriptions_schema(nullable=False),
            )
            # Descriptions that name the object would make leaking questions: the terms
            # are replaced ("the target"); the questions are checked again later.
            for perspective in PERSPECTIVES:
                for length in LENGTHS:
                    text = described[perspective][length] or ""
                    if self.ontology.leaked_term(text, label):
                        rejects["describe: label redacted"] += 1
                        described[perspective][length] = redact(text, label, self.ontology)
            kept_in = {p: {k: v for k, v in d.items() if v} for p, d in described.items()}
            evaluated = self._ask(
                [
                    {"role": "system", "content": SYSTEM_EVALUATE},
                    _user(
                        "Review these descriptions.",
                        {
                            "stage": "evaluate",
                            "label": label,
                            "modality": context["modality"],
                            "descriptions": kept_in,
                        },
                    ),
                ],
                lambda text: _descriptions(parse_json_reply(text), allow_null=True),
                rejects,
                "evaluate",
                descriptions_schema(nullable=True),
            )
        except ReplyError as error:
            return JobResult(
                job.key, "failed", reason=f"malformed reply ({error.reason})", rejects=rejects
            )
        kept = {
            p: {k: v for k, v in d.items() if v and kept_in.get(p, {}).get(k)}
            for p, d in evaluated.items()
        }
        dropped = sum(
            1
            for p in PERSPECTIVES
            for k in LENGTHS
            if kept_in.get(p, {}).get(k) and not kept[p].get(k)
        )
        if dropped:
            rejects["evaluate: dropped"] += dropped
        if not any(kept.values()):
            return JobResult(job.key, "failed", reason="all descriptions dropped", rejects=rejects)
        seen: set[str] = set()
        n_kept = sum(1 for block in kept.values() for text in block.values() if text)
        try:
            raw = self._ask(
                [
                    {"role": "system", "content": SYSTEM_TRANSFORM},
                    _user(
                        "Transform the descriptions into question-answer pairs." + self._facts(job),
                        {
                            "stage": "transform",
                            "label": label,
                            "modality": context["modality"],
                            "descriptions": kept,
                        },
                    ),
                ],
                lambda text: _raw_items(parse_json_reply(text)),
                rejects,
                "transform",
                items_schema(
                    n_kept, [answer_text(label)], min_items=n_kept, banned=self._banned(job)
                ),
            )
        except ReplyError as error:
            return JobResult(
                job.key, "failed", reason=f"malformed reply ({error.reason})", rejects=rejects
            )
        revisable: list[dict[str, str]] = []
        items = self._valid_items(raw, job, rejects, "transform", seen, revisable)
        if self.config.extra_pairs > 0:
            try:
                raw_extra = self._ask(
                    [
                        {"role": "system", "content": SYSTEM_EXTRA},
                        _user(
                            f"Write {self.config.extra_pairs} new question-answer pairs."
                            + self._facts(job),
                            {
                                "stage": "extra",
                                "n": self.config.extra_pairs,
                                **context,
                                "existing_questions": [item.question for item in items],
                            },
                        ),
                    ],
                    lambda text: _raw_items(parse_json_reply(text)),
                    rejects,
                    "extra",
                    items_schema(
                        self.config.extra_pairs,
                        [answer_text(label)],
                        min_items=self.config.extra_pairs,
                        banned=self._banned(job),
                    ),
                )
                items += self._valid_items(
                    raw_extra[: self.config.extra_pairs], job, rejects, "extra", seen, revisable
                )
            except ReplyError:
                pass  # extra pairs are a bonus; the rejection is counted
        for _ in range(self.config.revise_rounds):
            if not revisable:
                break
            items += self._revise(job, revisable, rejects, seen)
        if not items:
            return JobResult(job.key, "failed", reason="no valid items", rejects=rejects)
        return JobResult(job.key, "ok", items=items, rejects=rejects)


# ---------------------------------------------------------------------- journal
class Journal:
    """Append-only JSONL of finished jobs; each line is flushed and fsynced."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, dict[str, Any]] = {}
        self.duplicates = 0
        self.invalid_lines = 0
        self._repair_and_load()
        self._handle = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def _repair_and_load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # A kill mid-write leaves a torn last line: cut it, the job will re-run.
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as handle:
                handle.truncate(cut)
            data = data[:cut]
        for line in data.decode("utf-8").splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                key = entry["job"]
            except (json.JSONDecodeError, KeyError, TypeError):
                self.invalid_lines += 1
                continue
            if key in self.entries:
                self.duplicates += 1
                continue
            self.entries[key] = entry

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def append(self, entry: dict[str, Any]) -> None:
        with self._lock:
            if entry["job"] in self.entries:
                self.duplicates += 1
                return
            self._handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self.entries[entry["job"]] = entry

    def close(self) -> None:
        self._handle.close()


@dataclass
class GenerationReport:
    """Counts of one ``generate`` run (jobs, requests, cache hits, retries, rejections)."""

    jobs: int = 0
    already_done: int = 0
    finished: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    unfinished: Counter[str] = field(default_factory=Counter)
    rejects: Counter[str] = field(default_factory=Counter)
    client: Counter[str] = field(default_factory=Counter)
    items: int = 0
    structured: StructuredOutput | None = None
    targets_with_items: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "structured": self.structured.to_dict() if self.structured else None,
            "jobs": self.jobs,
            "already_done": self.already_done,
            "finished_now": self.finished,
            "failed": dict(self.failed),
            "unfinished": dict(self.unfinished),
            "rejected": dict(self.rejects),
            "client": dict(self.client),
            "items": self.items,
            "targets_with_items": self.targets_with_items,
        }

    def summary(self) -> str:
        lines = [
            f"jobs {self.jobs}: {self.already_done} from the journal, {self.finished} now, "
            f"{sum(self.unfinished.values())} unfinished; {self.items} LLM items in the output "
            f"({self.targets_with_items} targets with at least one)",
            "client: "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.client.items())) or "no requests"),
        ]
        if self.structured is not None:
            lines.insert(
                1,
                f"structured output: {self.structured.dialect} "
                f"({self.structured.source}, requested {self.structured.requested})",
            )
        if self.failed:
            lines.append("failed jobs: " + ", ".join(f"{k} {v}" for k, v in self.failed.items()))
        if self.rejects:
            lines.append(
                "rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(self.rejects.items()))
            )
        if self.unfinished:
            lines.append(
                "unfinished (run again to resume): "
                + ", ".join(f"{k} {v}" for k, v in self.unfinished.items())
            )
        return "\n".join(lines)


def merge_llm_items(
    records: Sequence[Record],
    jobs: Sequence[Job],
    journal: Journal,
    ontology: Ontology | None = None,
    rejects: Counter[str] | None = None,
) -> int:
    """Replace the ``engine == "llm"`` items of each target whose job is in the journal
    (finished, ok or failed) with the journal's items; returns how many were added.

    With ``ontology``, every journal item is checked again with :func:`item_problem` (a
    journal written by hand or by an older check cannot put a leaking item in the
    manifest); those rejected are counted in ``rejects`` as ``"journal: <reason>"``. A
    question accepted for two targets of one image does not single either out: it is
    dropped from both (``"merge: same question for two targets"``)."""
    by_target = {(job.record.id, job.target_index): job.key for job in jobs}
    total = 0
    for record in records:
        accepted: dict[int, list[QAItem]] = {}
        for t_index in range(len(record.targets)):
            key = by_target.get((record.id, t_index))
            entry = journal.entries.get(key) if key is not None else None
            if entry is None:
                continue  # not generated (yet): keep whatever the target had
            accepted[t_index] = []
            if entry.get("status") != "ok":
                continue
            for data in entry.get("items", []):
                item = QAItem.from_dict(data)
                problem = (
                    item_problem(item, record, t_index, ontology) if ontology is not None else None
                )
                if problem is not None:
                    if rejects is not None:
                        rejects[f"journal: {problem}"] += 1
                    continue
                accepted[t_index].append(item)
        owners: dict[str, set[int]] = {}
        for t_index, items in accepted.items():
            for item in items:
                owners.setdefault(" ".join(item.question.lower().split()), set()).add(t_index)
        for t_index, items in accepted.items():
            target = record.targets[t_index]
            kept = [item for item in target.qa if item.engine != "llm"]
            for item in items:
                if len(owners[" ".join(item.question.lower().split())]) > 1:
                    if rejects is not None:
                        rejects["merge: same question for two targets"] += 1
                    continue
                kept.append(item)
                total += 1
            target.qa = kept
    return total


def generate_llm(
    records: Sequence[Record],
    root: str | os.PathLike[str],
    config: LLMConfig,
    cache_dir: str | os.PathLike[str],
    *,
    ontology: Ontology | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> GenerationReport:
    """Run the pipeline for every target of ``records`` (in place: LLM items are merged into
    the targets' ``qa``). Resumable through ``cache_dir`` (see the module docstring).

    The report's ``rejects`` and ``failed`` count the jobs of this output, those read back
    from the journal included, so a resumed run reports the same totals as an
    uninterrupted one."""
    ontology = ontology if ontology is not None else Ontology.load()
    root = Path(root)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    client = ChatClient(config, cache_dir)
    journal: Journal | None = None
    try:
        structured = detect_dialect(client, cache_dir)
        log.info("structured output: %s (%s)", structured.dialect, structured.source)
        jobs = [
            Job(job_key(config, record, t, structured.dialect), record, t, root)
            for record in records
            for t in range(len(record.targets))
        ]
        if limit is not None:
            jobs = jobs[:limit]
        report = GenerationReport(jobs=len(jobs), structured=structured)
        journal = Journal(cache_dir / JOURNAL_NAME)
        pipeline = Pipeline(config, client, ontology, structured.dialect)
        pending = [job for job in jobs if job.key not in journal]
        report.already_done = len(jobs) - len(pending)
        _run_jobs(pipeline, pending, journal, report, config.workers, progress)
    finally:
        client.close()
        if journal is not None:
            journal.close()
    report.client = Counter(client.stats)
    for job in jobs:
        entry = journal.entries.get(job.key)
        if entry is None:
            continue
        report.rejects.update(entry.get("rejects", {}))
        if entry.get("status") != "ok":
            report.failed[entry.get("reason") or "failed"] += 1
    report.items = merge_llm_items(records, jobs, journal, ontology, report.rejects)
    keys = {(job.record.id, job.target_index) for job in jobs}
    report.targets_with_items = sum(
        1
        for record in records
        for t, target in enumerate(record.targets)
        if (record.id, t) in keys and any(item.engine == "llm" for item in target.qa)
    )
    return report


def _run_jobs(
    pipeline: Pipeline,
    pending: Sequence[Job],
    journal: Journal,
    report: GenerationReport,
    workers: int,
    progress: bool,
) -> None:
    """Run ``pending`` on a thread pool; each finished job goes to the journal at once."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(pipeline.run, job): job for job in pending}
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(pending), desc="generate (llm)", unit="target")
        try:
            for future in as_completed(futures):
                job = futures[future]
                try:
                    result = future.result()
                except TransientLLMError as error:
                    report.unfinished["transient errors"] += 1
                    log.warning("job %s (%s) unfinished: %s", job.record.id, job.label, error)
                    continue
                except LLMError as error:
                    report.unfinished["request errors"] += 1
                    log.error("job %s (%s) failed: %s", job.record.id, job.label, error)
                    continue
                finally:
                    if bar is not None:
                        bar.update(1)
                journal.append(
                    {
                        "job": job.key,
                        "record": job.record.id,
                        "target": job.target_index,
                        "label": job.label,
                        "status": result.status,
                        "reason": result.reason,
                        "rejects": dict(result.rejects),
                        "items": [item.to_dict() for item in result.items],
                    }
                )
                report.finished += 1
        finally:
            if bar is not None:
                bar.close()
