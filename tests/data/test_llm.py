"""The LLM pipeline against a real HTTP stand-in server on 127.0.0.1."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from medisee.data.manifest import read_manifest
from medisee.data.qa_llm import JOURNAL_NAME, LLMConfig, generate_llm

from . import fake_llm
from .fake_llm import FakeLLM
from .llm_cli import kill_when_journaled, start_generate


@pytest.fixture()
def fake():
    server = FakeLLM()
    url = server.start()
    server.url = url  # type: ignore[attr-defined]
    yield server
    server.stop()


def _config(url: str, **kwargs) -> LLMConfig:
    defaults = dict(
        endpoint=url,
        model="fake-model",
        workers=3,
        backoff=0.01,
        backoff_max=0.05,
        max_retries=4,
        timeout=5.0,
    )
    defaults.update(kwargs)
    return LLMConfig(**defaults)


def _copy_dataset(manifest: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ds"
    shutil.copytree(manifest.parent, out)
    return out / "manifest.jsonl"


def _llm_items(records):
    return [
        (r.id, t.label, item.question)
        for r in records
        for t in r.targets
        for item in t.qa
        if item.engine == "llm"
    ]


def test_generates_items_with_retries_and_cache(fake, tiny_manifest, tmp_path):
    records, _ = read_manifest(tiny_manifest)
    n_targets = sum(len(r.targets) for r in records)
    fake.plan = ["429", "500", "500", "body"]
    cache = tmp_path / "cache"
    report = generate_llm(records, tiny_manifest.parent, _config(fake.url), cache, progress=False)

    assert report.finished == n_targets and not report.unfinished and not report.failed
    assert report.client["HTTP 429"] == 1 and report.client["HTTP 500"] == 2
    assert report.client["bad response bodies"] == 1
    assert report.client["retries"] >= 4
    items = _llm_items(records)
    # describe gives 4 descriptions -> 4 transformed items, plus 2 extra pairs per target.
    assert len(items) == n_targets * 6 == report.items
    for record in records:
        for target in record.targets:
            llm = [item for item in target.qa if item.engine == "llm"]
            assert all(item.kind == "reasoning" for item in llm)
            assert all(target.label not in item.question.lower() for item in llm)
            assert {item.perspective for item in llm} == {"attribute", "location"}
            # Template items from the build are kept beside them.
            assert any(item.engine == "template" for item in target.qa)
    served = sum(fake.requests.values())
    assert served == n_targets * 4  # describe, evaluate, transform, extra

    # Same cache, journal removed: every stage is answered from the cache.
    (cache / JOURNAL_NAME).unlink()
    again, _ = read_manifest(tiny_manifest)
    report2 = generate_llm(again, tiny_manifest.parent, _config(fake.url), cache, progress=False)
    assert sum(fake.requests.values()) == served
    assert report2.client["cache hits"] == n_targets * 4 and report2.client["requests"] == 0
    assert _llm_items(again) == items

    # Journal present: nothing is even looked up.
    third, _ = read_manifest(tiny_manifest)
    report3 = generate_llm(third, tiny_manifest.parent, _config(fake.url), cache, progress=False)
    assert report3.already_done == n_targets and report3.client["cache hits"] == 0
    assert _llm_items(third) == items


def test_malformed_and_leaking_replies_are_rejected_and_counted(fake, tiny_manifest, tmp_path):
    records, _ = read_manifest(tiny_manifest)
    n_targets = sum(len(r.targets) for r in records)
    fake.garbage_stages = {"describe", "transform"}
    fake.leak = True
    report = generate_llm(
        records, tiny_manifest.parent, _config(fake.url), tmp_path / "cache", progress=False
    )
    assert report.rejects["describe: non-json"] == n_targets
    assert report.rejects["transform: non-json"] == n_targets
    assert report.rejects["transform: label leaked"] == n_targets
    assert report.finished == n_targets and not report.failed
    for record in records:
        for target in record.targets:
            for item in target.qa:
                if item.engine == "llm":
                    assert f"where is the {target.label}" not in item.question.lower()


def test_rejected_questions_are_revised_once_and_checked_again(fake, tiny_manifest, tmp_path):
    records, _ = read_manifest(tiny_manifest)
    records = records[:1]
    n_targets = len(records[0].targets)
    fake.leak = True  # one leaking question per target, which the revise round rewrites

    def run(cache: str, **overrides) -> tuple:
        before = Counter(fake.requests)
        report = generate_llm(
            records,
            tiny_manifest.parent,
            _config(fake.url, **overrides),
            tmp_path / cache,
            progress=False,
        )
        return report, Counter(fake.requests) - before

    plain, plain_requests = run("off", revise_rounds=0)
    assert plain_requests["revise"] == 0
    revised, requests = run("on")
    assert requests["revise"] == n_targets and fake.revised == n_targets
    assert revised.rejects["transform: label leaked"] == n_targets
    # Each rewrite passed the same checks and was kept: one more item per target.
    assert revised.items == plain.items + n_targets
    for target in records[0].targets:
        rewrites = [q for q in target.qa if q.engine == "llm" and "rewrite" in q.question]
        assert len(rewrites) == 1 and target.label not in rewrites[0].question.lower()
    with pytest.raises(ValueError, match="revise_rounds"):
        _config(fake.url, revise_rounds=-1)


def test_malformed_after_all_attempts_fails_the_job(fake, tiny_manifest, tmp_path):
    records, _ = read_manifest(tiny_manifest)
    records = records[:1]
    fake.garbage_stages = {"describe"}
    report = generate_llm(
        records,
        tiny_manifest.parent,
        _config(fake.url, max_attempts=1),
        tmp_path / "c",
        progress=False,
    )
    assert report.failed["malformed reply (non-json)"] == len(records[0].targets)
    assert report.items == 0


def test_timeouts_are_retried(fake, tiny_manifest, tmp_path):
    records, _ = read_manifest(tiny_manifest)
    records = records[:1]
    records[0].targets = records[0].targets[:1]
    fake.hang_seconds = 1.0
    fake.plan = ["hang"]
    report = generate_llm(
        records,
        tiny_manifest.parent,
        _config(fake.url, timeout=0.3, workers=1),
        tmp_path / "c",
        progress=False,
    )
    assert report.client["timeouts"] == 1 and report.finished == 1


def test_gives_up_and_leaves_job_for_the_next_run(fake, tiny_manifest, tmp_path):
    records, _ = read_manifest(tiny_manifest)
    records = records[:1]
    records[0].targets = records[0].targets[:1]
    fake.plan = ["500"] * 3
    cache = tmp_path / "c"
    # A forced dialect: no probe request to absorb the failures.
    config = _config(fake.url, max_retries=2, workers=1, structured="json_schema")
    report = generate_llm(records, tiny_manifest.parent, config, cache, progress=False)
    assert report.unfinished["transient errors"] == 1 and report.items == 0
    assert not (cache / JOURNAL_NAME).read_text()
    report = generate_llm(records, tiny_manifest.parent, config, cache, progress=False)
    assert report.finished == 1 and report.items == 6


def _run_cli(manifest: Path, url: str, cache: Path, out: Path) -> subprocess.Popen:
    return start_generate(
        manifest, url, cache, out, "--model", "fake-model", "--workers", "2", "--backoff", "0.01"
    )


def test_resume_after_kill_loses_and_duplicates_nothing(fake, tiny_manifest, tmp_path):
    manifest = _copy_dataset(tiny_manifest, tmp_path)
    records, _ = read_manifest(manifest)
    n_targets = sum(len(r.targets) for r in records)

    # Reference: one uninterrupted run.
    reference = generate_llm(
        records, manifest.parent, _config(fake.url), tmp_path / "ref-cache", progress=False
    )
    assert reference.finished == n_targets

    # The same through the CLI in a subprocess, killed with SIGKILL mid-run.
    fake.delay = 0.04
    cache = tmp_path / "cache"
    out = manifest.parent / "manifest.llm.jsonl"
    process = _run_cli(manifest, fake.url, cache, out)
    journal = cache / JOURNAL_NAME
    done_before = kill_when_journaled(process, journal, 3, timeout=60, poll=0.01)
    assert 3 <= done_before < n_targets, "the kill should land mid-run"
    assert not out.exists(), "the output manifest is only written at the end"

    fake.delay = 0.0
    requests_before = sum(fake.requests.values())
    rerun = _run_cli(manifest, fake.url, cache, out)
    output = rerun.communicate(timeout=120)[0].decode()
    assert rerun.returncode == 0, output
    assert f"{done_before} from the journal" in output

    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    keys = [line["job"] for line in lines]
    assert len(keys) == len(set(keys)) == n_targets  # nothing duplicated, nothing missing
    # Resumed stages of interrupted jobs come from the cache: fewer requests than a full run.
    assert sum(fake.requests.values()) - requests_before < n_targets * 4

    resumed, _ = read_manifest(out)
    assert [r.to_dict() for r in resumed] == [r.to_dict() for r in records]


def test_caption_stage_sends_the_image(fake, tiny_manifest, tmp_path):
    records, _ = read_manifest(tiny_manifest)
    records = records[:1]
    n_targets = len(records[0].targets)
    config = _config(fake.url, caption_model="fake-vlm", extra_pairs=0)
    report = generate_llm(records, tiny_manifest.parent, config, tmp_path / "c", progress=False)
    assert report.finished == n_targets
    # One caption per target; identical requests for one image may be answered from the cache.
    assert fake.requests["caption"] + report.client["cache hits"] >= n_targets
    assert fake.requests["caption"] >= 1 and fake.requests["extra"] == 0


def test_journal_cuts_a_torn_last_line(tmp_path):
    from medisee.data.qa_llm import Journal

    path = tmp_path / "journal.jsonl"
    path.write_text('{"job": "a", "status": "ok"}\n{"job": "b", "status": "ok"}\n{"job": "c", "sta')
    journal = Journal(path)
    assert set(journal.entries) == {"a", "b"} and "c" not in journal
    journal.append({"job": "c", "status": "ok"})
    journal.append({"job": "a", "status": "ok"})  # already there: not written twice
    journal.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["job"] for line in lines] == ["a", "b", "c"]
    assert journal.duplicates == 1


# ---------------------------------------------------------------------- structured output
@pytest.mark.parametrize(
    ("accepts", "refuse_status", "expected"),
    [
        (fake_llm.ALL_FORMS, 400, "json_schema"),  # vLLM, llama-server
        (fake_llm.OPENAI, 400, "json_schema"),
        # llama-cpp-python 0.3 answers json_schema with a 500 that names response_format.
        (fake_llm.LLAMA_CPP_PYTHON, 500, "json_object+schema"),
        (fake_llm.LLAMA_CPP_PYTHON, 422, "json_object+schema"),
        (frozenset({"json_object", "none"}), 400, "json_object"),
        (fake_llm.NO_FORMAT, 400, "none"),  # rejects any response_format
    ],
)
def test_dialect_is_detected_once_and_used_for_every_stage(
    fake, tiny_manifest, tmp_path, accepts, refuse_status, expected
):
    fake.accepts = accepts
    fake.refuse_status = refuse_status
    records, _ = read_manifest(tiny_manifest)
    records = records[:1]
    n_targets = len(records[0].targets)
    cache = tmp_path / "c"
    report = generate_llm(records, tiny_manifest.parent, _config(fake.url), cache, progress=False)
    assert report.structured.dialect == expected and report.structured.source == "probe"
    assert report.structured.probes[expected] == ("fallback" if expected == "none" else "ok")
    assert report.client["retries"] == 0  # a refusal is not retried
    assert report.finished == n_targets and report.items == n_targets * 6
    assert report.to_dict()["structured"]["dialect"] == expected
    # The probe's outcome is the only thing sent in other forms; every stage used the dialect.
    assert dict(fake.forms) == {expected: n_targets * 4}
    if expected in ("json_schema", "json_object+schema"):
        assert set(fake.schemas) == {"describe", "evaluate", "transform", "extra"}
        assert fake.schemas["describe"]["required"] == ["attribute", "location"]
        assert fake.schemas["transform"]["properties"]["items"]["type"] == "array"
        # Each target's question stages ban its label's words (the two femoral heads share
        # their terms, so one pattern each).
        patterns = fake.question_patterns["transform"]
        assert fake.question_patterns["extra"] == patterns
        labels = {target.label for target in records[0].targets}
        assert len(patterns) == len(labels) - 1
        for pattern in patterns:
            assert re.fullmatch(pattern, "Which structure lies on the left?")
        for label in labels:
            naming = f"Which structure is the {label}?"
            assert sum(not re.fullmatch(pattern, naming) for pattern in patterns) >= 1
    else:
        assert not fake.schemas
    probes = fake.probes

    # A second run (journal removed) reads the dialect and every reply from the cache.
    (cache / JOURNAL_NAME).unlink()
    again, _ = read_manifest(tiny_manifest)
    again = again[:1]
    report2 = generate_llm(again, tiny_manifest.parent, _config(fake.url), cache, progress=False)
    assert report2.structured.dialect == expected and report2.structured.source == "cache"
    assert fake.probes == probes and report2.client["requests"] == 0
    assert _llm_items(again) == _llm_items(records)


def test_forced_json_object_falls_back_to_the_plain_form(fake, tiny_manifest, tmp_path):
    fake.accepts = fake_llm.OPENAI  # refuses a "schema" key
    records, _ = read_manifest(tiny_manifest)
    records = records[:1]
    config = _config(fake.url, structured="json_object")
    report = generate_llm(records, tiny_manifest.parent, config, tmp_path / "c", progress=False)
    assert report.structured.dialect == "json_object"
    assert report.structured.probes == {
        "json_object+schema": "refused (HTTP 400)",
        "json_object": "ok",
    }
    assert report.items == len(records[0].targets) * 6


def test_forced_dialect_is_not_probed_and_a_refusal_leaves_jobs_unfinished(
    fake, tiny_manifest, tmp_path
):
    fake.accepts = fake_llm.LLAMA_CPP_PYTHON
    fake.refuse_status = 422
    records, _ = read_manifest(tiny_manifest)
    records = records[:1]
    config = _config(fake.url, structured="json_schema")
    report = generate_llm(records, tiny_manifest.parent, config, tmp_path / "c", progress=False)
    assert report.structured.source == "forced" and fake.probes == 0
    assert report.unfinished["request errors"] == len(records[0].targets)
    assert report.items == 0 and report.client["HTTP 422"] == len(records[0].targets)


def test_schemas_fit_openai_strict_mode():
    from medisee.data.qa_llm import descriptions_schema, items_schema, response_format

    def objects(schema):
        if isinstance(schema, dict):
            if schema.get("type") == "object":
                yield schema
            for value in schema.values():
                yield from objects(value)
        elif isinstance(schema, list):
            for value in schema:
                yield from objects(value)

    for schema in (descriptions_schema(nullable=False), descriptions_schema(nullable=True)):
        for block in objects(schema):
            assert block["additionalProperties"] is False
            assert block["required"] == list(block["properties"])
    strict = response_format("json_schema", "transform", items_schema(4))
    assert strict["json_schema"]["strict"] is True
    assert "minLength" not in json.dumps(strict)
    schema_form = response_format("json_object+schema", "transform", items_schema(4, ["The x."]))
    items = schema_form["schema"]["properties"]["items"]
    assert items["maxItems"] == 4 and items["items"]["properties"]["answer"]["enum"] == ["The x."]
    assert "minLength" in json.dumps(schema_form)
    assert response_format("json_object", "x", items_schema(1)) == {"type": "json_object"}
    assert response_format("none", "x", items_schema(1)) is None


def test_banned_words_take_one_word_terms_and_the_last_word_of_phrases():
    from medisee.data.qa_llm import banned_words

    assert banned_words(["brain", "encephalon", "cerebral"]) == ["brain", "encephalon", "cerebral"]
    assert banned_words(["gray matter", "grey matter", "cortex"]) == ["matter", "cortex"]
    assert banned_words(["Lung tumour", "lung-tumor", ""]) == ["tumour", "tumor"]


@pytest.mark.parametrize(
    ("question", "allowed"),
    [
        ("Which organ controls thinking and memory?", True),
        ("Which organs lie near the top, 2 cm wide?", True),
        ("Which organ is like a bran or a brace?", True),  # words sharing a prefix
        ("Which abnormalities are there?", True),
        ("Which organ is brainy, near the brainstem?", False),  # words starting with a ban
        ("Which abnormalitys are there?", False),
        ("Which organ is the brain?", False),
        ("Which organ of the BRAINS works?", False),  # either case, plural
        ("Which organ is brain-like?", False),  # a hyphen separates words
        ("Which region holds the cerebral cortex?", False),
        ("Which organ controls thinking", False),  # no question mark
        ("What organ controls thinking?", False),  # the fixed opening
        ("Which organ? Which one?", False),  # one question mark, at the end
    ],
)
def test_question_pattern_bans_words_in_any_case_and_plural(question, allowed):
    from medisee.data.qa_llm import question_pattern

    pattern = question_pattern(["brain", "encephalon", "cerebral"])
    assert bool(re.fullmatch(pattern, question)) is allowed


def test_question_pattern_without_bans_and_banned_referent_nouns():
    from medisee.data.qa_llm import QUESTION_PATTERN, items_schema, question_pattern

    assert question_pattern([]) == QUESTION_PATTERN
    assert re.fullmatch(question_pattern(["bone"]), "Which structure holds the marrow?")
    assert not re.fullmatch(question_pattern(["bone"]), "Which bone holds the marrow?")
    schema = items_schema(2, ["The brain."], banned=["brain"])
    question = schema["properties"]["items"]["items"]["properties"]["question"]
    assert question["pattern"] == question_pattern(["brain"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('Sure {as asked}:\n```json\n{"a": {"b": "}"}}\n```\nmore {x}', {"a": {"b": "}"}}),
        ('first {"a": 1} then {"b": 2}', {"a": 1}),
        ('[1, 2] and {"a": [1, {"c": 3}]} trailing }', {"a": [1, {"c": 3}]}),
    ],
)
def test_first_json_object_is_extracted(text, expected):
    from medisee.data.qa_llm import parse_json_reply

    assert parse_json_reply(text) == expected


@pytest.mark.parametrize("text", ["no json here", "{broken", "[1, 2, 3]", ""])
def test_no_json_object_is_a_reply_error(text):
    from medisee.data.qa_llm import ReplyError, parse_json_reply

    with pytest.raises(ReplyError, match="non-json"):
        parse_json_reply(text)


def test_item_checks(tiny_manifest, ontology):
    from medisee.data.qa_llm import item_problem
    from medisee.data.schema import QAItem

    records, _ = read_manifest(tiny_manifest)
    record = records[0]
    index, target = next(
        (i, t) for i, t in enumerate(record.targets) if ontology.resolve(t.label) is not None
    )
    category = ontology.resolve(target.label).category

    def problem(question, answer=None):
        item = QAItem(
            kind="reasoning",
            perspective="attribute",
            length="short",
            question=question,
            answer=answer or f"The {target.label}.",
            engine="llm",
        )
        return item_problem(item, record, index, ontology)

    assert problem("Which structure in this image lies near the centre of the box?") is None
    assert problem(f"What does the {target.label} do in the human body?") == "label leaked"
    for term in (*category.synonyms, *category.adjectives, category.name.upper()):
        assert problem(f"Which structure here is the {term} one shown?") == "label leaked", term
    assert problem("Which structure is it?") == "too short"
    assert problem("Tell me about the structure near the centre.") == "not a question"
    assert problem("Which part of the novel was the most exciting to read?") == "off-topic"
    assert problem("What is the capital city of France today?") == "no referent noun"
    assert problem("What is the purpose of the image_size field in it?") == (
        "markup in the question"
    )
    assert (
        problem("Which structure lies near the centre of the image?", answer="Nothing at all.")
        == "answer does not name the target"
    )


def _rerun_with_journal_edited(fake, manifest: Path, cache: Path, edit) -> tuple:
    """Generate for the first record, let ``edit`` change the journal's entries (a list of
    dicts, in place), and generate again from that journal: (the records, the report)."""
    records, _ = read_manifest(manifest)
    generate_llm(records[:1], manifest.parent, _config(fake.url), cache, progress=False)
    journal = cache / JOURNAL_NAME
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    edit(lines)
    journal.write_text("".join(json.dumps(line) + "\n" for line in lines))
    again = read_manifest(manifest)[0][:1]
    report = generate_llm(again, manifest.parent, _config(fake.url), cache, progress=False)
    return again, report


def test_leaking_journal_items_never_reach_the_manifest(fake, tiny_manifest, tmp_path):
    def leak(lines):
        label = lines[0]["label"]
        lines[0]["items"][0]["question"] = f"Which structure is the {label} in this image?"

    records, report = _rerun_with_journal_edited(fake, tiny_manifest, tmp_path / "c", leak)
    assert report.rejects["journal: label leaked"] == 1
    assert report.items == len(records[0].targets) * 6 - 1


def test_redact_replaces_every_forbidden_term(ontology):
    from medisee.data.qa_llm import redact

    label = next(name for name in ontology.names if ontology[name].synonyms)
    synonym = ontology[label].synonyms[0]
    text = f"The {label} lies beside a {synonym.upper()}; {label}s are common."
    redacted = redact(text, label, ontology)
    assert ontology.leaked_term(redacted, label) is None
    assert redacted.startswith("the target lies beside the target")


def test_a_question_accepted_for_two_targets_of_one_image_is_dropped(fake, tiny_manifest, tmp_path):
    shared = "Which structure lies near the centre of this image?"

    def share(lines):
        lines[0]["items"][0]["question"] = shared
        lines[1]["items"][0]["question"] = shared

    again, report = _rerun_with_journal_edited(fake, tiny_manifest, tmp_path / "c", share)
    assert report.rejects["merge: same question for two targets"] == 2
    assert report.items == len(again[0].targets) * 6 - 2
    assert all(question != shared for _, _, question in _llm_items(again))
