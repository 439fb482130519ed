"""How well can a reasoning question be mapped to its structure from the text alone?

A multinomial naive Bayes over the question's words and word bigrams plus the image's
modality, fitted on the training split's reasoning questions, predicts the label of each
test question. It sees no pixels, so it measures how much of the naming task the text (and
the modality) decides; the ``lite`` LM's "named" rate is comparable.

    python benchmarks/naming_reference.py --manifest outputs/demo/data/manifest.jsonl

Prints accuracy overall and by (perspective, length), and writes JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

_WORD = re.compile(r"[a-z']+")


def features(question: str, modality: str) -> set[str]:
    words = _WORD.findall(question.lower())
    return set(words) | {f"{a}_{b}" for a, b in zip(words, words[1:])} | {f"MOD={modality}"}


def questions(records, split: str) -> list[tuple[set[str], str, str]]:
    return [
        (features(qa.question, record.modality), target.label, f"{qa.perspective}/{qa.length}")
        for record in records
        if record.split == split
        for target in record.targets
        for qa in target.qa
        if qa.kind == "reasoning"
    ]


class NaiveBayesNamer:
    def __init__(self, examples: list[tuple[set[str], str, str]], smoothing: float = 0.1):
        self.prior = Counter(label for _, label, _ in examples)
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)
        for feats, label, _ in examples:
            self.counts[label].update(feats)
        self.totals = {label: sum(c.values()) for label, c in self.counts.items()}
        self.vocabulary = len({f for c in self.counts.values() for f in c})
        self.smoothing = smoothing

    def predict(self, feats: set[str]) -> str:
        def score(label: str) -> float:
            denominator = self.totals[label] + self.smoothing * self.vocabulary
            return math.log(self.prior[label]) + sum(
                math.log((self.counts[label][f] + self.smoothing) / denominator) for f in feats
            )

        return max(sorted(self.prior), key=score)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", help="JSON file for the results")
    args = parser.parse_args()

    from medisee.data.manifest import load_records

    records, _ = load_records(args.manifest)
    namer = NaiveBayesNamer(questions(records, "train"))
    hits: dict[str, list[bool]] = defaultdict(list)
    for feats, label, group in questions(records, args.split):
        correct = namer.predict(feats) == label
        hits[group].append(correct)
        hits["overall"].append(correct)
    result = {
        group: {"count": len(v), "named": round(sum(v) / len(v), 4)}
        for group, v in sorted(hits.items())
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({"manifest": args.manifest, **result}, indent=1))


if __name__ == "__main__":
    main()
