"""Training recipes: the schedule each model preset is trained with, by preset name.

``RECIPES`` sits beside ``medisee.model.presets.PRESETS`` and has the same keys. A recipe
is the ``TrainConfig`` fields a preset needs beyond the paper's defaults (the dataclass
defaults of ``TrainConfig``, SPEC §3). ``recipe_config`` is the one place a run's config
is made from a preset name: ``medisee train --model lite``, a ``--config`` YAML that
names ``model: lite``, ``medisee demo`` and the tests all go through it, so each trains
exactly the recipe unless a field is given explicitly.

The ``lite`` recipe is the CPU schedule ``docs/training.md`` explains ("Design notes"):
the small LM starts from scratch, so it gets a higher learning rate, mostly reasoning
questions, the mask decoder on every 20th step only, and a grounding-head refit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from medisee.losses import LossWeights
from medisee.train.config import TrainConfig


def paper_recipe() -> dict[str, Any]:
    """The paper's schedule (MediSee §5.1): ``TrainConfig``'s own defaults."""
    return {}


def lite_recipe() -> dict[str, Any]:
    """The CPU schedule of the ``lite`` preset (what ``medisee demo`` trains)."""
    return {
        # 2000 + 1500 since the real scans joined the data (1600 + 1000 before): the
        # phantom figures fell with the old count (docs/training.md).
        "max_steps": 2000,
        "batch_size": 8,
        # Above the paper's 3e-4: the lite LM starts from scratch.
        "lr": 1e-3,
        "warmup_steps": 50,
        # The questions a user asks are reasoning ones; the paper's referring 7:3 is for
        # a pretrained MLLM that already reads such questions.
        "referring_ratio": 0.1,
        # The mask decoder is most of a CPU step; decode masks on every 20th step, with
        # ground-truth box prompts so that the decoder keeps following boxes.
        "mask_loss_every": 20,
        "mask_prompt": "target",
        "group_by_length": 16,
        "repeat_threshold": 0.2,
        # Then the grounding head alone on the finished LM's states.
        "grounding_refit_steps": 1500,
        # Then a question prior on the answer's label, read by SmolLM2's first 3 layers
        # (QuestionPriorConfig's default, chosen on the validation split's template
        # questions): hand-written questions, out of the template's vocabulary, are named
        # right far more often. Fitted on every distinct training question (9101 in the
        # demo's data): against 4000 of them, both splits gain on the template questions
        # and on the hand-written ones counted by question (docs/training.md).
        "question_prior_questions": 20000,
        # The whole SmolLM2 reads the questions unlike every training question (all 64
        # hand-written ones, none of the template ones of either split): the classifier,
        # fitted on templates alone, is confidently wrong on many of them, and the LM has
        # read such words (docs/training.md, "What the pretrained LM knows").
        "question_prior_knowledge_weight": 1.0,
        "question_prior_familiarity": True,
        # There the classifier extrapolates: its probabilities are tempered, p ** 0.25, and
        # the LM also reads each question as written about each label (the noisy channel),
        # both chosen on questions held out of the classifier's fit
        # (benchmarks/experiments/held_out_facts.py, held_out_facts_channel.json).
        "question_prior_unfamiliar_weight": 0.25,
        "question_prior_channel_weight": 1.0,
        # Neither LM reading tells the left lung from the right: a question that names
        # the patient's side takes 8 nats from the other side's labels, chosen on the same
        # held-out questions (held_out_facts_side.json; medisee.model.laterality).
        "question_prior_side_penalty": 8.0,
        "losses": LossWeights(answer_tokens=5.0),
        "save_every": 200,
    }


def lite_smollm2_recipe() -> dict[str, Any]:
    """The CPU schedule of ``lite-smollm2``, from step times measured on 2 cores
    (``benchmarks/train_step_kinds.py --model lite-smollm2``: a LoRA step of the
    135 M-parameter LM is ~2.8 s, ~8x a ``lite`` step; docs/training.md): few joint steps,
    then a long grounding refit on cached states over a fixed pool of examples, where a
    step costs the head alone."""
    return {
        **lite_recipe(),
        "max_steps": 280,
        "lr": 2e-3,
        "warmup_steps": 20,
        "mask_loss_every": 10,
        "grounding_refit_steps": 2500,
        "refit_cached_states": True,
        "refit_examples": 2000,
        # Measured without a question prior; its LM reads the question itself.
        "question_prior_questions": 0,
        # A checkpoint holds the whole LM (~0.5 GB): seconds each on this disk.
        "save_every": 500,
    }


def medisee_7b_recipe() -> dict[str, Any]:
    """The paper's 7B run: 10k steps of per-device batch 15 in bf16 (4 GPUs, ZeRO-2)."""
    return {
        "max_steps": 10_000,
        "batch_size": 15,
        "mixed_precision": "bf16",
        "save_every": 500,
        "eval_every": 500,
        # The 1024 px ViT-B embedding is 64 x 64 x 256 per image as well, but a GPU
        # encodes it in milliseconds: not worth the disk.
        "cache_embeddings": False,
    }


RECIPES: dict[str, Callable[[], dict[str, Any]]] = {
    "tiny": paper_recipe,
    "lite": lite_recipe,
    "lite-smollm2": lite_smollm2_recipe,
    "medisee-7b": medisee_7b_recipe,
}


def recipe_config(model: str, manifest: str, output_dir: str, **fields: Any) -> TrainConfig:
    """The ``TrainConfig`` of a run of ``model``: its recipe, then ``fields`` over it.

    ``model`` is a preset name or a saved model directory (a directory continues training
    with the paper's defaults). ``fields`` whose value is ``None`` are ignored, so CLI
    flags that were not given leave the recipe alone.
    """
    recipe = RECIPES.get(model, paper_recipe)()
    given = {k: v for k, v in fields.items() if v is not None}
    if isinstance(given.get("losses"), dict):
        # Loss weights given by name change those weights only, not the recipe's others.
        base = recipe.get("losses", LossWeights())
        given["losses"] = LossWeights(**{**dataclasses.asdict(base), **given["losses"]})
    # from_dict refuses unknown keys with the field names.
    return TrainConfig.from_dict(
        {
            **recipe,
            **given,
            "manifest": str(manifest),
            "output_dir": str(output_dir),
            "model": model,
        }
    )


def config_from_yaml(path: str | Path, **overrides: Any) -> TrainConfig:
    """A ``TrainConfig`` YAML over its preset's recipe, then ``overrides`` (``None``
    ignored) over both. The YAML names the preset in ``model`` (default ``lite``)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a TrainConfig YAML must be a mapping of fields")
    data.update({k: v for k, v in overrides.items() if v is not None})
    missing = [key for key in ("manifest", "output_dir") if not data.get(key)]
    if missing:
        raise ValueError(f"{path}: give {' and '.join(missing)} (in the YAML or as flags)")
    model = data.pop("model", None) or "lite"
    return recipe_config(model, data.pop("manifest"), data.pop("output_dir"), **data)
