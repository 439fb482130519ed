"""The training loop on HF Accelerate: one CPU, one GPU, DDP, multi-node, DeepSpeed.

No home-made distributed code: Accelerate wraps the task, syncs gradients and saves the
state. The loop itself owns what Accelerate does not: the deterministic mixed sampler
(resumable by position), atomic checkpoints and the step bookkeeping.

Checkpoints: ``<output_dir>/checkpoints/step_<N>/`` (Accelerate state: model, optimizer,
scheduler, RNG of every process) plus ``trainer_state.json``; written to a temporary
directory and renamed, then ``checkpoints/latest`` is replaced atomically. A run killed at
any moment resumes from the last complete checkpoint and loses at most ``save_every``
steps. The final model goes to ``<output_dir>/model`` (``save_pretrained`` format).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from medisee.data.manifest import load_records
from medisee.data.schema import Record
from medisee.model.config import QuestionPriorConfig
from medisee.train.config import TrainConfig
from medisee.train.exam_fit import fit_exams
from medisee.train.prior_fit import fit_prior
from medisee.train.weight_average import WeightAverage

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
LATEST_FILE = "latest"


@dataclass
class TrainResult:
    steps: int
    model_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int | None = None
    #: wall seconds per phase: ``setup`` (model, embedding cache, data), ``joint``,
    #: ``refit`` and, inside it, ``refit_states`` (the LM passes of a cached refit), and
    #: ``exam_head`` and ``question_prior``
    phase_seconds: dict[str, float] = field(default_factory=dict)
    #: the exam head's kinds, image count, loss and training accuracy (None: not fitted)
    exam_head: dict[str, Any] | None = None
    #: the question prior's encoder, question count, loss and accuracy (None: not fitted)
    question_prior: dict[str, Any] | None = None


def warmup_linear_decay(warmup_steps: int, total_steps: int):
    """LR multiplier: linear warm-up to 1 over ``warmup_steps``, then linear decay to 0
    at ``total_steps`` (DeepSpeed's WarmupDecayLR shape, as in the paper)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        remaining = total_steps - step
        return max(0.0, remaining / max(1, total_steps - warmup_steps))

    return factor


#: warm-up steps of the grounding refit's own learning-rate ramp (peak ``lr``)
REFIT_WARMUP_STEPS = 10


def training_schedule(config: TrainConfig):
    """LR multiplier per step: ``warmup_linear_decay`` over the ``max_steps`` joint steps,
    then a fresh warm-up (``REFIT_WARMUP_STEPS``) and linear decay over the
    ``grounding_refit_steps`` refit steps."""
    joint = warmup_linear_decay(config.warmup_steps, config.max_steps)
    refit = warmup_linear_decay(
        min(REFIT_WARMUP_STEPS, config.grounding_refit_steps), config.grounding_refit_steps
    )

    def factor(step: int) -> float:
        return joint(step) if step < config.max_steps else refit(step - config.max_steps)

    return factor


def _atomic_write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The last complete checkpoint of a run, or ``None``."""
    pointer = Path(output_dir) / "checkpoints" / LATEST_FILE
    if not pointer.is_file():
        return None
    directory = pointer.parent / pointer.read_text().strip()
    return directory if (directory / STATE_FILE).is_file() else None


def build_training_model(config: TrainConfig, corpus: list[str]):
    """A fresh model of the preset ``config.model`` (with ``language_path`` and
    ``segmenter_weights`` when given), or the saved model in that directory."""
    from medisee.model.medisee import MediSee, build_model
    from medisee.model.presets import get_preset

    if Path(config.model).is_dir():
        return MediSee.from_pretrained(config.model)
    model_config = get_preset(config.model)
    if config.language_path is not None:
        model_config.language = dataclasses.replace(
            model_config.language, pretrained_path=config.language_path
        )
    if config.segmenter_weights is not None:
        model_config.mask = dataclasses.replace(model_config.mask, weights=config.segmenter_weights)
    return build_model(model_config, corpus=corpus)


def training_corpus(records) -> list[str]:
    """Text the ``lite`` tokenizer is trained on: the default corpus plus the manifest's."""
    from medisee.model.tokenizer import default_corpus
    from medisee.train.dataset import label_query

    texts = default_corpus()
    for record in records:
        for target in record.targets:
            texts.extend(label_query(target.label))
            for item in target.qa:
                texts.extend((item.question, item.answer, item.explanation))
    return texts


@dataclass
class TrainingRun:
    """Everything ``train`` sets up before its loop (``setup_training``)."""

    config: TrainConfig
    accelerator: Any
    task: Any  # the prepared MediSeeTask
    model: Any  # the unwrapped MediSee
    optimizer: Any
    scheduler: Any
    parameters: list[torch.nn.Parameter]
    batches: Iterator[dict[str, torch.Tensor]]
    #: the refit phase's own stream, over ``refit_examples`` examples (None: ``batches``)
    refit_batches: Iterator[dict[str, torch.Tensor]] | None
    eval_records: list
    train_records: list
    root: Path
    builder: Any
    cache: Any
    start_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int | None = None
    phase_seconds: dict[str, float] = field(default_factory=dict)
    #: the exam head's fit (``medisee.train.exam_fit.fit_exams``), once it ran
    exam_fit: dict[str, Any] | None = None
    #: the question prior's fit (``medisee.train.prior_fit.fit_prior``), once it ran
    prior_fit: dict[str, Any] | None = None
    #: the weights' moving average (``config.ema_decay``; None: off)
    weight_average: WeightAverage | None = None


def training_ct_window(records: Sequence[Record]) -> str | None:
    """The named CT display (a ``medisee.data.io`` window preset or composite) most of the
    CT ``records`` were built in, by their ``meta["window"]``; ``None`` when none names one.

    A model must see a user's CT as it saw its training CT. The real CT slices are built in
    one display (the radiomics source's ``lung`` by default); the phantoms draw theirs at
    random and record none, and a DICOM sample records its header's numbers, not a name.
    Shown in another window, the released model's real test CT fell from Dice 0.691 (the
    ``lung`` window it was built in) to 0.406 (the CT default, ``abdomen``) and 0.369
    (``mediastinum``; ``benchmarks/experiments/ct_display.json``).
    """
    from collections import Counter

    from medisee.data.io import COMPOSITE_WINDOWS, WINDOW_PRESETS

    named = {*COMPOSITE_WINDOWS, *WINDOW_PRESETS}
    windows = (record.meta.get("window") for record in records if record.modality == "CT")
    votes = Counter(w for w in windows if isinstance(w, str) and w in named)
    return votes.most_common(1)[0][0] if votes else None


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    records: tuple[list, Path] | None = None,
) -> TrainResult:
    """Run (or resume) a training run; returns where the final model went.

    ``records``: ``(records, root)`` already in memory, instead of reading
    ``config.manifest``.
    """
    started = time.perf_counter()
    run = setup_training(config, resume, progress, records)
    run.phase_seconds["setup"] = time.perf_counter() - started
    step = training_loop(run, progress=progress)
    model_dir = Path(config.output_dir) / "model"
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(run.task).model
        if config.exam_head_images:
            fit_started = time.perf_counter()
            run.exam_fit = fit_exams(
                model,
                run.train_records,
                run.root,
                cache=run.cache,
                per_kind=config.exam_head_images,
                seed=config.seed,
            )
            run.phase_seconds["exam_head"] = time.perf_counter() - fit_started
        if config.question_prior_questions:
            fit_started = time.perf_counter()
            run.prior_fit = fit_prior(
                model,
                run.train_records,
                questions=config.question_prior_questions,
                seed=config.seed,
                prior=QuestionPriorConfig(
                    encoder=config.question_prior_encoder,
                    layers=config.question_prior_layers,
                    knowledge_weight=config.question_prior_knowledge_weight,
                    familiarity=config.question_prior_familiarity,
                    unfamiliar_weight=config.question_prior_unfamiliar_weight,
                    channel_weight=config.question_prior_channel_weight,
                    side_penalty=config.question_prior_side_penalty,
                ),
            )
            run.phase_seconds["question_prior"] = time.perf_counter() - fit_started
        model.save_pretrained(model_dir)
        _atomic_write_text(
            Path(config.output_dir) / "history.json", json.dumps(run.history, indent=1)
        )
    accelerator.end_training()
    return TrainResult(
        step,
        model_dir,
        run.history,
        time.perf_counter() - started,
        run.resumed_from,
        run.phase_seconds,
        run.exam_fit,
        run.prior_fit,
    )


