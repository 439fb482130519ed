"""A selection set for unfamiliar questions, made from the training split alone: how the
question prior's classifier and the whole LM (``medisee.model.label_knowledge``) should be
weighed where the classifier has not read what a question says.

    python benchmarks/experiments/held_out_facts.py --model outputs/demo/run/model \\
        --manifest outputs/demo/data/manifest.jsonl --draws 0 1 2 \\
        --json benchmarks/experiments/held_out_facts.json

The template questions of validation and test are the training questions verbatim, so
they cannot tell how a rule reads a question unlike any of them; the hand-written
questions can, but they measure generalisation and choose nothing. Here, per draw, a
third of the labels lose their attribute questions (what the structure is, does, or
suffers from) from the classifier's fit: it keeps their names and positions, and every
other label's facts. Those held-out questions then ask, in template words, about facts
the classifier never saw for their label (a right lung asked by what the left lung was
taught by): the case where it extrapolates. The classifier is refitted without them
(the trainer's ``fit_question_prior``, with familiarity), the whole LM scores each
question's exam labels, and each rule's top-1 label within the exam is counted, on all
held-out questions and on those the refitted prior finds unfamiliar.

Rules: ``p_classifier ** a * p_lm`` for each ``a`` of ``--exponents`` (0 is the LM
alone), under each LM prompt of ``--variants``: ``LabelScorer``'s own (``plain``), the
same with the exam's labels listed in the system turn (``options``), and the same after
``--examples`` worked examples (``examples``): short attribute questions of the same exam
about other labels, none held out, each answered as a label is scored; the noisy channel
(``channel``, ``ChannelScorer``: the LM told the label and scored on writing the
question), and the product of the plain reading and the channel (``plain+channel``,
the channel raised to each of ``--channel-weights``); ``plain+channel-calibrated`` takes
from each label's channel score its mean over ``--references`` questions of the same
exam about labels not held out (the channel's bias for that label). Each of
``--side-penalties`` adds every rule again with that log-probability taken from the
labels of the side opposite the one a question names (``medisee.model.laterality``;
``QuestionPriorConfig.side_penalty``), as ``<rule>+side <penalty>``; each of
``--side-bonuses`` adds those again with that log-probability given to the labels of the
named side, as ``<rule>+side <penalty> +<bonus>``. With several
``--weight-decays`` the classifier is fitted once per decay (the trainer's is 0.01) and
each rule is counted for each. Accuracies
are kept as ``[hits, count]`` per draw and pooled over the draws. Rerun with other
``--draws`` and the same ``--json`` to add draws.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
from collections import defaultdict
from pathlib import Path


def pooled(draws) -> dict[str, dict[str, float]]:
    """Each rule's accuracy over all draws' questions: ``{rule: {part: hits / count}}``
    from the draws' ``[hits, count]`` pairs."""
    totals: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for draw in draws:
        for rule, parts in draw["accuracy"].items():
            for part, (hits, count) in parts.items():
                totals[rule][part][0] += hits
                totals[rule][part][1] += count
    return {
        rule: {part: hits / count for part, (hits, count) in parts.items() if count}
        for rule, parts in totals.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--draws", type=int, nargs="+", default=[0])
    parser.add_argument("--share", type=float, default=1 / 3, help="labels held out per draw")
    parser.add_argument("--per-draw", type=int, default=160, help="questions scored per draw")
    parser.add_argument("--exponents", default="1,0.75,0.5,0.25,0")
    parser.add_argument("--variants", default="plain,options", help="LM prompts to compare")
    parser.add_argument(
        "--weight-decays", default="0.01", help="the classifier fit's AdamW weight decays"
    )
    parser.add_argument("--examples", type=int, default=3, help="worked examples per exam")
    parser.add_argument(
        "--channel-weights", default="1", help="the channel's exponents in plain+channel"
    )
    parser.add_argument(
        "--references", type=int, default=16, help="questions per exam for the channel's bias"
    )
    parser.add_argument(
        "--side-penalties", default="", help="penalties for the other side's labels"
    )
    parser.add_argument("--side-bonuses", default="", help="bonuses for the named side's labels")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()

    import torch

    from medisee.data.manifest import load_records
    from medisee.data.schema import exam_kind
    from medisee.model.label_knowledge import SYSTEM, ChannelScorer, LabelScorer
    from medisee.model.laterality import label_side, question_side
    from medisee.model.medisee import MediSee
    from medisee.model.question_prior import QuestionPrior, fit_question_prior
    from medisee.train.prior_fit import allowed_labels

    exponents = [float(v) for v in args.exponents.split(",")]
    decays = [float(v) for v in args.weight_decays.split(",")]
    model = MediSee.from_pretrained(args.model)
    if model.config.question_prior is None:
        raise SystemExit(f"{args.model} has no question prior")
    labels = list(model.config.labels)
    index = {label: i for i, label in enumerate(labels)}
    exams = model.config.exams
    encoder = model.question_encoder()
    causal, tokenizer = model.prior_language_model()
    plain = LabelScorer(causal, tokenizer)

    records, _ = load_records(args.manifest)
    # (question, label, exam kind) -> whether it states a fact of the label.
    pool: dict[tuple[str, str, str], bool] = {}
    # exam kind -> its short attribute questions, (question, label): worked examples
    short_facts: dict[str, dict[tuple[str, str], None]] = defaultdict(dict)
    for record in records:
        if record.split != "train":
            continue
        kind = exam_kind(record)
        for target in record.targets:
            for qa in target.qa:
                key = (" ".join(qa.question.split()), target.label, kind)
                fact = qa.kind == "reasoning" and qa.perspective == "attribute"
                pool[key] = pool.get(key, False) or fact
                if fact and qa.length == "short":
                    short_facts[kind][(key[0], target.label)] = None
    questions = list(pool)
    features = encoder.encode([q for q, _, _ in questions])
    allowed = allowed_labels(questions, labels, exams)
    with_facts = sorted({label for (_, label, _), fact in pool.items() if fact})

    command = shlex.join(["python", "benchmarks/experiments/held_out_facts.py", *sys.argv[1:]])
    result: dict = {"commands": [], "training_questions": len(questions), "draws": {}}
    out = Path(args.json)
    if out.exists():  # more draws for the same results: the earlier ones are kept
        result = json.loads(out.read_text())
    result["commands"].append(command)
    for draw in args.draws:
        if str(draw) in result["draws"]:
            continue
        rng = random.Random(f"held-out-facts-{draw}")
        held = set(rng.sample(with_facts, max(1, round(args.share * len(with_facts)))))
        out_rows = [
            i for i, (_, label, _) in enumerate(questions) if label in held and pool[questions[i]]
        ]
        keep = sorted(set(range(len(questions))) - set(out_rows))
        targets = torch.tensor([index[questions[i][1]] for i in keep])
        dev = sorted(rng.sample(out_rows, min(args.per_draw, len(out_rows))))
        dev_features = features[dev]
        fits: dict[float, dict] = {}
        classifiers: dict[float, torch.Tensor] = {}
        for decay in decays:
            prior = QuestionPrior(features.shape[1], len(labels), familiarity=True)
            fits[decay] = fit_question_prior(
                prior, features[keep], targets, allowed[keep], weight_decay=decay
            )
            with torch.no_grad():  # the familiarity does not depend on the decay
                classifiers[decay] = prior.log_probs(dev_features, allowed[dev])
                unfamiliar = prior.unfamiliar(dev_features)
                distance = prior.distance(dev_features)
        dev_questions = [questions[i][0] for i in dev]
        dev_allowed = [[labels[j] for j in allowed[i].nonzero().flatten().tolist()] for i in dev]
        variants = args.variants.split(",")
        scorings = {}
        products = any(v.startswith("plain+") for v in variants)
        if "plain" in variants or products:
            scorings["plain"] = plain.log_probs(dev_questions, dev_allowed)
        if "channel" in variants or products:
            scorings["channel"] = ChannelScorer(causal, tokenizer).log_probs(
                dev_questions, dev_allowed
            )
        channel_weights = [float(v) for v in args.channel_weights.split(",")]
        if "plain+channel-calibrated" in variants:
            # The channel's bias for each label: its mean channel score over reference
            # questions of the same exam about labels not held out (none asked here).
            reference_rng = random.Random(f"held-out-facts-{draw}-reference")
            asked_rows = set(dev)
            by_set: dict[tuple[str, ...], list[int]] = defaultdict(list)
            for row in range(len(dev)):
                by_set[tuple(dev_allowed[row])].append(row)
            calibrated: list[dict[str, float] | None] = [None] * len(dev)
            for names, rows in by_set.items():
                kind = questions[dev[rows[0]]][2]
                candidates = [
                    i
                    for i, (q, label, k) in enumerate(questions)
                    if k == kind
                    and pool[questions[i]]
                    and label not in held
                    and i not in asked_rows
                ]
                reference = reference_rng.sample(candidates, min(args.references, len(candidates)))
                scored_reference = ChannelScorer(causal, tokenizer).log_probs(
                    [questions[i][0] for i in reference], [list(names)] * len(reference)
                )
                # An exam whose every labelled fact is held out has no reference: no bias.
                bias = {
                    name: sum(r[name] for r in scored_reference) / max(1, len(scored_reference))
                    for name in names
                }
                for row in rows:
                    calibrated[row] = {
                        name: scorings["channel"][row][name] - bias[name] for name in names
                    }
            scorings["channel-calibrated"] = [c for c in calibrated if c is not None]
        for channel_name in ("channel", "channel-calibrated"):
            combined_name = f"plain+{channel_name}"
            if combined_name not in variants:
                continue
            for weight in channel_weights:  # both readings' product, the channel ** weight
                tag = combined_name if weight == 1 else f"{combined_name} x{weight:g}"
                scorings[tag] = [
                    {label: direct[label] + weight * channel[label] for label in direct}
                    for direct, channel in zip(scorings["plain"], scorings[channel_name])
                ]
        for name in ("plain", "channel", "channel-calibrated"):
            if name in scorings and name not in variants:
                del scorings[name]
        if "options" in variants:  # one scorer per label set (the system turn lists them)
            options: list[dict[str, float] | None] = [None] * len(dev)
            by_set: dict[tuple[str, ...], list[int]] = defaultdict(list)
            for row, names in enumerate(dev_allowed):
                by_set[tuple(names)].append(row)
            for names, rows in by_set.items():
                listed = LabelScorer(
                    causal, tokenizer, system=f"{SYSTEM} Choose one of: {', '.join(names)}."
                )
                asked = [dev_questions[r] for r in rows]
                for row, scores in zip(rows, listed.log_probs(asked, [list(names)] * len(rows))):
                    options[row] = scores
            scorings["options"] = [s for s in options if s is not None]
        if "examples" in variants:  # one scorer per exam kind, its examples drawn once
            worked: list[dict[str, float] | None] = [None] * len(dev)
            by_kind: dict[str, list[int]] = defaultdict(list)
            for row, i in enumerate(dev):
                by_kind[questions[i][2]].append(row)
            for kind, rows in sorted(by_kind.items()):
                candidates = [(q, label) for q, label in short_facts[kind] if label not in held]
                chosen: dict[str, str] = {}
                for q, label in rng.sample(candidates, len(candidates)):
                    if label not in chosen and len(chosen) < args.examples:
                        chosen[label] = q
                scorer = LabelScorer(
                    causal, tokenizer, examples=[(q, label) for label, q in chosen.items()]
                )
                asked = [dev_questions[r] for r in rows]
                for row, scores in zip(
                    rows, scorer.log_probs(asked, [dev_allowed[r] for r in rows])
                ):
                    worked[row] = scores
            scorings["examples"] = [s for s in worked if s is not None]

        named = [question_side(q, labels) for q in dev_questions]
        bonuses = [0.0] + [float(v) for v in args.side_bonuses.split(",") if v]
        for penalty in [float(v) for v in args.side_penalties.split(",") if v]:
            for bonus in bonuses:
                for name in [n for n in scorings if "+side" not in n]:
                    sided = []
                    for row, scores in enumerate(scorings[name]):
                        side = {k: label_side(k) for k in scores}
                        sided.append(
                            {
                                k: v
                                - (
                                    penalty
                                    if named[row] and side[k] not in (None, named[row])
                                    else 0
                                )
                                + (bonus if named[row] and side[k] == named[row] else 0)
                                for k, v in scores.items()
                            }
                        )
                    tag = f"+side {penalty:g}" + (f" +{bonus:g}" if bonus else "")
                    scorings[f"{name}{tag}"] = sided
        draw_result: dict = {
            "held_out_labels": sorted(held),
            "fit": fits[decays[0]] if len(decays) == 1 else {f"{d:g}": fits[d] for d in decays},
            "questions": len(dev),
            "unfamiliar": int(unfamiliar.sum()),
            "distance_median": float(distance.median()),
            "accuracy": {},
        }
        truth = [index[questions[i][1]] for i in dev]
        for decay, classifier in classifiers.items():
            # One decay (the default): the keys of the first runs; more: each named.
            tag = "" if len(decays) == 1 else f", weight decay {decay:g}"
            for name, scored in scorings.items():
                lm = torch.full_like(classifier, float("-inf"))
                for row, scores in enumerate(scored):
                    for label, value in scores.items():
                        lm[row, index[label]] = value
                for a in exponents:
                    combined = (
                        a * classifier.masked_fill(classifier.isinf(), 0.0) + lm
                    ).masked_fill(lm.isinf(), float("-inf"))
                    hit = (combined.argmax(-1) == torch.tensor(truth)).tolist()
                    far = [h for h, u in zip(hit, unfamiliar.tolist()) if u]
                    draw_result["accuracy"][f"{name}, a={a:g}{tag}"] = {
                        "all": [sum(hit), len(hit)],
                        "unfamiliar": [sum(far), len(far)],
                    }
            alone = (classifier.argmax(-1) == torch.tensor(truth)).tolist()
            far = [h for h, u in zip(alone, unfamiliar.tolist()) if u]
            draw_result["accuracy"][f"classifier alone{tag}"] = {"all": [sum(alone), len(alone)]}
            if tag:
                draw_result["accuracy"][f"classifier alone{tag}"]["unfamiliar"] = [
                    sum(far),
                    len(far),
                ]
        result["draws"][str(draw)] = draw_result
        result["pooled"] = pooled(result["draws"].values())
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps({"draw": draw, **draw_result}, indent=1), flush=True)
    print(json.dumps(result["pooled"], indent=1))


if __name__ == "__main__":
    main()
