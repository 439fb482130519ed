"""Which of SmolLM2's layers the question prior reads: a sweep on the validation split.

For each layer in ``--layers``, fits the question prior's classifier
(``medisee.model.question_prior.fit_question_prior``, as ``medisee train`` does) on the
same draw of training questions (``medisee.train.prior_fit.training_questions``), with
features pooled from that layer's residual stream, and scores how often its top label,
within the labels of the question's exam, is the question's own on the validation and
test splits' template questions. The hand-written questions are reported beside them,
never used to choose. Also times the encoder truncated to each layer (512 questions).

    python benchmarks/experiments/question_prior_layers.py \\
        --manifest outputs/demo/data/manifest.jsonl \\
        --json benchmarks/experiments/question_prior_layers.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def main() -> int:
    from medisee.data.manifest import load_records
    from medisee.data.schema import exam_kind
    from medisee.evaluate.handwritten import load_questions
    from medisee.model.pretrained_lm import resolve_pretrained_lm
    from medisee.model.question_prior import QuestionEncoder, QuestionPrior, fit_question_prior
    from medisee.train.exam_fit import exams_of
    from medisee.train.prior_fit import allowed_labels, training_questions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--encoder", default="smollm2")
    parser.add_argument("--layers", type=int, nargs="+", default=[3, 6, 12, 18, 24, 30])
    parser.add_argument("--questions", type=int, default=4000)
    parser.add_argument("--json", help="write the sweep here")
    args = parser.parse_args()

    records, _ = load_records(args.manifest)
    train = [r for r in records if r.split == "train"]
    exams = exams_of(train)
    labels = sorted({label for kind_labels in exams.values() for label in kind_labels})
    index = {label: i for i, label in enumerate(labels)}
    handwritten = load_questions()
    sets = {"train": training_questions(train, args.questions, seed=0)}
    for split in ("val", "test"):
        chosen = [r for r in records if r.split == split]
        sets[split] = [
            (qa.question, t.label, exam_kind(r)) for r in chosen for t in r.targets for qa in t.qa
        ]
        sets[f"{split}, hand-written"] = [
            (q.question, t.label, exam_kind(r))
            for r in chosen
            for t in r.targets
            for q in handwritten
            if q.label == t.label
        ]
    sets = {name: [row for row in rows if row[1] in index] for name, rows in sets.items()}

    directory = resolve_pretrained_lm(args.encoder)
    deepest = QuestionEncoder(directory, max(args.layers), "cpu")
    streams: dict[int, list[torch.Tensor]] = {layer: [] for layer in args.layers}

    def keep(layer: int):
        def hook(_module, _inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            streams[layer].append(hidden.detach())

        return hook

    for layer in args.layers:
        deepest.model.layers[layer - 1].register_forward_hook(keep(layer))

    def features(texts: list[str]) -> dict[int, torch.Tensor]:
        for stream in streams.values():
            stream.clear()
        out: dict[int, list[torch.Tensor]] = {layer: [] for layer in args.layers}
        for start in range(0, len(texts), 32):
            batch = deepest.tokenizer(texts[start : start + 32], return_tensors="pt", padding=True)
            with torch.no_grad():
                deepest.model(**batch)
            weights = batch["attention_mask"].unsqueeze(-1).float()
            for layer in args.layers:
                hidden = streams[layer].pop()
                out[layer].append((hidden * weights).sum(1) / weights.sum(1))
        return {layer: torch.cat(rows) for layer, rows in out.items()}

    pooled = {name: features([q for q, _, _ in rows]) for name, rows in sets.items()}
    result: dict = {"command": " ".join(sys.argv), "counts": {k: len(v) for k, v in sets.items()}}
    for layer in args.layers:
        prior = QuestionPrior(deepest.width, len(labels))
        targets = torch.tensor([index[label] for _, label, _ in sets["train"]])
        fit = fit_question_prior(
            prior, pooled["train"][layer], targets, allowed_labels(sets["train"], labels, exams)
        )
        row: dict = {"train_accuracy": fit["accuracy"]}
        for name, rows in sets.items():
            if name == "train":
                continue
            truth = torch.tensor([index[label] for _, label, _ in rows])
            allowed = allowed_labels(rows, labels, exams)
            top = prior.log_probs(pooled[name][layer], allowed).argmax(-1)
            row[name] = float((top == truth).float().mean())
        encoder = QuestionEncoder(directory, layer, "cpu")
        timed = [q for q, _, _ in sets["train"][:512]]
        started = time.perf_counter()
        encoder.encode(timed)
        row["encode_seconds_per_1000"] = (time.perf_counter() - started) * 1000 / len(timed)
        result[f"layer {layer}"] = row
        print(layer, json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
