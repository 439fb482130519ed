"""``medisee release``: turn ``medisee demo``'s model into the released checkpoint.

1. run ``medisee demo`` with its defaults (or reuse a finished demo directory),
2. write the slim fp16 release (``medisee.model.released``) to a staging directory,
3. evaluate the release itself on the demo's test split (generated answers, template and
   hand-written questions) and score the check items (``medisee.release.check``),
4. write ``release.json`` and ``MODEL_CARD.md``, and move the release into place.

``medisee release --refresh`` (``refresh_release``) keeps a release's weights and brings
its inference rules (``INFERENCE_RULES`` and ``QUESTION_PRIOR_RULES``: config fields no
weight depends on) to the preset's current values, and its CT display (``ct_window``) to
the one its training data was built in, then measures it again (steps 3 and 4).
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medisee.model.released import DEFAULT_MODEL, MODEL_CARD, RELEASE_FILE

#: what a newcomer runs to make the release again
RELEASE_COMMAND = "medisee release"
REFRESH_COMMAND = "medisee release --refresh"

#: ``config.json`` fields (section, name) that steer inference only: the release's recipe
#: prompts the mask decoder with ground-truth boxes in training (``mask_prompt: target``),
#: so its weights were trained the same whatever their value, and it can take a newer
#: value without being trained again (its figures are measured again).
INFERENCE_RULES = (
    ("grounding", "map_fallback_iou"),
    ("grounding", "seed_threshold"),
    ("grounding", "seed_margin"),
    ("grounding", "gate_dilation"),
    ("grounding", "peak_margin"),
    ("grounding", "decode_regions"),
    ("grounding", "min_piece_share"),
)
#: ``question_prior`` fields that steer inference only, against the preset's training
#: recipe (``medisee.train.recipes``, whose ``question_prior_<field>`` sets them): the
#: prior's classifier and familiarity are fitted the same whatever their value.
QUESTION_PRIOR_RULES = (
    "knowledge_weight",
    "unfamiliar_weight",
    "channel_weight",
    "side_penalty",
)


@dataclass
class ReleaseConfig:
    """Where the release comes from and goes.

    ``out_dir`` ``None``: the package's own ``assets/models/<name>`` (in a source checkout,
    the file that ships). ``run_demo`` ``False``: reuse the finished demo in ``demo_dir``.
    """

    name: str = DEFAULT_MODEL
    demo_dir: str = "outputs/demo"
    out_dir: str | None = None
    run_demo: bool = True
    dtype: str = "float16"
    eval_batch_size: int = 16  # as the demo's (medisee.demo.DemoConfig)

    def __post_init__(self) -> None:
        from medisee.model.released import RELEASE_DTYPES, RELEASED_MODELS

        if self.name not in RELEASED_MODELS:
            raise ValueError(f"release name must be one of {sorted(RELEASED_MODELS)}")
        if self.dtype not in RELEASE_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(RELEASE_DTYPES)}, got {self.dtype!r}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")

    def target(self) -> Path:
        from medisee.model.released import released_model_dir

        return Path(self.out_dir) if self.out_dir else released_model_dir(self.name)


def git_commit(where: Path, ignore: Path | None = None) -> str:
    """``HEAD`` of the checkout holding ``where``, with ``+modified`` when tracked files
    other than those under ``ignore`` differ from it; ``"unknown"`` outside a checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        top = Path(
            subprocess.run(
                ["git", "rev-parse", "--show-toplevel"],
                cwd=where,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    skipped = ignore.resolve() if ignore is not None else None
    dirty = [
        line
        for line in changed
        if skipped is None or not (top / line[3:]).resolve().is_relative_to(skipped)
    ]
    return head + ("+modified" if dirty else "")


def training_data(records: list) -> dict[str, Any]:
    """What the model trained on: images per source, targets per provenance, patients."""
    train = [r for r in records if r.split == "train"]
    return {
        "train_images": len(train),
        "val_images": sum(r.split == "val" for r in records),
        "test_images": sum(r.split == "test" for r in records),
        "train_images_by_source": dict(sorted(Counter(r.source for r in train).items())),
        "train_targets_by_provenance": dict(
            sorted(Counter(str(t.provenance) for r in train for t in r.targets).items())
        ),
        "train_patients": sorted({str(r.meta["patient"]) for r in train if "patient" in r.meta}),
        "test_patients": sorted(
            {str(r.meta["patient"]) for r in records if r.split == "test" and "patient" in r.meta}
        ),
    }


def demo_command(demo_dir: str | Path, ct_window: str | None) -> str:
    """The ``medisee demo`` command line that made ``demo_dir`` (its report's
    ``ct_window``: the CT display, given when it is not the demo's default)."""
    from medisee.demo import DemoConfig

    command = f"medisee demo --out {demo_dir}"
    if ct_window and ct_window != DemoConfig().ct_window:
        command += f" --ct-window {ct_window}"
    return command


def build_release(config: ReleaseConfig) -> Path:
    """Make the release (see the module docstring); returns its directory."""
    from medisee.data.manifest import load_records
    from medisee.demo import DemoConfig, run_demo
    from medisee.model.export import merge_lora
    from medisee.model.medisee import MediSee
    from medisee.model.released import save_release
    from medisee.train.trainer import training_ct_window

    started = time.perf_counter()
    target = config.target()
    # Before the demo runs: the code that trains is the code recorded.
    commit = git_commit(Path(__file__).parent, ignore=target)
    demo_dir = Path(config.demo_dir)
    if config.run_demo and (demo_dir / "demo.json").exists():
        # The demo resumes what it finds: a finished one would be packed, not retrained.
        raise FileExistsError(
            f"{demo_dir} already holds a finished demo: pass --skip-demo to pack its model, "
            "or --demo-dir a new directory to train one"
        )
    if config.run_demo:
        run_demo(DemoConfig(out_dir=str(demo_dir)))
    demo_report = demo_dir / "demo.json"
    model_dir = demo_dir / "run" / "model"
    manifest = demo_dir / "data" / "manifest.jsonl"
    for needed in (demo_report, model_dir, manifest):
        if not needed.exists():
            raise FileNotFoundError(
                f"{needed} is missing: run `medisee demo --out {demo_dir}` first, or "
                "`medisee release` without --skip-demo"
            )
    demo = json.loads(demo_report.read_text())
    records, _ = load_records(manifest)

    model = MediSee.from_pretrained(model_dir).eval()
    merge_lora(model)
    # How its CT was shown, for a model trained before its config recorded it.
    train_records = [r for r in records if r.split == "train"]
    model.config.ct_window = model.config.ct_window or training_ct_window(train_records)
    staging = target.with_name(f".{target.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    save_release(model, staging, config.name, config.dtype)
    del model

    figures, check = _measure(
        staging, demo_dir, manifest, records, config.eval_batch_size, demo["headline"]
    )
    info = json.loads((staging / RELEASE_FILE).read_text())
    info.update(
        {
            "command": RELEASE_COMMAND
            if config.run_demo
            else f"{RELEASE_COMMAND} --skip-demo --demo-dir {demo_dir}",
            "ran_demo": config.run_demo,
            "demo_command": demo_command(demo_dir, demo.get("ct_window")),
            **_stamp(commit),
            "demo_timings_s": demo.get("timings_s", {}),
            "train_steps": demo.get("train_steps"),
            "data": training_data(records),
            "figures": figures,
            "figures_float32": demo["headline"],
            "check": check,
            "release_seconds": round(time.perf_counter() - started, 1),
        }
    )
    _install(staging, target, info)
    print(f"wrote {target} (check: mean Dice {check['mean_dice']:.4f} on {len(check['items'])})")
    return target


def inference_rule_changes(config: dict[str, Any]) -> dict[str, list[Any]]:
    """``{"section.name": [release's value, preset's value]}`` for the ``INFERENCE_RULES``
    where a saved ``config.json`` (as a dict) differs from its preset in this version, and
    for the ``QUESTION_PRIOR_RULES`` of a saved question prior where they differ from the
    preset's recipe (a field saved before it existed reads ``None``)."""
    import dataclasses

    from medisee.model.presets import get_preset
    from medisee.train.config import TrainConfig
    from medisee.train.recipes import RECIPES

    preset = get_preset(config["preset"])
    changes: dict[str, list[Any]] = {}
    for section, name in INFERENCE_RULES:
        current = getattr(getattr(preset, section), name)
        saved = config.get(section, {}).get(name)
        if saved != current:
            changes[f"{section}.{name}"] = [saved, current]
    prior = config.get("question_prior")
    if prior is not None and config["preset"] in RECIPES:
        recipe = RECIPES[config["preset"]]()
        defaults = {field.name: field.default for field in dataclasses.fields(TrainConfig)}
        for name in QUESTION_PRIOR_RULES:
            key = f"question_prior_{name}"
            current = recipe.get(key, defaults[key])
            if prior.get(name) != current:
                changes[f"question_prior.{name}"] = [prior.get(name), current]
    return changes


def display_changes(config: dict[str, Any], records: Sequence[Any]) -> dict[str, list[Any]]:
    """``{"ct_window": [release's, training data's]}`` where a saved ``config.json`` (as a
    dict) shows CT otherwise than its training split was built
    (``medisee.train.trainer.training_ct_window``: no weight depends on it)."""
    from medisee.train.trainer import training_ct_window

    built = training_ct_window([record for record in records if record.split == "train"])
    saved = config.get("ct_window")
    return {} if saved == built else {"ct_window": [saved, built]}


def _stamp(commit: str) -> dict[str, Any]:
    """Where and when a release (or a refresh of it) was made, for ``release.json``."""
    return {
        "commit": commit,
        "made": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
    }


def _measure(
    release: Path,
    demo_dir: Path,
    manifest: Path,
    records: list,
    batch_size: int,
    oracle_from: dict[str, Any],
) -> tuple[dict, dict]:
    """Step 3 of the module docstring: the release's headline figures on the test split
    (generated answers, template and hand-written questions), with each group's oracle-box
    Dice taken from ``oracle_from`` (earlier figures: the oracle box does not use our
    weights), and its ``release.json`` check record (the scored check items)."""
    from medisee.demo import headline_figures
    from medisee.evaluate.handwritten import load_questions
    from medisee.evaluate.pipeline import evaluate_with_baselines
    from medisee.inference.predictor import Predictor
    from medisee.release.check import check_items, mean_dice, score_items

    print(f"evaluating {release.name} on the test split ...", flush=True)
    summaries = evaluate_with_baselines(
        model_dir=release,
        manifest=manifest,
        split="test",
        out=demo_dir / "release_eval",
        modes=("generated",),
        baselines=(),
        batch_size=batch_size,
        cache_dir=demo_dir / "embedding_cache",
        records=(records, manifest.parent),
        questions=load_questions(),
        progress=False,
    )
    figures = headline_figures(summaries)
    for group, values in oracle_from.items():
        if group in figures and "oracle_dice" in values:
            figures[group]["oracle_dice"] = values["oracle_dice"]
    print("scoring the check items ...", flush=True)
    predictor = Predictor.from_pretrained(release)
    items = score_items(predictor, check_items(records))
    check = {
        "seed": 0,
        "mean_dice": round(mean_dice(items), 4),
        "items": [item.as_dict() for item in items],
    }
    return figures, check


def _install(staging: Path, target: Path, info: dict[str, Any]) -> None:
    """Step 4: write ``info`` and the model card into ``staging`` and put it in place of
    ``target``."""
    from medisee.release.card import model_card

    (staging / RELEASE_FILE).write_text(json.dumps(info, indent=1) + "\n")
    (staging / MODEL_CARD).write_text(model_card(info, staging))
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def refresh_release(config: ReleaseConfig) -> Path:
    """Bring the release in ``config.target()`` to the preset's current inference rules
    and measure it again on the test split of ``config.demo_dir``'s data; the weights stay
    byte for byte. Returns the release's directory (unchanged when no rule differs)."""
    from medisee.data.manifest import load_records
    from medisee.model.medisee import WEIGHTS_NAME
    from medisee.model.released import sha256_file

    target = config.target()
    info_path, config_path = target / RELEASE_FILE, target / "config.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{target} holds no release ({RELEASE_FILE} is missing)")
    info = json.loads(info_path.read_text())
    model_config = json.loads(config_path.read_text())
    changes = inference_rule_changes(model_config)
    demo_dir = Path(config.demo_dir)
    manifest = demo_dir / "data" / "manifest.jsonl"
    records = load_records(manifest)[0] if manifest.exists() else None
    if records is not None:
        changes.update(display_changes(model_config, records))
    if not changes:
        print(f"{target}: its inference rules are the preset's; nothing to refresh")
        return target
    if records is None:
        raise FileNotFoundError(
            f"{manifest} is missing: the release is measured on the bundled test split; run "
            f"`medisee demo --out {demo_dir}` (or `medisee data build --source bundled "
            f"--radiomics --out {demo_dir / 'data'}`) first"
        )
    if sha256_file(target / WEIGHTS_NAME) != info["weights_sha256"]:
        raise RuntimeError(f"{target / WEIGHTS_NAME} does not match its {RELEASE_FILE}")
    commit = git_commit(Path(__file__).parent, ignore=target)

    staging = target.with_name(f".{target.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(target, staging)
    for key, (_, new) in changes.items():
        section, _, name = key.rpartition(".")
        (model_config.setdefault(section, {}) if section else model_config)[name] = new
    (staging / "config.json").write_text(json.dumps(model_config, indent=2) + "\n")
    figures, check = _measure(
        staging, demo_dir, manifest, records, config.eval_batch_size, info["figures"]
    )
    info.setdefault("refreshed", []).append(
        {
            "command": f"{REFRESH_COMMAND} --demo-dir {demo_dir}",
            **_stamp(commit),
            "changes": changes,
            "figures_before": info["figures"],
            "check_mean_dice_before": info["check"]["mean_dice"],
        }
    )
    info["figures"], info["check"] = figures, check
    _install(staging, target, info)
    print(f"refreshed {target}: {changes} (check: mean Dice {check['mean_dice']:.4f})")
    return target
