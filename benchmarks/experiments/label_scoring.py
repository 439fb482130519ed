"""How the whole LM alone reads a question (``medisee.model.label_knowledge``): top-1 label
within the image's exam on the template questions that name a structure by what it is or
does (reasoning, attribute perspective), under three scorings of a label's name: the sum of
its tokens' log-probabilities, their mean (``per_token``), and the sum less the same
label's score after a content-free question (PMI).

    python benchmarks/experiments/label_scoring.py --model outputs/demo/run/model \\
        --manifest outputs/demo/data/manifest.jsonl --splits val test \\
        --json benchmarks/experiments/label_scoring.json

The position questions ("which abnormality lies in the lower part of the image?") are left
out: the text alone cannot answer them. The hand-written questions are not read here, so
the validation rows can choose a scoring.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

NEUTRAL = "Which structure is shown in this image?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--splits", nargs="+", default=["val"])
    parser.add_argument("--json", required=True)
    args = parser.parse_args()

    from medisee.data.manifest import load_records
    from medisee.data.schema import exam_kind
    from medisee.model.label_knowledge import LabelScorer
    from medisee.model.medisee import MediSee

    model = MediSee.from_pretrained(args.model)
    exams = model.config.exams
    causal, tokenizer = model.prior_language_model()
    summed = LabelScorer(causal, tokenizer)
    mean = LabelScorer(causal, tokenizer, per_token=True)
    neutral = {
        kind: summed.log_probs([NEUTRAL], [list(labels)])[0] for kind, labels in exams.items()
    }
    records, _ = load_records(args.manifest)
    command = shlex.join(["python", "benchmarks/experiments/label_scoring.py", *sys.argv[1:]])
    result: dict = {"command": command, "splits": {}}
    for split in args.splits:
        items: dict[tuple[str, str], str] = {}
        for record in records:
            kind = exam_kind(record)
            if record.split != split or kind not in exams:
                continue
            for target in record.targets:
                for qa in target.qa:
                    if qa.kind == "reasoning" and qa.perspective == "attribute":
                        items[(" ".join(qa.question.split()), kind)] = target.label
        questions = [question for question, _ in items]
        allowed = [list(exams[kind]) for _, kind in items]
        labels = list(items.values())
        hits = {"sum": 0, "per_token": 0, "pmi": 0}
        for (_, kind), label, by_sum, by_mean in zip(
            items, labels, summed.log_probs(questions, allowed), mean.log_probs(questions, allowed)
        ):
            pmi = {name: value - neutral[kind][name] for name, value in by_sum.items()}
            hits["sum"] += max(by_sum, key=by_sum.__getitem__) == label
            hits["per_token"] += max(by_mean, key=by_mean.__getitem__) == label
            hits["pmi"] += max(pmi, key=pmi.__getitem__) == label
        result["splits"][split] = {
            "questions": len(items),
            **{name: count / max(len(items), 1) for name, count in hits.items()},
        }
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
