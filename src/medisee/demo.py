"""``medisee demo``: the main job on a fresh machine, offline, on CPU.

1. build the bundled dataset (real MNI152 slices + pydicom samples + phantoms),
2. train the ``lite`` preset (real LiteMedSAM, image embeddings cached once),
3. evaluate on the held-out **test** split — generated (headline) and teacher-forced —
   beside the whole-image-box, label-matching and oracle-box baselines, and on questions
   written by hand (``medisee.evaluate.handwritten``),
4. write ``metrics.md``/``metrics.json``, overlay PNGs and a training-curve plot.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medisee.train.config import TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """The demo's data, evaluation and outputs. Training is the recipe of ``model``
    (``medisee.train.recipes``), exactly what ``medisee train --model <model>`` runs;
    ``steps``, ``batch_size`` and ``grounding_refit_steps`` override it when given."""

    out_dir: str = "outputs/demo"
    # The preset trained, with its recipe (``lite``: the CPU default).
    model: str = "lite"
    num_images: int = 150
    steps: int | None = None
    batch_size: int | None = None
    grounding_refit_steps: int | None = None
    # Eight more template draws per training image: other facts and location descriptors
    # for the same targets (val/test unchanged; docs/data.md).
    train_qa_variants: int = 8
    # None: every reasoning question of the test split (~250 here); a number: a subset
    # spread over the test images (``evaluation_items``).
    eval_examples: int | None = None
    # Questions per generation batch in the evaluation: on 2 CPU cores a batch of 32
    # generated SmolLM2's replies ~2x faster than 8 (docs/training.md); for the `lite`
    # model's validation split 16 took 80 s against 105 s for 32, with the same
    # predictions (both modes, one run each).
    eval_batch_size: int = 16
    overlays: int = 6
    # Also score the hand-written questions that ship with medisee (evaluation only).
    handwritten: bool = True
    # The real patient slices of pyradiomics' sdist (medisee.data.sources.radiomics).
    radiomics: bool = True
    # How those CT slices are shown: a window preset, or a composite with one window per
    # colour channel (``RadiomicsConfig.ct_window``).
    ct_window: str = "lung"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.grounding_refit_steps is not None and self.grounding_refit_steps < 0:
            raise ValueError(
                f"demo grounding_refit_steps must be >= 0, got {self.grounding_refit_steps}"
            )
        for name in ("num_images", "steps", "batch_size", "eval_examples", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"demo {name} must be > 0, got {value}")
        if self.train_qa_variants < 0:
            raise ValueError(f"demo train_qa_variants must be >= 0, got {self.train_qa_variants}")
        if self.num_images < 30:
            raise ValueError("the demo needs >= 30 images to leave a test split")
        from medisee.data.io import check_display_name

        check_display_name(self.ct_window, "demo ct_window")

    def train_config(
        self, manifest: str | Path, output_dir: str | Path, cache_dir: str | Path
    ) -> TrainConfig:
        """The recipe of ``model`` on the data of ``manifest``, on the CPU, with image
        embeddings cached under ``cache_dir``."""
        from medisee.train.recipes import recipe_config

        return recipe_config(
            self.model,
            str(manifest),
            str(output_dir),
            max_steps=self.steps,
            batch_size=self.batch_size,
            grounding_refit_steps=self.grounding_refit_steps,
            seed=self.seed,
            cache_dir=str(cache_dir),
            cpu=True,
        )


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = DemoConfig()
    parser = subparsers.add_parser(
        "demo",
        help="build the bundled data, train lite, evaluate vs baselines (CPU, offline)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default=defaults.out_dir)
    parser.add_argument(
        "--model", default=defaults.model, help="preset to train with its recipe (default: lite)"
    )
    parser.add_argument("--num-images", type=int, default=defaults.num_images)
    parser.add_argument(
        "--steps", type=int, default=defaults.steps, help="joint steps (default: the recipe's)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="default: the recipe's"
    )
    parser.add_argument(
        "--eval-examples",
        type=int,
        default=defaults.eval_examples,
        help="test questions to evaluate (default: all)",
    )
    parser.add_argument(
        "--grounding-refit-steps",
        type=int,
        default=defaults.grounding_refit_steps,
        help="steps training the grounding head alone after the joint steps "
        "(default: the recipe's)",
    )
    parser.add_argument("--overlays", type=int, default=defaults.overlays)
    parser.add_argument(
        "--radiomics",
        action=argparse.BooleanOptionalAction,
        default=defaults.radiomics,
        help="train and test on the real patient scans of the pyradiomics-bhklab sdist "
        "(default: on)",
    )
    parser.add_argument(
        "--ct-window",
        default=defaults.ct_window,
        help="how the real CT slices are shown: a window preset or a composite "
        "(lung_mediastinum_bone: one window per colour channel; default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.set_defaults(func=_run_from_args)


def _run_from_args(args: argparse.Namespace) -> int:
    config = DemoConfig(
        out_dir=args.out,
        model=args.model,
        num_images=args.num_images,
        steps=args.steps,
        batch_size=args.batch_size,
        grounding_refit_steps=args.grounding_refit_steps,
        eval_examples=args.eval_examples,
        overlays=args.overlays,
        radiomics=args.radiomics,
        ct_window=args.ct_window,
        seed=args.seed,
    )
    run_demo(config)
    return 0


def run_demo(config: DemoConfig) -> dict:
    from medisee.data.build import BuildOptions
    from medisee.data.sources.bundled import build_bundled
    from medisee.data.sources.radiomics import RadiomicsConfig
    from medisee.evaluate.handwritten import load_questions
    from medisee.evaluate.pipeline import evaluate_with_baselines
    from medisee.train.trainer import train

    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    print(f"[1/4] building the bundled dataset ({config.num_images} images) ...", flush=True)
    built = build_bundled(
        out / "data",
        BuildOptions(seed=config.seed, overwrite=True, train_qa_variants=config.train_qa_variants),
        num_images=config.num_images,
        radiomics=config.radiomics,
        radiomics_config=RadiomicsConfig(ct_window=config.ct_window),
    )
    print(built.summary(), flush=True)
    records = (built.records, built.manifest.parent)
    timings["data"] = time.perf_counter() - started

    cache_dir = out / "embedding_cache"
    train_config = config.train_config(built.manifest, out / "run", cache_dir)
    print(
        f"[2/4] training the {config.model} preset for {train_config.max_steps} steps, then "
        f"{train_config.grounding_refit_steps} grounding-refit steps ...",
        flush=True,
    )
    result = train(train_config, resume=True, records=records)
    timings["train"] = time.perf_counter() - started - timings["data"]
    # Where the training time went: setup (model, image embeddings), joint, refit.
    timings.update({f"train_{k}": v for k, v in result.phase_seconds.items()})

    print(
        "[3/4] evaluating on the test split (generated + teacher-forced) and baselines ...",
        flush=True,
    )
    summaries = evaluate_with_baselines(
        model_dir=result.model_dir,
        manifest=built.manifest,
        split="test",
        out=out / "eval",
        max_examples=config.eval_examples,
        batch_size=config.eval_batch_size,
        cache_dir=cache_dir,
        records=records,
        questions=load_questions() if config.handwritten else None,
    )
    timings["eval"] = time.perf_counter() - started - timings["data"] - timings["train"]

    print("[4/4] writing the training curve and overlays ...", flush=True)
    plot_training_curve(result.history, out / "training_curve.png")
    write_overlays(
        result.model_dir,
        built.records,
        built.manifest.parent,
        out / "overlays",
        config.overlays,
        cache_dir=cache_dir,
    )
    timings["total"] = time.perf_counter() - started

    table = (out / "eval" / "metrics.md").read_text()
    overall = {name: s["overall"].as_dict() for name, s in summaries.items()}
    headline = headline_figures(summaries)
    report = {
        "timings_s": timings,
        "headline": headline,
        "overall": overall,
        "train_steps": result.steps,
        "ct_window": config.ct_window,
    }
    (out / "demo.json").write_text(json.dumps(report, indent=1))
    print("\n" + table)
    print("\n".join(headline_lines(headline)))
    print(timing_line(timings))
    print(
        f"done in {timings['total'] / 60:.1f} min; outputs in {out}/ "
        "(demo.json, eval/, overlays/, training_curve.png)"
    )
    return report


def timing_line(timings: dict[str, float]) -> str:
    """One line of where the demo's time went, in minutes: the phases, and the training's
    own split where ``timings`` has it (``train_*`` keys, ``TrainResult.phase_seconds``)."""

    def minutes(key: str) -> str:
        return f"{timings[key] / 60:.1f}"

    parts = [f"{k} {minutes(k)}" for k in ("data", "train") if k in timings]
    inside = [
        f"{k} {minutes('train_' + k)}"
        for k in ("setup", "joint", "refit")
        if "train_" + k in timings
    ]
    if inside and "train" in timings:
        if "train_refit_states" in timings and "train_refit" in timings:
            inside[-1] += f" (LM states {minutes('train_refit_states')})"
        parts[-1] += f" ({', '.join(inside)})"
    if "eval" in timings:
        parts.append(f"eval {minutes('eval')}")
    return "time per phase (min): " + ", ".join(parts)


#: The method whose figures are the headline, and the baseline beside them.
HEADLINE_METHOD = "medisee (generated)"
ORACLE = "oracle_box"


def headline_figures(summaries: dict) -> dict:
    """The demo's headline: generated answers on the test split's real scans (overall
    and per structure, beside the oracle-box baseline), then on phantoms, then on the
    hand-written questions. ``{group: {"dice", "acc", "count", ...}}``."""
    out: dict[str, dict] = {}
    model = summaries.get(HEADLINE_METHOD, {})
    oracle = summaries.get(ORACLE, {})

    def add(group: str, summary, reference) -> None:
        out[group] = summary.as_dict()
        if reference is not None:
            out[group]["oracle_dice"] = reference.dice

    images, oracle_images = model.get("image", {}), oracle.get("image", {})
    if "real" in images:
        add("real", images["real"], oracle_images.get("real"))
    for structure, summary in model.get("real_structure", {}).items():
        add(f"real: {structure}", summary, oracle.get("real_structure", {}).get(structure))
    if "phantom" in images:
        add("phantom", images["phantom"], oracle_images.get("phantom"))
    from medisee.evaluate.pipeline import HANDWRITTEN

    # The key evaluate_with_baselines gives the model's rows on the hand-written questions.
    written = summaries.get(f"medisee (generated, {HANDWRITTEN})")
    if written is not None:
        out["hand-written"] = written["overall"].as_dict()
        if "by_question" in written:  # each question once, whatever its image count
            out["hand-written, by question"] = written["by_question"].as_dict()
    return out


def headline_lines(headline: dict) -> list[str]:
    """The headline as lines: real scans first."""
    lines = [
        "headline (test split, generated answers; oracle box = LiteMedSAM given the true box):"
    ]
    for group, figures in headline.items():
        line = (
            f"  {group}: Dice {figures['dice']:.3f}, Acc@0.5 {figures['acc']:.3f} "
            f"(n={figures['count']}{' questions' if group.endswith('by question') else ''})"
        )
        if "oracle_dice" in figures:
            line += f"; oracle box Dice {figures['oracle_dice']:.3f}"
        named = figures.get("named_rate", math.nan)
        if group.startswith("hand-written") and not math.isnan(named):
            line += f"; named {named:.2f}"
        lines.append(line)
    return lines


def plot_training_curve(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [h for h in history if "loss/total" in h]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("total", "text", "bce", "dice", "l1", "giou", "ground"):
        points = [(h["step"], h[f"loss/{key}"]) for h in rows if f"loss/{key}" in h]
        if points:
            ax.plot(*zip(*points), label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("medisee lite: training losses")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_overlays(
    model_dir: Path, records, root: Path, out: Path, count: int, cache_dir: Path | None = None
) -> None:
    """Overlays (image, mask, box, question, explanation) of reasoning questions from
    test images, one per image; embeddings come from ``cache_dir`` when it holds them (the
    evaluation has just computed them), else from the encoder."""
    from medisee.inference import Predictor
    from medisee.model.embedding_cache import EmbeddingCache, encoder_fingerprint

    predictor = Predictor.from_pretrained(model_dir)
    cache = None
    if cache_dir is not None:
        cache = EmbeddingCache(cache_dir, encoder_fingerprint(predictor.model.segmenter))
    chosen = [r for r in records if r.split == "test"][:count]
    out.mkdir(parents=True, exist_ok=True)
    for record in chosen:
        qa = next((q for t in record.targets for q in t.qa if q.kind == "reasoning"), None)
        if qa is None:
            continue
        state = predictor.prepare(root / record.image)
        if cache is not None and root / record.image in cache:
            state.embedding = cache.load(root / record.image).to(predictor.device)
        predictor.set_image(state)
        prediction = predictor.predict(qa.question)
        prediction.save_overlay(out / f"{record.id}.png")
