"""``medisee predict`` and ``medisee chat``.

predict writes, per item, ``<out>/<id>/{mask.png, box.json, answer.txt, overlay.png}``
(a volume, NIfTI or a directory of one DICOM series, with ``--all-slices``:
``mask.nii.gz`` on the source grid, ``boxes.json`` per slice, the overlay of the slice with
the largest mask) and one ``predictions.jsonl``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

CHAT_HELP = "commands: /reset (forget the conversation), /save [DIR], /quit"


def register(subparsers: argparse._SubParsersAction) -> None:
    predict = subparsers.add_parser(
        "predict",
        help="mask, box and explanation for images and a question",
        description="Answer a question about images: writes mask PNG (or NIfTI), box JSON, "
        "overlay PNG and the explanation per image, and predictions.jsonl.",
    )
    predict.add_argument(
        "--model",
        default=None,
        help="checkpoint directory, released model name or Hub id (default: the released "
        "medisee-lite)",
    )
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--image",
        nargs="+",
        help="image file(s): PNG/JPEG/TIFF, DICOM, NIfTI; a directory is one DICOM series, "
        "read as a volume",
    )
    source.add_argument(
        "--images", help="a directory: every image file in it, each on its own (recursive)"
    )
    source.add_argument(
        "--manifest",
        help="JSONL, one item per line: {image, question | questions, id?, axis?, slice?, "
        "window?}; image paths relative to the manifest's directory",
    )
    predict.add_argument("--question", help="the question (required unless the manifest has them)")
    predict.add_argument("--out", required=True, help="output directory")
    _add_read_arguments(predict)
    predict.add_argument(
        "--all-slices",
        action="store_true",
        help="a volume (NIfTI, or a directory of one DICOM series): predict every slice "
        "along --axis and write a label volume on its grid (mask.nii.gz)",
    )
    predict.add_argument("--no-overlay", action="store_true", help="skip the overlay PNGs")
    predict.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_model_arguments(predict)
    predict.set_defaults(func=run_predict)

    chat = subparsers.add_parser(
        "chat",
        help="talk about one image in the terminal",
        description=f"Interactive conversation about one image (stdin). {CHAT_HELP}.",
    )
    chat.add_argument(
        "--model",
        default=None,
        help="checkpoint directory, released model name or Hub id (default: the released "
        "medisee-lite)",
    )
    chat.add_argument(
        "--image",
        required=True,
        help="PNG/JPEG/TIFF, DICOM or NIfTI file, or a directory of one DICOM series",
    )
    chat.add_argument(
        "--no-knowledge",
        dest="knowledge",
        action="store_false",
        help="answer every turn with the fine-tuned model; by default a turn with no new "
        "target is answered by the pretrained LM's own knowledge, where the model has one",
    )
    chat.add_argument(
        "--out", default="medisee-chat", help="where /save writes (default: %(default)s)"
    )
    _add_read_arguments(chat)
    _add_model_arguments(chat)
    chat.set_defaults(func=run_chat)


def _add_read_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--window",
        default="auto",
        help="CT/MR window: preset (lung, abdomen, brain, bone...), composite "
        "(lung_mediastinum_bone: one window per colour channel), CENTER,WIDTH, auto (a CT is "
        "shown as the model's training CT was) or stretch",
    )
    parser.add_argument(
        "--axis",
        default="axial",
        choices=("axial", "coronal", "sagittal"),
        help="slicing axis of a volume (NIfTI, DICOM series directory)",
    )
    parser.add_argument(
        "--slice",
        type=int,
        default=None,
        help="slice index of a volume along --axis (default: the middle one)",
    )
    parser.add_argument("--frame", type=int, default=0, help="frame of a multi-frame DICOM")
    parser.add_argument(
        "--series",
        default=None,
        metavar="UID",
        help="the SeriesInstanceUID to read from a directory holding several series",
    )
    parser.add_argument("--modality", default=None, help="override the modality (e.g. CT)")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4, help="rows per generation batch")
    parser.add_argument("--seed", type=int, default=None, help="seed (with --sample)")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument(
        "--free-answer",
        action="store_true",
        help="generate the answer sentence freely (default: a first question's answer names "
        "one of the structures the model was trained on)",
    )
    parser.add_argument(
        "--any-exam",
        action="store_true",
        help="let that answer name any trained structure (default: with an exam head, only "
        "those trained on the image's kind of exam)",
    )
    parser.add_argument(
        "--no-question-prior",
        action="store_true",
        help="do not weigh that answer's labels by the question prior (default: with one, "
        "they are)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )


def _read_options(args: argparse.Namespace, item: dict[str, Any] | None = None):
    from medisee.data.io import parse_window
    from medisee.inference.inputs import ReadOptions

    item = item or {}
    window = item.get("window", args.window)
    return ReadOptions(
        window=parse_window(window) if isinstance(window, str) else tuple(window),
        axis=item.get("axis", args.axis),
        index=item.get("slice", args.slice),
        frame=int(item.get("frame", args.frame)),
        modality=item.get("modality", args.modality),
        series_uid=item.get("series", args.series),
    )


def _load_predictor(args: argparse.Namespace):
    from medisee.inference.predictor import GenerationOptions, Predictor

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    generation = GenerationOptions(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        constrain_answer=not args.free_answer,
        constrain_to_exam=not args.any_exam,
        question_prior=not args.no_question_prior,
    )
    return Predictor.from_pretrained(
        args.model, device=args.device, generation=generation, batch_size=args.batch_size
    )


# ---------------------------------------------------------------------------- predict
@dataclass
class Item:
    """One (image, question) to answer; ``key`` names its output directory."""

    key: str
    image: Path
    question: str
    fields: dict[str, Any]


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return slug or "item"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".img.gz"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _items(args: argparse.Namespace) -> list[Item]:
    from medisee.data.jsonl import iter_jsonl
    from medisee.inference.inputs import is_image_path

    raw: list[tuple[str | None, Path, list[str], dict[str, Any]]] = []
    if args.manifest:
        manifest = Path(args.manifest)
        for number, entry in iter_jsonl(manifest):
            if not isinstance(entry, dict):
                raise ValueError(f"{manifest}:{number}: not a JSON object")
            image = entry.get("image") or entry.get("image_path")
            if not image:
                raise ValueError(f"{manifest}:{number}: no 'image'")
            questions = _manifest_questions(entry) or ([args.question] if args.question else [])
            if not questions:
                raise ValueError(f"{manifest}:{number}: no question (give --question)")
            path = Path(image) if Path(image).is_absolute() else manifest.parent / image
            raw.append((entry.get("id"), path, questions, entry))
    else:
        if not args.question:
            raise ValueError("--question is required with --image/--images")
        if args.images:
            folder = Path(args.images)
            if not folder.is_dir():
                raise FileNotFoundError(f"no such directory: {folder}")
            paths = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_path(p))
            if not paths:
                raise ValueError(f"no image files in {folder}")
        else:
            paths = [Path(p) for p in args.image]
        raw = [(None, path, [args.question], {}) for path in paths]
    items: list[Item] = []
    used: set[str] = set()
    for key, path, questions, fields in raw:
        base = _slug(str(key) if key is not None else _stem(path))
        for number, question in enumerate(questions):
            name = base if len(questions) == 1 else f"{base}_q{number}"
            unique, suffix = name, 1
            while unique in used:
                unique, suffix = f"{name}_{suffix}", suffix + 1
            used.add(unique)
            items.append(Item(unique, path, question, fields))
    return items


def _manifest_questions(entry: dict[str, Any]) -> list[str]:
    """``question``, ``questions``, or the QA items of a medisee data record."""
    if entry.get("question"):
        return [str(entry["question"])]
    if entry.get("questions"):
        return [str(q) for q in entry["questions"]]
    return [
        str(qa["question"])
        for target in entry.get("targets") or []
        for qa in target.get("qa") or []
        if qa.get("question")
    ]


def _summary(item: Item, prediction, files: dict[str, Path]) -> dict[str, Any]:
    return {
        "id": item.key,
        "image": str(item.image),
        "question": item.question,
        "text": prediction.text,
        "found_target": prediction.found_target,
        "box_xyxy": None if prediction.box is None else [round(v, 3) for v in prediction.box],
        "image_size": list(prediction.image_size),
        "iou": prediction.scores.get("iou"),
        "files": {kind: str(path) for kind, path in files.items()},
    }


def run_predict(args: argparse.Namespace) -> int:
    with _library_progress_bars(not args.quiet):
        return _run_predict(args)


@contextlib.contextmanager
def _library_progress_bars(show: bool) -> Iterator[None]:
    """With ``show`` False, transformers' bars ("Loading weights" of the pretrained LM,
    loaded on first need) are off too, and back on afterwards."""
    from transformers.utils import logging as transformers_logging

    hide = not show and transformers_logging.is_progress_bar_enabled()
    if hide:
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if hide:
            transformers_logging.enable_progress_bar()


def _run_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from medisee.inference.inputs import is_volume_path

    items = _items(args)
    missing = [str(item.image) for item in items if not item.image.exists()]
    if missing:
        raise FileNotFoundError(f"no such image(s): {', '.join(missing[:5])}")
    predictor = _load_predictor(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    volumes = [i for i in items if args.all_slices and is_volume_path(i.image)]
    flat = [i for i in items if i not in volumes]
    count = 0
    with (
        open(out / "predictions.jsonl", "w") as summary,
        tqdm(total=len(items), desc="predict", unit="img", disable=args.quiet) as bar,
    ):

        def pairs() -> Iterator[tuple[Any, str]]:
            # Questions about the same image follow each other: decode and encode it once.
            last_key, state = None, None
            for item in flat:
                options = _read_options(args, item.fields)
                key = (item.image, options)
                if key != last_key:
                    last_key, state = key, predictor.prepare(item.image, options)
                yield state, item.question

        # The predictions first: zip then asks the generator once more after the last
        # one, and it reports its last batch to the bar before it stops.
        for prediction, item in zip(predictor.predict_iter(pairs(), progress=bar.update), flat):
            files = prediction.save(out / item.key, overlay=not args.no_overlay)
            summary.write(json.dumps(_summary(item, prediction, files)) + "\n")
            count += 1
        for item in volumes:
            files = _predict_volume(predictor, args, item, out / item.key, bar)
            summary.write(json.dumps({"id": item.key, "image": str(item.image), **files}) + "\n")
            bar.update(1)
            count += 1
    print(f"wrote {count} prediction(s) to {out}", file=sys.stderr)
    return 0


def _predict_volume(predictor, args, item: Item, directory: Path, bar) -> dict[str, Any]:
    from medisee.inference.volume import predict_volume

    options = _read_options(args, item.fields)
    result = predict_volume(
        predictor,
        item.image,
        item.question,
        axis=options.axis,
        window=options.window,
        modality=options.modality,
        series_uid=options.series_uid,
    )
    files = {"mask": str(result.save_nifti(directory / "mask.nii.gz"))}
    boxes = directory / "boxes.json"
    payload = {"question": item.question, "axis": result.axis, "slices": result.slice_boxes()}
    boxes.write_text(json.dumps(payload, indent=2) + "\n")
    files["boxes"] = str(boxes)
    found = [p for p in result.slices if p.found_target]
    if found and not args.no_overlay:
        best = max(found, key=lambda p: p.scores["mask_pixels"])
        files["overlay"] = str(best.save_overlay(directory / "overlay.png"))
        best.save_text(directory / "answer.txt")
    return {
        "question": item.question,
        "slices": len(result.slices),
        "slices_with_target": len(found),
        "files": files,
    }


# ------------------------------------------------------------------------------- chat
def run_chat(
    args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None
) -> int:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    from transformers.utils import logging as transformers_logging

    # The LMs that load on first need (the question prior's, the knowledge LM) would
    # otherwise draw a weight-loading progress bar into the dialogue.
    transformers_logging.disable_progress_bar()
    predictor = _load_predictor(args)
    state = predictor.set_image(args.image, _read_options(args))
    chat = predictor.conversation(state, knowledge=args.knowledge)
    height, width = state.size
    interactive = stdin.isatty()

    def say(text: str) -> None:
        print(text, file=stdout, flush=True)

    say(f"medisee chat: {args.image} ({width}x{height} px). {CHAT_HELP}.")
    saves = 0
    while True:
        if interactive:
            print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:  # EOF
            break
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, rest = text.partition(" ")
            if command in ("/quit", "/exit"):
                break
            if command == "/reset":
                chat.reset()
                say("(conversation reset; same image)")
            elif command == "/save":
                if not chat.predictions:
                    say("(nothing to save yet)")
                    continue
                saves += 1
                target = Path(rest.strip() or os.path.join(args.out, f"turn{saves:03d}"))
                chat.predictions[-1].save(target)
                (target / "conversation.json").write_text(
                    json.dumps({"image": str(args.image), "turns": chat.transcript()}, indent=2)
                )
                say(f"(saved to {target})")
            elif command == "/help":
                say(CHAT_HELP)
            else:
                say(f"unknown command {command}; {CHAT_HELP}")
            continue
        try:
            prediction = chat.ask(text)
        except ValueError as error:
            say(f"error: {error}")
            continue
        source = (
            " (from the language model's knowledge)"
            if prediction.scores.get("reply") == "knowledge"
            else ""
        )
        say(f"medisee> {prediction.text}{source}")
        if prediction.box is not None:  # found_target
            x0, y0, x1, y1 = prediction.box
            iou = prediction.scores.get("iou")
            say(
                f"  [target: box ({x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}) px, "
                f"mask {prediction.scores['mask_pixels']} px, iou estimate {iou:.2f}]"
            )
        else:
            say("  [no target]")
    return 0
