"""Evaluate a saved model and the baselines on one split, writing one report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medisee.evaluate.evaluator import EvalReport, evaluate, evaluate_items, markdown_table
from medisee.evaluate.handwritten import HandwrittenQuestion, handwritten_items

#: how the rows of hand-written questions are marked
HANDWRITTEN = "hand-written"


def evaluate_with_baselines(
    *,
    model_dir: str | Path,
    manifest: str | Path,
    split: str,
    out: Path,
    kinds: Sequence[str] = ("reasoning",),
    modes: Sequence[str] = ("generated", "teacher_forced"),
    baselines: Sequence[str] = ("whole_image_box", "label_match", "oracle_box"),
    prior_split: str = "train",
    max_examples: int | None = None,
    batch_size: int = 8,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    records: tuple[list, Path] | None = None,
    progress: bool = True,
    questions: Sequence[HandwrittenQuestion] | None = None,
    constrain_answer: bool = True,
    constrain_to_exam: bool = True,
    question_prior: bool = True,
) -> dict[str, dict[str, Any]]:
    """Returns ``{method: summary}``; writes ``metrics.json``, ``metrics.md`` and the
    per-example ``predictions.jsonl`` (with each generated explanation) under ``out``.

    ``model_dir``: a checkpoint directory, a released model's name (``"medisee-lite"``) or
    a Hub id (``medisee.model.released.resolve_model``).
    ``questions``: hand-written questions (``medisee.evaluate.handwritten``), scored on
    the split's images of their labels as their own rows: the model generated, and the
    label-matching baseline (the other baselines do not read the question).
    ``constrain_answer``: generated answers name one of the model's labels, and with
    ``constrain_to_exam`` one of those of the image's exam kind, weighed by the question
    prior with ``question_prior`` (``GenerationOptions``).
    """
    from medisee.data.manifest import load_records
    from medisee.data.ontology import Ontology
    from medisee.evaluate.baselines import run_baselines
    from medisee.evaluate.plausibility import structures_by_exam
    from medisee.model.embedding_cache import EmbeddingCache, encoder_fingerprint
    from medisee.model.mask_decoder import build_segmenter
    from medisee.model.medisee import MediSee
    from medisee.model.released import resolve_model

    all_records, root = records if records is not None else load_records(manifest)
    chosen = [r for r in all_records if r.split == split]
    if not chosen:
        raise ValueError(f"no records in split {split!r}")
    model = MediSee.from_pretrained(resolve_model(model_dir)).to(device)
    ontology = Ontology.load()
    # What each kind of exam can show, from every split: a test image's kind is judged by
    # all the structures the data labels on that kind.
    shown = structures_by_exam(all_records, ontology)
    cache = None
    if cache_dir is not None:
        cache = EmbeddingCache(cache_dir, encoder_fingerprint(model.segmenter))
        cache.precompute(model.segmenter, [root / r.image for r in chosen], progress=progress)
    report = evaluate(
        model,
        chosen,
        root,
        modes=modes,
        kinds=kinds,
        cache=cache,
        batch_size=batch_size,
        max_examples=max_examples,
        constrain_answer=constrain_answer,
        constrain_to_exam=constrain_to_exam,
        question_prior=question_prior,
        ontology=ontology,
        shown=shown,
        progress=progress,
    )
    summaries: dict[str, dict[str, Any]] = {
        f"medisee ({m.replace('_', '-')})": s for m, s in report.summaries.items()
    }
    examples = list(report.examples)
    handwritten = handwritten_items(chosen, questions) if questions else []
    if handwritten:
        written = evaluate_items(
            model,
            handwritten,
            root,
            modes=("generated",),
            cache=cache,
            batch_size=batch_size,
            constrain_answer=constrain_answer,
            constrain_to_exam=constrain_to_exam,
            question_prior=question_prior,
            ontology=ontology,
            shown=shown,
            progress=progress,
        )
        summaries[f"medisee (generated, {HANDWRITTEN})"] = written.summaries["generated"]
        examples.extend(written.examples)
    if baselines:
        if model.config.mask.weights is None:
            raise ValueError(
                "the model's segmenter has no pretrained weights to build baselines from"
            )
        # Only the pretrained segmenter: the baselines involve no language model.
        reference = build_segmenter(model.config.mask).to(device).eval()
        reference_cache = None
        if cache_dir is not None:  # as ``cache``
            reference_cache = EmbeddingCache(cache_dir, encoder_fingerprint(reference))
        common: dict[str, Any] = {
            "prior_records": [r for r in all_records if r.split == prior_split],
            "ontology": ontology,
            "cache": reference_cache,
            "batch_size": batch_size,
            "device": device,
            "progress": progress,
        }
        summaries.update(
            run_baselines(
                reference,
                chosen,
                root,
                which=baselines,
                kinds=kinds,
                max_examples=max_examples,
                **common,
            )
        )
        if handwritten and "label_match" in baselines:
            matched = run_baselines(
                reference, chosen, root, which=("label_match",), items=handwritten, **common
            )
            summaries[f"label_match ({HANDWRITTEN})"] = matched["label_match"]
    out.mkdir(parents=True, exist_ok=True)
    EvalReport(summaries, examples).save(out)
    (out / "metrics.md").write_text(markdown_table(summaries))
    (out / "summary.json").write_text(
        json.dumps({k: v["overall"].as_dict() for k, v in summaries.items()}, indent=1)
    )
    return summaries