def setup_training(
    config: TrainConfig, resume: bool, progress: bool, records: tuple[list, Path] | None
) -> TrainingRun:
    """Accelerator, model, embedding cache, data, optimizer and schedule; the state of the
    last checkpoint when ``resume`` finds one."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed

    from medisee.model.builder import parameter_report
    from medisee.model.embedding_cache import EmbeddingCache, encoder_fingerprint
    from medisee.train.dataset import (
        Collator,
        MediSeeDataset,
        MixedSampler,
        area_factors,
        repeat_factors,
    )
    from medisee.train.task import MediSeeTask

    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        cpu=config.cpu,
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum,
        log_with="tensorboard",
        # SAM's IoU head (and, by prompt mode, parts of the decoder) get no gradient.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
    )
    set_seed(config.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        config.to_yaml(output_dir / "train_config.yaml")

    all_records, root = records if records is not None else load_records(config.manifest)
    train_records = [r for r in all_records if r.split == config.train_split]
    # Only embedded (and held) when the run evaluates periodically.
    eval_records = (
        [r for r in all_records if r.split == config.eval_split] if config.eval_every else []
    )
    if not train_records:
        raise ValueError(f"{config.manifest} has no records in split {config.train_split!r}")
    model = build_training_model(config, training_corpus(train_records))
    logger.info("parameters:\n%s", parameter_report(model).format())
    # The structures it learns to segment: generated answers name one of them.
    trained = {target.label for record in train_records for target in record.targets}
    model.config.labels = tuple(sorted(set(model.config.labels) | trained))
    # A CT display in colour: inference shows a user's CT the same way.
    model.config.ct_window = training_ct_window(train_records) or model.config.ct_window
    if config.grounding_refit_steps and model.grounding is None:
        raise ValueError(
            "grounding_refit_steps needs a model with a grounding head "
            f"({model.config.preset!r} has none)"
        )

    cache = None
    if config.cache_embeddings and model.language.uses_segmenter_embedding:
        cache = EmbeddingCache(
            config.cache_dir or output_dir / "embedding_cache",
            encoder_fingerprint(model.segmenter),
            # Every training image is read hundreds of times: keep them in memory, up to
            # ~1 GiB at LiteMedSAM's 64 x 64 x 256 (fp16).
            memory_entries=512,
        )
        with accelerator.main_process_first():
            model.to(accelerator.device)
            paths = [root / r.image for r in train_records + eval_records]
            cache.precompute(
                model.segmenter, paths, progress=progress and accelerator.is_local_main_process
            )

    builder = model.prompt_builder()
    dataset = MediSeeDataset(
        train_records,
        root,
        builder,
        model.config.mask.image_size,
        model.config.mask.low_res_mask_size,
        embedding_cache=cache,
        with_label_query=config.stage == "finetune",
        max_length=getattr(model.config.language, "max_position_embeddings", None)
        if model.config.language.backbone == "lite"
        else None,
    )

    task = MediSeeTask(
        model, config.losses, config.stage, config.mask_prompt, config.mask_box_jitter
    )
    parameters = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters,
        lr=config.lr,
        betas=config.betas,
        weight_decay=config.weight_decay,
        fused=config.fused_optimizer or None,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, training_schedule(config))
    task, optimizer = accelerator.prepare(task, optimizer)
    # The scheduler is stepped by us once per optimizer step (Accelerate's wrapper would
    # step it once per process), and saved with the rest of the state.
    accelerator.register_for_checkpointing(scheduler)
    weight_average = None
    if config.ema_decay is not None:
        if getattr(accelerator.state, "deepspeed_plugin", None) is not None:
            raise ValueError(
                "TrainConfig.ema_decay averages whole parameters on each rank; DeepSpeed "
                "shards them: train without ema_decay there"
            )
        weight_average = WeightAverage(parameters, config.ema_decay)
        accelerator.register_for_checkpointing(weight_average)

    start_step = 0
    history: list[dict[str, float]] = []
    resumed_from = None
    if resume:
        checkpoint = latest_checkpoint(output_dir)
        if checkpoint is not None:
            accelerator.load_state(str(checkpoint))
            state = json.loads((checkpoint / STATE_FILE).read_text())
            start_step = int(state["step"])
            history = state.get("history", [])
            resumed_from = start_step
            logger.info("resumed from %s at step %d", checkpoint, start_step)
        else:
            logger.info("no checkpoint in %s: starting from scratch", output_dir)

    per_step = config.batch_size * config.grad_accum
    lengths = dataset.text_lengths() if config.group_by_length else None
    factors = (
        repeat_factors(dataset.examples, config.repeat_threshold)
        if config.repeat_threshold
        else None
    )

    def batches(
        pool: set[int] | None, steps_done: int, weights: list[float] | None = factors
    ) -> Iterator[dict[str, torch.Tensor]]:
        """The batch stream over the examples in ``pool`` (all when ``None``), drawn with
        repeat factors ``weights``, resumed after ``steps_done`` optimizer steps of it."""
        referring, reasoning = (
            [i for i in dataset.indices_of(kind) if pool is None or i in pool]
            for kind in ("referring", "reasoning")
        )
        sampler = MixedSampler(
            referring,
            reasoning,
            config.referring_ratio,
            seed=config.seed,
            start=steps_done * per_step * accelerator.num_processes,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            lengths=lengths,
            group_steps=config.group_by_length,
            step_draws=per_step * accelerator.num_processes,
            repeat_factors=weights,
        )
        loader = DataLoader(
            dataset,
            batch_size=config.batch_size,
            sampler=sampler,
            num_workers=config.num_workers,
            collate_fn=Collator(model.tokenizer.pad_token_id),
        )
        return iter(loader)

    refit_batches = None
    if (config.refit_examples or config.refit_area_power) and config.grounding_refit_steps:
        pool = None
        if config.refit_examples:
            # A fixed, seeded subset: with cached states, each of its examples costs one
            # LM pass however often the refit draws it.
            count = min(config.refit_examples, len(dataset))
            pool = set(random.Random(f"{config.seed}-refit").sample(range(len(dataset)), count))
        weights = factors
        if config.refit_area_power:
            sizes = area_factors(dataset.target_area_shares(), config.refit_area_power)
            weights = [r * a for r, a in zip(factors or [1.0] * len(sizes), sizes)]
        refit_batches = batches(pool, max(0, start_step - config.max_steps), weights)
    return TrainingRun(
        config=config,
        accelerator=accelerator,
        task=task,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        parameters=parameters,
        batches=batches(None, start_step),
        refit_batches=refit_batches,
        eval_records=eval_records,
        train_records=train_records,
        root=root,
        builder=builder,
        cache=cache,
        start_step=start_step,
        history=history,
        resumed_from=resumed_from,
        weight_average=weight_average,
    )


def training_loop(run: TrainingRun, *, progress: bool = True) -> int:
    """The joint steps, then the grounding-refit steps, from ``run.start_step`` to
    ``config.total_steps``: logging, periodic evaluation and checkpoints. Appends to
    ``run.history``; returns the last step."""
    from tqdm.auto import tqdm

    from medisee.train.state_cache import RefitStateCache

    config, accelerator, task = run.config, run.accelerator, run.task
    if accelerator.is_main_process:
        accelerator.init_trackers(
            "medisee",
            config={
                k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))
            },
        )
    task.train()
    bar = tqdm(
        total=config.total_steps,
        initial=run.start_step,
        desc="refit grounding" if run.start_step >= config.max_steps else f"train {config.stage}",
        unit="step",
        disable=not (progress and accelerator.is_local_main_process),
    )
    step = run.start_step
    window: list[dict[str, float]] = []
    states = RefitStateCache() if config.refit_cached_states else None
    phase_started = time.perf_counter()
    while step < config.total_steps:
        refitting = step >= config.max_steps
        if step == config.max_steps:  # inside the loop, so there are refit steps
            run.phase_seconds["joint"] = time.perf_counter() - phase_started
            phase_started = time.perf_counter()
            bar.set_description("refit grounding")
            logger.info("step %d: refitting the grounding head on the fixed LM", step)
            if run.weight_average is not None:  # the refit starts from the joint average
                run.weight_average.write_to_model()
                run.weight_average.restart()
        decode_masks = not refitting and step % config.mask_loss_every == 0
        source = run.refit_batches if refitting and run.refit_batches is not None else run.batches
        for _ in range(config.grad_accum):
            batch = {k: v.to(accelerator.device) for k, v in next(source).items()}
            with accelerator.accumulate(task):
                det_states = (
                    states.det_states(run.model, batch)
                    if refitting and states is not None
                    else None
                )
                losses = task(
                    batch,
                    decode_masks=decode_masks,
                    grounding_only=refitting,
                    det_states=det_states,
                )
                accelerator.backward(losses.total)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(run.parameters, config.max_grad_norm)
                run.optimizer.step()
                run.optimizer.zero_grad()
            window.append(losses.as_floats())
        if run.weight_average is not None:
            run.weight_average.update()
        run.scheduler.step()
        step += 1
        bar.update(1)
        if step % config.log_every == 0 or step == config.total_steps:
            entry = _window_means(window)
            entry.update(step=step, lr=float(run.scheduler.get_last_lr()[0]))
            run.history.append(entry)
            accelerator.log({k: v for k, v in entry.items() if k != "step"}, step=step)
            bar.set_postfix(loss=f"{entry['loss/total']:.3f}")
            window = []
        if config.eval_every and step % config.eval_every == 0 and run.eval_records:
            metrics = _quick_eval(run)
            run.history.append({"step": step, **{f"val/{k}": v for k, v in metrics.items()}})
            accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=step)
        if step % config.save_every == 0 or step == config.total_steps:
            _save_checkpoint(accelerator, Path(config.output_dir), step, run.history, config)
    bar.close()
    if run.weight_average is not None:
        run.weight_average.write_to_model()
    run.phase_seconds["refit" if step > config.max_steps else "joint"] = (
        time.perf_counter() - phase_started
    )
    if states is not None:
        run.phase_seconds["refit_states"] = states.seconds
    if states is not None and states.computed:
        logger.info("grounding refit: %d cached h_det states (one LM pass each)", len(states))
    return step


def _window_means(window: list[dict[str, float]]) -> dict[str, float]:
    """Each loss term's mean over the logged window, as ``loss/<term>``; terms absent on
    some steps (the mask terms when skipped) average where present."""
    keys = sorted({k for w in window for k in w})
    return {
        f"loss/{k}": sum(w[k] for w in window if k in w) / sum(k in w for w in window) for k in keys
    }


def _save_checkpoint(
    accelerator, output_dir: Path, step: int, history, config: TrainConfig
) -> None:
    checkpoints = output_dir / "checkpoints"
    final = checkpoints / f"step_{step:07d}"
    staging = checkpoints / f".staging_step_{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        checkpoints.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _atomic_write_text(staging / STATE_FILE, json.dumps({"step": step, "history": history}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        _atomic_write_text(checkpoints / LATEST_FILE, final.name)
        kept = sorted(p for p in checkpoints.glob("step_*") if p.is_dir())
        for old in kept[: -config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


@torch.no_grad()
def _quick_eval(run: TrainingRun) -> dict[str, float]:
    """Teacher-forced Dice and box IoU on up to ``eval_max_examples`` held-out examples."""
    from medisee.evaluate.evaluator import teacher_forced_scores

    model = run.accelerator.unwrap_model(run.task).model
    was_training = model.training
    model.eval()
    summary = teacher_forced_scores(
        model,
        run.eval_records,
        run.root,
        cache=run.cache,
        max_examples=run.config.eval_max_examples,
        batch_size=run.config.batch_size,
    )
    model.train(was_training)
    return {"dice": summary.dice, "box_iou": summary.box_iou, "acc": summary.acc}
