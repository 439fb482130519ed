"""The Predictor: image in, (mask, box, explanation) out, the image embedding cached.

As segment-anything's ``SamPredictor``: ``set_image`` runs the slow frozen image encoder
once; every question about that image (and every follow-up of a conversation) reuses it.
CLI, server and benchmarks all go through this class.

Frames: ``Prediction.mask`` is ``H x W`` and ``Prediction.box`` is pixel-edge
``(x0, y0, x1, y1)``, both in the **original** image (the array / decoded file as given;
for NIfTI the display slice, see ``medisee.data.io``). The model's normalised box
``(cx, cy, w, h)`` is relative to the original ``(W, H)``, so it is mapped back with
``denormalize_box`` and no square-image assumption; the low-res mask logits are mapped
with ``ImageFrame.mask_logits_to_original`` (crop the padding, resize, threshold at 0).

Multi-turn: ``history`` is a list of ``(question, raw_answer)`` pairs, re-encoded with the
model's chat template on each turn. ``raw_answer`` is the assistant's reply *with* its
candidate tokens (``Prediction.raw_text``), so the model sees what it said.
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medisee.boxes import clip_box, denormalize_box
from medisee.data.io import MedicalImage
from medisee.data.ontology import Ontology
from medisee.data.qa_template import MODALITY_NOUNS
from medisee.inference.explanation import (
    checked_reply,
    exam_modality,
    grounded_position,
    presence_reply,
)
from medisee.inference.inputs import ImageInput, ReadOptions, load_image
from medisee.inference.knowledge import answer_follow_up, asks_for_region, model_turn
from medisee.inference.outputs import complete_sentences
from medisee.inference.paired import merge_sides, side_question
from medisee.model.asked_structure import both_sides

if TYPE_CHECKING:  # pragma: no cover
    from medisee.model.medisee import GeneratedAnswer, MediSee
    from medisee.model.preprocess import ImageFrame

#: History turns are ``(question, raw answer)`` pairs.
History = Sequence[tuple[str, str]]


class PromptTooLongError(ValueError):
    """The question alone (with the image and the answer budget) exceeds the context."""


@dataclass(frozen=True)
class GenerationOptions:
    """How answers are decoded. Greedy by default (deterministic without a seed).

    ``seed`` makes sampling reproducible: generation runs under a forked RNG seeded with
    it, so the caller's global RNG is left as it was.

    ``constrain_answer``: a question on a conversation's first turn asks for a target, so
    its reply opens with an answer sentence that names one of the structures the model
    was trained on (``ModelConfig.labels``; ``medisee.model.answer_constraint``), then
    the candidate tokens. So does a follow-up that asks for a region ("Segment the
    liver.", "Where is it?"; ``medisee.inference.knowledge.asks_for_region``); other
    follow-ups are generated freely.

    ``constrain_to_exam``: with a model that has an exam head, that label is one trained
    on images of the exam kinds the head finds likely for the image
    (``medisee.model.exam_head``): a brain MRI's answer names no lung.

    ``question_prior``: with a model that has a question prior, that label is also
    weighed by how likely a pretrained LM reading the question alone finds it
    (``medisee.model.question_prior``).
    """

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    constrain_answer: bool = True
    constrain_to_exam: bool = True
    question_prior: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class ImageState:
    """One image prepared for the model; ``embedding`` is filled by ``Predictor.encode``.

    Attributes:
        image: the decoded image; ``image.pixels`` (``H x W x 3`` uint8) is the original
            frame and what overlays are drawn on.
        pixel_values: ``[3, S, S]`` segmenter input in [0, 1] (CPU; kept for backbones
            whose vision tower reads pixels, e.g. LLaVA).
        frame: geometry original <-> segmenter input.
        embedding: ``[C, g, g]`` frozen-encoder output on the model's device, or ``None``.
        name: where it came from (path or a caller's label), for outputs and logs.
    """

    image: MedicalImage
    pixel_values: torch.Tensor
    frame: ImageFrame
    embedding: torch.Tensor | None = None
    name: str = ""

    @property
    def size(self) -> tuple[int, int]:
        """Original ``(H, W)``."""
        return self.frame.original_size


def stack_embeddings(states: Iterable[ImageState]) -> torch.Tensor:
    """``[B, C, g, g]``: the embeddings of states that ``Predictor.encode`` has filled."""
    embeddings = []
    for state in states:
        if state.embedding is None:
            raise ValueError(f"image {state.name!r} is not encoded (Predictor.encode)")
        embeddings.append(state.embedding)
    return torch.stack(embeddings)


@dataclass
class PredictRequest:
    """One question about one prepared image, with the conversation so far."""

    state: ImageState
    question: str
    history: History = ()


@dataclass
class Prediction:
    """The answer to one question, in the original frame of the image.

    Attributes:
        mask: ``H x W`` bool; all False when the model named no target.
        box: pixel-edge ``(x0, y0, x1, y1)`` clipped to the image, or ``None``.
        text: the explanation shown to people (candidate tokens removed).
        scores: ``found_target`` (the model emitted its candidate tokens), ``iou`` (the
            mask decoder's IoU estimate, ``None`` without a target), ``mask_pixels``,
            ``new_tokens``, ``exam`` and ``exam_probability`` (the exam head's kind),
            ``absent`` (``{"label", "reason"}`` when the question named a structure the
            image cannot show or the model was not trained on; ``medisee.model.asked_structure``).
        question: the question asked.
        raw_text: the reply with its candidate tokens, for the conversation history.
        box_normalized: the model's ``(cx, cy, w, h)`` / ``(W, H, W, H)``, or ``None``.
        image: the original-frame pixels (``H x W x 3`` uint8), for overlays.
    """

    mask: np.ndarray = field(repr=False)
    box: tuple[float, float, float, float] | None
    text: str
    scores: dict[str, Any]
    question: str = ""
    raw_text: str = ""
    box_normalized: tuple[float, float, float, float] | None = None
    image: np.ndarray | None = field(default=None, repr=False)

    @property
    def found_target(self) -> bool:
        return self.box is not None

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the original image."""
        return int(self.mask.shape[0]), int(self.mask.shape[1])

    # ----------------------------------------------------------------- outputs
    def box_json(self) -> dict[str, Any]:
        """Box in pixels of the original frame (see ``outputs.box_payload``)."""
        from medisee.inference.outputs import box_payload

        return box_payload(self.box, self.image_size, self.box_normalized)

    def explanation(self) -> str:
        return self.text

    def overlay(self, image: np.ndarray | None = None) -> np.ndarray:
        """``H' x W' x 3`` uint8: image, mask tint, box and a caption (question + text)."""
        from medisee.inference.outputs import draw_overlay

        pixels = image if image is not None else self.image
        if pixels is None:
            raise ValueError("this prediction carries no image: pass the image to overlay()")
        return draw_overlay(pixels, self.mask, self.box, self.question, self.text)

    def to_dict(self, mask_format: str = "none") -> dict[str, Any]:
        """JSON-ready summary; ``mask_format`` is ``"none"``, ``"rle"`` or ``"png"`` (base64)."""
        import base64

        from medisee.inference.outputs import encode_rle, mask_to_png_bytes

        data: dict[str, Any] = {
            "question": self.question,
            "text": self.text,
            "raw_text": self.raw_text,
            **self.box_json(),
            "scores": dict(self.scores),
        }
        if mask_format == "rle":
            data["mask"] = {"format": "rle", **encode_rle(self.mask)}
        elif mask_format == "png":
            encoded = base64.b64encode(mask_to_png_bytes(self.mask)).decode("ascii")
            data["mask"] = {"format": "png", "data": encoded}
        elif mask_format != "none":
            raise ValueError(f"mask_format must be none, rle or png, got {mask_format!r}")
        return data

    def save_mask_png(self, path: str | os.PathLike[str]) -> Path:
        from medisee.inference.outputs import mask_to_png_bytes

        return _write_bytes(path, mask_to_png_bytes(self.mask))

    def save_box_json(self, path: str | os.PathLike[str]) -> Path:
        import json

        return _write_bytes(path, (json.dumps(self.box_json(), indent=2) + "\n").encode())

    def save_overlay(self, path: str | os.PathLike[str], image: np.ndarray | None = None) -> Path:
        from medisee.inference.outputs import image_to_png_bytes

        return _write_bytes(path, image_to_png_bytes(self.overlay(image)))

    def save_text(self, path: str | os.PathLike[str]) -> Path:
        return _write_bytes(path, (self.text + "\n").encode())

    def save(self, directory: str | os.PathLike[str], overlay: bool = True) -> dict[str, Path]:
        """Write ``mask.png``, ``box.json``, ``answer.txt`` and (if the image is known)
        ``overlay.png`` into ``directory``; returns the paths by kind."""
        target = Path(directory)
        paths = {
            "mask": self.save_mask_png(target / "mask.png"),
            "box": self.save_box_json(target / "box.json"),
            "text": self.save_text(target / "answer.txt"),
        }
        if overlay and self.image is not None:
            paths["overlay"] = self.save_overlay(target / "overlay.png")
        return paths


def _write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


class Predictor:
    """Runs a ``MediSee`` model on images and questions (see the module docstring).

    Not thread-safe: one caller at a time (the server gives it to one worker thread).

    Args:
        model: the model; put in eval mode here.
        generation: default decoding options.
        batch_size: rows per generation batch in ``predict_batch`` (also images per
            encoder batch).
    """

    def __init__(
        self,
        model: MediSee,
        generation: GenerationOptions | None = None,
        batch_size: int = 4,
    ) -> None:
        from medisee.model.preprocess import SamTransform

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.generation = generation or GenerationOptions()
        self.batch_size = batch_size
        self.transform = SamTransform(model.config.mask.image_size)
        self.builder = model.prompt_builder()
        tokenizer = model.tokenizer
        # Specials a reply may not carry into the history: re-encoding an <image> token
        # would add an image position the sequence does not have room for.
        # (``all_special_ids`` alone misses ``<image>`` once the candidate tokens replaced
        # the additional special tokens, hence the added-token table and the id itself.)
        candidates = set(model.candidate_token_ids)
        specials = set(tokenizer.all_special_ids) | {model.language.image_token_id}
        specials |= {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        self._dropped_ids = specials - candidates
        self._state: ImageState | None = None
        self._ontology: Ontology | None = None  # loaded on the first reply checked

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str] | None = None,
        device: str | torch.device = "cpu",
        *,
        llm_dtype: torch.dtype | None = None,
        llm_quantization: str | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """Load a model onto ``device``: a checkpoint directory (``save_pretrained``,
        ``medisee export`` or a release), the released ``"medisee-lite"`` (the default when
        ``path`` is ``None``), or a Hugging Face Hub id (``medisee.model.released.resolve_model``).

        ``llm_dtype``/``llm_quantization`` are passed to ``MediSee.from_pretrained``;
        ``kwargs`` to the constructor (``generation``, ``batch_size``).
        """
        from medisee.model.medisee import MediSee
        from medisee.model.released import resolve_model

        model = MediSee.from_pretrained(
            resolve_model(path),
            map_location=device,
            llm_dtype=llm_dtype,
            llm_quantization=llm_quantization,
        )
        if llm_quantization is None:
            # Weights are loaded into modules built on the CPU: move them (a quantized LM is
            # placed by its loader and must not be moved).
            model = model.to(device)
        return cls(model, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ images
    def prepare(
        self, image: ImageInput | ImageState, options: ReadOptions | None = None, name: str = ""
    ) -> ImageState:
        """Decode and transform an image for the model; no model work (thread-safe). A CT
        file read with the ``"auto"`` window is shown as the model's training CT was
        (``ModelConfig.ct_window``) unless ``options.ct_window`` says otherwise."""
        if isinstance(image, ImageState):
            return image
        if isinstance(image, (str, os.PathLike)):
            name = name or str(image)
            ct_window = self.model.config.ct_window  # only files are displayed here
            if ct_window and (options is None or options.ct_window is None):
                options = dataclasses.replace(options or ReadOptions(), ct_window=ct_window)
        decoded = load_image(image, options)
        pixel_values, frame = self.transform.prepare(decoded.pixels)
        return ImageState(decoded, pixel_values, frame, name=name)

    def encode(self, states: Sequence[ImageState]) -> None:
        """Fill the ``embedding`` of the states that have none, in encoder batches."""
        # By identity: several questions of one batch may share a state.
        missing = list({id(s): s for s in states if s.embedding is None}.values())
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            pixels = torch.stack([state.pixel_values for state in chunk]).to(self.device)
            embeddings = self.model.embed_images(pixels)
            for state, embedding in zip(chunk, embeddings):
                state.embedding = embedding

    def set_image(
        self,
        image: ImageInput | ImageState,
        options: ReadOptions | None = None,
        **read_options: Any,
    ) -> ImageState:
        """Decode ``image``, run the image encoder once and make it the current image.

        ``read_options`` are ``ReadOptions`` fields (``window``, ``axis``, ``index``,
        ``frame``, ``modality``) for files.
        """
        if read_options:
            options = dataclasses.replace(options or ReadOptions(), **read_options)
        state = self.prepare(image, options)
        self.encode([state])
        self._state = state
        return state

    @property
    def image_state(self) -> ImageState | None:
        """The image of the last ``set_image``."""
        return self._state

    def reset_image(self) -> None:
        self._state = None

    # ----------------------------------------------------------------- prompts
    def _context_limit(self) -> int | None:
        config = getattr(self.model.language.base_model, "config", None)
        text_config = getattr(config, "text_config", None) or config
        limit = getattr(text_config, "max_position_embeddings", None)
        return int(limit) if limit else None

    def prompt_ids(
        self, question: str, history: History = (), max_new_tokens: int = 0
    ) -> list[int]:
        """Token ids of the conversation ending in the assistant marker.

        The oldest turns are dropped (never the image or the new question) when the
        prompt plus ``max_new_tokens`` would not fit the LM's context.
        """
        if not question or not question.strip():
            raise ValueError("the question is empty")
        turns: list[tuple[str, str | None]] = [(q, a) for q, a in history]
        limit = self._context_limit()
        while True:
            ids = self.builder.encode([*turns, (question, None)]).input_ids
            if limit is None or len(ids) + max_new_tokens <= limit:
                return ids
            if not turns:
                raise PromptTooLongError(
                    f"the question is too long: {len(ids)} prompt tokens + {max_new_tokens} new "
                    f"tokens exceed the model's context of {limit}"
                )
            turns = turns[1:]

    def _raw_text(self, answer: GeneratedAnswer) -> str:
        """The reply for the history: other specials dropped; candidate tokens kept only
        when they were decoded as a target (a stray or partial group in an earlier turn
        would make the next turn's candidate count check fail)."""
        dropped = self._dropped_ids
        if not answer.found_target:
            dropped = dropped | set(self.model.candidate_token_ids)
        kept = [t for t in answer.token_ids if t not in dropped]
        return self.model.tokenizer.decode(kept, skip_special_tokens=False).strip()

    # ----------------------------------------------------------------- predict
    def predict(
        self,
        question: str,
        history: History | None = None,
        *,
        image: ImageInput | ImageState | None = None,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        **generation: Any,
    ) -> Prediction:
        """Answer ``question`` about the current image (or ``image``).

        Args:
            question: the (possibly implicit) question.
            history: earlier ``(question, raw_answer)`` turns about the same image.
            image: an image to use instead of the current one (it is not made current).
            max_new_tokens, seed, generation: override ``GenerationOptions`` fields
                (``do_sample``, ``temperature``, ``top_p``).
        """
        if image is None:
            if self._state is None:
                raise ValueError("no image: call set_image(image) first or pass image=")
            state = self._state
        else:
            state = self.prepare(image)
        options = self._options(max_new_tokens, seed, generation)
        return self.run([PredictRequest(state, question, tuple(history or ()))], options)[0]

    def predict_batch(
        self,
        items: Iterable[tuple[ImageInput | ImageState, str] | PredictRequest],
        *,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        read_options: ReadOptions | None = None,
        progress: Callable[[int], None] | None = None,
        **generation: Any,
    ) -> list[Prediction]:
        """Predictions for many ``(image, question)`` pairs, in order (see ``predict_iter``)."""
        return list(
            self.predict_iter(
                items,
                max_new_tokens=max_new_tokens,
                seed=seed,
                read_options=read_options,
                progress=progress,
                **generation,
            )
        )

    def predict_iter(
        self,
        items: Iterable[tuple[ImageInput | ImageState, str] | PredictRequest],
        *,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        read_options: ReadOptions | None = None,
        progress: Callable[[int], None] | None = None,
        **generation: Any,
    ) -> Iterator[Prediction]:
        """Yield predictions in order, ``batch_size`` rows per generation batch.

        A path or array that occurs several times in a row (many questions about one
        image) is decoded and encoded once: recent images are kept by identity.
        ``progress(n)`` is called after each batch with the number of items it finished.
        """
        options = self._options(max_new_tokens, seed, generation)
        recent: OrderedDict[Any, ImageState] = OrderedDict()

        def to_request(item: Any) -> PredictRequest:
            if isinstance(item, PredictRequest):
                return item
            image, question = item
            key: Any = str(image) if isinstance(image, (str, os.PathLike)) else id(image)
            state = recent.get(key)
            if state is None:
                state = self.prepare(image, read_options)
                recent[key] = state
                while len(recent) > 2 * self.batch_size:
                    recent.popitem(last=False)
            return PredictRequest(state, question)

        batch: list[PredictRequest] = []
        for item in items:
            batch.append(to_request(item))
            if len(batch) == self.batch_size:
                yield from self.run(batch, options)
                if progress is not None:
                    progress(len(batch))
                batch = []
        if batch:
            yield from self.run(batch, options)
            if progress is not None:
                progress(len(batch))

    def _options(
        self, max_new_tokens: int | None, seed: int | None, generation: dict[str, Any]
    ) -> GenerationOptions:
        changes = dict(generation)
        if max_new_tokens is not None:
            changes["max_new_tokens"] = max_new_tokens
        if seed is not None:
            changes["seed"] = seed
        return dataclasses.replace(self.generation, **changes) if changes else self.generation

    def run(
        self, requests: Sequence[PredictRequest], options: GenerationOptions | None = None
    ) -> list[Prediction]:
        """The core: encode the images that need it, generate all rows as one batch
        (left-padded, KV cache), and map each answer back to the original frame.

        A request for both sides of a paired structure ("Where are the lungs?") is also
        asked once per side, in the same batch, and answered with both
        (``medisee.inference.paired``)."""
        if not requests:
            return []
        options = options or self.generation
        pairs = [
            both_sides(request.question, self.ontology) if options.constrain_answer else None
            for request in requests
        ]
        rows = list(requests)
        for request, pair in zip(requests, pairs):
            if pair is not None:
                rows += [replace(request, question=side_question(label)) for label in pair.labels]
        answered = self._run_rows(rows, options)
        sides = iter(answered[len(requests) :])
        predictions = []
        for prediction, pair in zip(answered, pairs):
            if pair is not None:
                merged = merge_sides(pair.plural, [next(sides), next(sides)])
                prediction = replace(merged, question=prediction.question) if merged else prediction
            predictions.append(prediction)
        return predictions

    @property
    def ontology(self) -> Ontology:
        """The ontology the replies are read against, loaded once."""
        if self._ontology is None:
            self._ontology = Ontology.load()
        return self._ontology

    def _run_rows(
        self, requests: Sequence[PredictRequest], options: GenerationOptions
    ) -> list[Prediction]:
        """One generation batch: a prediction per request."""
        self.encode([request.state for request in requests])
        prompts = [
            self.prompt_ids(request.question, request.history, options.max_new_tokens)
            for request in requests
        ]
        device = self.device
        embeddings = stack_embeddings(request.state for request in requests)
        sizes = torch.tensor([request.state.size for request in requests], device=device)
        pixels = None
        if not self.model.language.uses_segmenter_embedding:
            pixels = torch.stack([request.state.pixel_values for request in requests]).to(device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": options.max_new_tokens,
            "do_sample": options.do_sample,
            "constrain_answer": [
                options.constrain_answer
                and (not request.history or asks_for_region(request.question))
                for request in requests
            ],
            "constrain_to_exam": options.constrain_to_exam,
            "questions": [request.question for request in requests],
            "use_question_prior": options.question_prior,
        }
        if options.do_sample:
            kwargs.update(temperature=options.temperature, top_p=options.top_p)
        with torch.random.fork_rng(devices=_rng_devices(device)):
            if options.seed is not None:
                torch.manual_seed(options.seed)
            answers = self.model.generate(
                prompts, sizes, pixel_values=pixels, image_embeddings=embeddings, **kwargs
            )
        return [self._to_prediction(r, a) for r, a in zip(requests, answers)]

    def _to_prediction(self, request: PredictRequest, answer: GeneratedAnswer) -> Prediction:
        state = request.state
        mask, box, box_normalized = to_original_frame(state.frame, answer.mask_logits, answer.box)
        # The raw reply keeps every token (it is the next turn's history); the shown one
        # ends on a whole sentence, and its explanation is about the structure it names.
        text = complete_sentences(" ".join(answer.text.split()))
        replaced = repositioned = False
        subject = None
        if answer.found_target:
            modality = state.image.meta.modality
            if modality not in MODALITY_NOUNS:  # a PNG has none, a DICOM says "MR"
                modality = exam_modality(answer.exam)
            text, replaced = checked_reply(text, modality, self.ontology)
            text, repositioned = grounded_position(text, mask)
            text, subject = presence_reply(request.question, text)
        return Prediction(
            mask=mask,
            box=box,
            text=text,
            scores={
                "found_target": answer.found_target,
                "iou": answer.iou_score,
                "mask_pixels": int(mask.sum()),
                "new_tokens": len(answer.token_ids),
                "exam": answer.exam,
                "exam_probability": answer.exam_probability,
                # The structure the question named that the image cannot show (or the
                # model was not trained on): {"label", "reason"}; None otherwise.
                "absent": dataclasses.asdict(answer.absent) if answer.absent else None,
                # "ontology" where the LM's explanation was about another structure than
                # the answer's and the ontology's took its place
                # (medisee.inference.explanation); "model" otherwise.
                "explanation": "ontology" if replaced else "model",
                # Whether "lies in the ... part of the image" was said from the mask, where
                # the LM named another part (medisee.inference.explanation).
                "position_from_mask": repositioned,
                # Asked whether a structure is there, the structure outlined, its answer
                # sentence replaced by what the model can say (medisee.inference.explanation).
                "presence_unknown": subject,
            },
            question=request.question.strip(),
            raw_text=self._raw_text(answer),
            box_normalized=box_normalized,
            image=state.image.pixels,
        )

    def conversation(
        self, image: ImageInput | ImageState | None = None, knowledge: bool = True
    ) -> Conversation:
        """A multi-turn chat about ``image`` (default: the current image); ``knowledge``:
        see :class:`Conversation`."""
        if image is None:
            if self._state is None:
                raise ValueError("no image: call set_image(image) first or pass one")
            state = self._state
        else:
            state = self.prepare(image)
            self.encode([state])
        return Conversation(self, state, knowledge)


Box = tuple[float, float, float, float]


def to_original_frame(
    frame: ImageFrame, mask_logits: torch.Tensor | None, box: torch.Tensor | None
) -> tuple[np.ndarray, Box | None, Box | None]:
    """The model's answer for one image in its original frame.

    Args:
        frame: the image's geometry (``ImageState.frame``).
        mask_logits: ``[L, L]`` low-res logits in the segmenter's input frame, or ``None``.
        box: normalised ``(cx, cy, w, h)`` of the original ``(W, H)``, or ``None``.

    Returns ``(mask, box, box_normalized)``: ``H x W`` bool (all False without a target),
    the pixel-edge ``(x0, y0, x1, y1)`` clipped to the image, and the normalised box as
    floats; both boxes ``None`` without a target. Predictions and evaluation both map
    answers through this function.
    """
    height, width = frame.original_size
    if mask_logits is None or box is None:
        return np.zeros((height, width), dtype=bool), None, None
    logits = mask_logits.detach().float().cpu()[None, None]
    mask = (frame.mask_logits_to_original(logits)[0, 0] > 0).numpy()
    normalized = box.detach().float().cpu()
    pixel_box = clip_box(denormalize_box(normalized, (height, width)), (height, width))
    x0, y0, x1, y1 = (float(v) for v in pixel_box)
    cx, cy, w, h = (float(v) for v in normalized)
    return mask, (x0, y0, x1, y1), (cx, cy, w, h)


def _rng_devices(device: torch.device) -> list[Any]:
    return [device] if device.type == "cuda" else []


class Conversation:
    """Questions about one image, each seeing the earlier turns (raw replies kept).

    With ``knowledge`` (the default) and a pretrained LM to ask (the question prior's, or
    the model's own under adapters), a turn that asks about the structure found last
    rather than for a region is answered by that LM from its own knowledge
    (``medisee.inference.knowledge.answer_follow_up``); the prediction's
    ``scores["reply"]`` says ``"knowledge"`` there and ``"model"`` elsewhere.
    """

    def __init__(self, predictor: Predictor, state: ImageState, knowledge: bool = True) -> None:
        self.predictor = predictor
        self.state = state
        self.knowledge = knowledge
        self.history: list[tuple[str, str]] = []
        self.predictions: list[Prediction] = []
        self.subject: str | None = None  # the structure found last, for "it"

    def ask(self, question: str, **generation: Any) -> Prediction:
        asked, history = model_turn(question, self.history, self.subject)
        prediction = self.predictor.predict(asked, history, image=self.state, **generation)
        prediction = dataclasses.replace(prediction, question=question.strip())
        prediction, self.subject = answer_follow_up(
            self.predictor.model, prediction, self.subject, enabled=self.knowledge
        )
        self.history.append((prediction.question, prediction.raw_text))
        self.predictions.append(prediction)
        return prediction

    def reset(self) -> None:
        """Forget the turns; the image (and its cached embedding) stays."""
        self.history.clear()
        self.predictions.clear()
        self.subject = None

    def transcript(self) -> list[dict[str, Any]]:
        return [
            {"question": p.question, "answer": p.text, "raw_answer": p.raw_text, **p.box_json()}
            for p in self.predictions
        ]
