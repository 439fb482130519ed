"""Region follow-ups with the conversation in the prompt, or asked as a first turn.

On every test image with two or more targets, the first target's first reasoning
question opens a conversation; the model's reply to it becomes the history. Then each
other target B of the image is asked for ("Segment the B." and "Where is the B?"), once
after that history, as ``medisee chat`` asked follow-ups before, and once alone, as a
first turn. Every training example is one turn, so a prompt with history is one the
model never saw. Generated answers are scored like ``medisee eval`` scores them: Dice
against B's mask and whether the answer sentence names B.

With ``--follow-ups which``, the follow-ups are B's own reasoning questions that ask which
structure of the image is meant without a region word ("Which organ in this CT scan can
be damaged by viral hepatitis?"; ``medisee.inference.knowledge.asks_which_structure``).
``medisee chat`` asked those with the conversation and its answer free, as the
``history`` row does, before it asked them as first turns.

    python benchmarks/experiments/follow_up_turns.py \\
        --model src/medisee/assets/models/medisee-lite \\
        --manifest outputs/data/manifest.jsonl --split test \\
        --json benchmarks/experiments/follow_up_turns.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

FOLLOW_UPS = ("Segment the {label}.", "Where is the {label}?")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument(
        "--follow-ups",
        choices=("region", "which"),
        default="region",
        help="'region': Segment/Where is the B; 'which': B's reasoning questions that ask "
        "which structure of the image is meant, with no region word",
    )
    args = parser.parse_args()

    import numpy as np

    from medisee.data.manifest import load_records
    from medisee.data.masks import load_mask
    from medisee.data.ontology import Ontology
    from medisee.evaluate.metrics import score_target
    from medisee.evaluate.naming import names_structure
    from medisee.inference.knowledge import asks_which_structure, names_region_request
    from medisee.inference.predictor import Predictor, PredictRequest

    ontology = Ontology.load()

    records, root = load_records(args.manifest)
    chosen = [r for r in records if r.split == args.split and len(r.targets) >= 2]
    predictor = Predictor.from_pretrained(args.model, batch_size=args.batch_size)
    started = time.perf_counter()
    states = {r.id: predictor.prepare(root / r.image) for r in chosen}
    predictor.encode(list(states.values()))
    openings = []
    for record in chosen:
        first = next(qa for qa in record.targets[0].qa if qa.kind == "reasoning")
        openings.append(PredictRequest(states[record.id], first.question))
    replies = predictor.run(openings)
    requests: dict[str, list[PredictRequest]] = {"history": [], "first_turn": []}
    asked = []
    for record, opening, reply in zip(chosen, openings, replies):
        history = ((opening.question, reply.raw_text),)
        for target in record.targets[1:]:
            if args.follow_ups == "region":
                questions = [form.format(label=target.label) for form in FOLLOW_UPS]
            else:
                questions = [
                    qa.question
                    for qa in target.qa
                    if qa.kind == "reasoning"
                    and asks_which_structure(qa.question)
                    and not names_region_request(qa.question)
                ]
            for question in questions:
                state = states[record.id]
                requests["history"].append(PredictRequest(state, question, history))
                requests["first_turn"].append(PredictRequest(state, question))
                asked.append((record, target))
    truths = [load_mask(t.mask, root, shape=(r.height, r.width)) for r, t in asked]
    result: dict = {"command": " ".join(["python", *sys.argv]), "follow_ups": len(asked)}
    # Before ``asks_which_structure``, chat generated such a follow-up freely.
    free = dataclasses.replace(predictor.generation, constrain_answer=False)
    for mode, batch in requests.items():
        options = free if mode == "history" and args.follow_ups == "which" else None
        dice, named = [], []
        for (_, target), truth, prediction in zip(asked, truths, predictor.run(batch, options)):
            mask = prediction.mask if prediction.found_target else None
            score = score_target(mask, truth, prediction.box, target.box_xyxy)
            dice.append(score.dice)
            named.append(names_structure(prediction.text, target.label, ontology))
        result[mode] = {"dice": float(np.mean(dice)), "named_rate": float(np.mean(named))}
        print(mode, json.dumps(result[mode]))
    result["seconds"] = time.perf_counter() - started
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
