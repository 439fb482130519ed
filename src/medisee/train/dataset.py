"""Training/evaluation examples from a medisee manifest.

One example is one QA item about one target of one record. It yields the expanded
``input_ids``/``labels`` for the model's chat format, the segmenter input (or the cached
image embedding), the target mask in the segmenter's low-res input frame and the
normalised ground-truth box. For the fine-tuning stage it also yields the plain-label
query ("Segment the liver.") whose similarity map is the target of ``L_sim``.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from medisee.boxes import normalize_box
from medisee.model.preprocess import SamTransform
from medisee.model.prompting import IGNORE_INDEX, PromptBuilder, right_pad


@dataclass(frozen=True)
class ExampleRef:
    """Where an example comes from, and the groups it is reported under."""

    record: int
    target: int
    qa: int
    kind: str  # referring | reasoning
    perspective: str | None
    length: str
    label: str
    split: str
    modality: str


def repeat_factors(examples: Sequence[ExampleRef], threshold: float) -> list[float]:
    """LVIS repeat factors per example: ``max(1, sqrt(threshold / f))``, ``f`` the fraction
    of the examples' images (records) that hold the example's structure."""
    images: dict[str, set[int]] = {}
    for ref in examples:
        images.setdefault(ref.label, set()).add(ref.record)
    count = len({ref.record for ref in examples})
    return [max(1.0, math.sqrt(threshold * count / len(images[ref.label]))) for ref in examples]


def area_factors(areas: Sequence[float], power: float) -> list[float]:
    """Per example ``(a / max(a)) ** -power``, ``a`` the share of its image the example's
    target covers (in ``(0, 1]``): 1 for the largest targets, more for smaller ones, so
    that a pass over the examples draws small targets more often (``power`` 0: all 1)."""
    if not areas:
        return []
    if min(areas) <= 0:
        raise ValueError("target area shares must be > 0")
    largest = max(areas)
    return [(area / largest) ** -power for area in areas]


def label_query(label: str) -> tuple[str, str]:
    """The plain, non-reasoning query for a label, and its answer (L_sim's target)."""
    return f"Segment the {label}.", f"It is the {label}."


def mask_to_input_frame(mask: np.ndarray, transform: SamTransform, low_res: int) -> torch.Tensor:
    """``H x W`` bool mask (original frame) -> ``[L, L]`` float {0,1} in the segmenter's
    low-res input frame: resized like the image (longest side), padded bottom/right, then
    brought to ``L``; area-weighted resizing thresholded at 0.5 keeps thin parts."""
    frame = transform.frame(mask.shape)
    tensor = torch.from_numpy(mask.astype(np.float32))[None, None]
    h, w = frame.resized_size
    resized = F.interpolate(tensor, (h, w), mode="bilinear", align_corners=False, antialias=True)
    size = frame.input_size
    padded = F.pad(resized, (0, size - w, 0, size - h))
    if low_res != size:
        padded = F.interpolate(
            padded, (low_res, low_res), mode="bilinear", align_corners=False, antialias=True
        )
    return (padded[0, 0] >= 0.5).float()


class MediSeeDataset(Dataset):
    """Examples over ``records`` (``medisee.data.schema.Record``) stored under ``root``.

    Args:
        records: validated records (see ``medisee.data``).
        root: directory the records' relative image/mask paths start from.
        builder: the model's ``PromptBuilder``.
        image_size: segmenter input side S; ``low_res``: side L of its mask logits.
        embedding_cache: optional ``EmbeddingCache``; when given, items carry
            ``image_embeddings`` instead of ``pixel_values``.
        with_label_query: also encode the plain-label query (fine-tuning stage).
        kinds: which QA kinds to include.
    """

    def __init__(
        self,
        records: Sequence[Any],
        root: str | Path,
        builder: PromptBuilder,
        image_size: int,
        low_res: int,
        embedding_cache: Any | None = None,
        with_label_query: bool = False,
        kinds: Sequence[str] = ("referring", "reasoning"),
        max_length: int | None = None,
    ) -> None:
        self.records = list(records)
        self.root = Path(root)
        self.builder = builder
        self.transform = SamTransform(image_size)
        self.low_res = low_res
        self.embedding_cache = embedding_cache
        self.with_label_query = with_label_query
        self.max_length = max_length
        # Each target's mask in the low-res input frame, made on first use: a target is
        # drawn dozens of times, and decoding + resizing its mask is ~1 ms each time.
        # Kept as bool (L * L bytes, 64 KiB at LiteMedSAM's 256).
        self._frame_masks: dict[tuple[int, int], torch.Tensor] = {}
        self.examples: list[ExampleRef] = []
        for r, record in enumerate(self.records):
            for t, target in enumerate(record.targets):
                for q, item in enumerate(target.qa):
                    if item.kind in kinds:
                        self.examples.append(
                            ExampleRef(
                                r,
                                t,
                                q,
                                item.kind,
                                item.perspective,
                                item.length,
                                target.label,
                                record.split,
                                record.modality,
                            )
                        )

    def __len__(self) -> int:
        return len(self.examples)

    def text_lengths(self) -> list[int]:
        """Characters of question, answer and explanation per example: a tokenizer-free
        proxy for sequence length, used to group batches by length."""
        lengths = []
        for ref in self.examples:
            item = self.records[ref.record].targets[ref.target].qa[ref.qa]
            lengths.append(len(item.question) + len(item.answer) + len(item.explanation or ""))
        return lengths

    def target_area_shares(self) -> list[float]:
        """Per example, the share of its image its target covers (> 0: a record's
        targets have positive areas, ``medisee.data.schema.Target``)."""
        shares = []
        for ref in self.examples:
            record = self.records[ref.record]
            shares.append(record.targets[ref.target].area / (record.height * record.width))
        return shares

    def indices_of(self, kind: str) -> list[int]:
        return [i for i, ref in enumerate(self.examples) if ref.kind == kind]

    def image_path(self, record_index: int) -> Path:
        return self.root / self.records[record_index].image

    def load_image(self, record_index: int) -> np.ndarray:
        from medisee.data.io import read_image

        return read_image(self.image_path(record_index)).pixels

    def load_mask(self, record_index: int, target_index: int) -> np.ndarray:
        from medisee.data.masks import load_mask

        record = self.records[record_index]
        target = record.targets[target_index]
        return load_mask(target.mask, self.root, shape=(record.height, record.width))

    def input_frame_mask(self, record_index: int, target_index: int) -> torch.Tensor:
        """``[L, L]`` float {0, 1}: ``mask_to_input_frame`` of the target's mask."""
        key = (record_index, target_index)
        if key not in self._frame_masks:
            mask = self.load_mask(record_index, target_index)
            self._frame_masks[key] = mask_to_input_frame(mask, self.transform, self.low_res) > 0
        return self._frame_masks[key].float()

    def _encode(
        self, question: str, answer: str, explanation: str | None
    ) -> tuple[list[int], list[int]]:
        encoded = self.builder.encode([(question, self.builder.answer_text(answer, explanation))])
        ids, labels = encoded.input_ids, encoded.labels
        if self.max_length is not None and len(ids) > self.max_length:
            raise ValueError(
                f"example of {len(ids)} tokens exceeds max_length {self.max_length}; "
                "raise the model's max_position_embeddings or shorten the text"
            )
        return ids, labels

    def __getitem__(self, index: int) -> dict[str, Any]:
        ref = self.examples[index]
        record = self.records[ref.record]
        target = record.targets[ref.target]
        item = target.qa[ref.qa]
        input_ids, labels = self._encode(item.question, item.answer, item.explanation)
        example: dict[str, Any] = {
            "index": index,
            "input_ids": input_ids,
            "labels": labels,
            "image_size": (record.height, record.width),
            "target_mask": self.input_frame_mask(ref.record, ref.target),
            "target_box": normalize_box(
                torch.tensor(target.box_xyxy, dtype=torch.float32), (record.height, record.width)
            ),
        }
        if self.embedding_cache is not None:
            # As stored (fp16, possibly the cache's own tensor): ``Collator`` converts to
            # float32 while stacking.
            example["image_embeddings"] = self.embedding_cache.load(
                self.image_path(ref.record), dtype=None
            )
        else:
            example["pixel_values"] = self.transform.prepare(self.load_image(ref.record))[0]
        if self.with_label_query:
            question, answer = label_query(target.label)
            example["label_input_ids"] = self._encode(question, answer, None)[0]
        return example


def stack_as_float32(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack`` into a float32 batch, converting each tensor as it is copied in (no
    float32 copy per tensor first)."""
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"cannot stack tensors of different shapes {sorted(shapes)}")
    batch = torch.empty((len(tensors), *tensors[0].shape), dtype=torch.float32)
    for row, tensor in zip(batch, tensors):
        row.copy_(tensor)
    return batch


class Collator:
    """Right-pads token sequences and stacks tensors into a batch dict."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = right_pad([e["input_ids"] for e in examples], self.pad_token_id)
        labels, _ = right_pad([e["labels"] for e in examples], IGNORE_INDEX)
        batch = {
            "index": torch.tensor([e["index"] for e in examples]),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "image_sizes": torch.tensor([e["image_size"] for e in examples]),
            "target_masks": torch.stack([e["target_mask"] for e in examples]),
            "target_boxes": torch.stack([e["target_box"] for e in examples]),
        }
        for key in ("pixel_values", "image_embeddings"):
            if key in examples[0]:
                batch[key] = stack_as_float32([e[key] for e in examples])
        if "label_input_ids" in examples[0]:
            ids, mask = right_pad([e["label_input_ids"] for e in examples], self.pad_token_id)
            batch["label_input_ids"], batch["label_attention_mask"] = ids, mask
        return batch


class MixedSampler(Sampler[int]):
    """Endless, deterministic stream mixing referring and reasoning examples.

    Each draw takes a referring example with probability ``referring_ratio`` (paper 7:3 ->
    0.7), else a reasoning one; within each pool it walks a seeded permutation, reshuffled
    every pass. The stream is a pure function of ``(seed, position)``, so a resumed run
    continues exactly where it stopped (``start`` = draws already consumed). Under data
    parallelism each process takes every ``world_size``-th draw of the one global stream.

    Length grouping (``lengths`` given and ``group_steps > 0``): the global stream is cut
    into windows of ``group_steps * step_draws`` draws; each window is sorted by length
    and its ``step_draws``-sized slices (one optimizer step of every process) are put in
    a seeded random order. A batch then pads to a length close to its members' (the
    mixed-length draws of the demo data waste ~30% of a step on padding otherwise), the
    draws themselves are unchanged, and the stream is still a pure function of
    ``(seed, position)``, so resuming at a step boundary stays exact.

    Repeat-factor sampling (``repeat_factors`` given, LVIS-style): in each pass over a pool
    an example with factor ``r >= 1`` appears ``floor(r)`` times, plus once more with
    probability ``r - floor(r)`` (seeded per pass), so rare structures are seen more often.
    """

    def __init__(
        self,
        referring: Sequence[int],
        reasoning: Sequence[int],
        referring_ratio: float,
        seed: int,
        start: int = 0,
        length: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        lengths: Sequence[int] | None = None,
        group_steps: int = 0,
        step_draws: int = 1,
        repeat_factors: Sequence[float] | None = None,
    ) -> None:
        if repeat_factors is not None and min(repeat_factors, default=1.0) < 1.0:
            raise ValueError("repeat factors must be >= 1")
        if group_steps < 0 or step_draws <= 0:
            raise ValueError(
                f"group_steps must be >= 0 and step_draws > 0, got {group_steps}, {step_draws}"
            )
        if group_steps and lengths is None:
            raise ValueError("length grouping (group_steps > 0) needs the examples' lengths")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if not 0.0 <= referring_ratio <= 1.0:
            raise ValueError(f"referring_ratio must be in [0, 1], got {referring_ratio}")
        if not referring and not reasoning:
            raise ValueError(
                "no training examples: both the referring and reasoning pools are empty"
            )
        if not referring:
            referring_ratio = 0.0
        elif not reasoning:
            referring_ratio = 1.0
        self.pools = (list(referring), list(reasoning))
        self.ratio = referring_ratio
        self.seed = seed
        self.start = start
        self.length = length
        self.rank = rank
        self.world_size = world_size
        self.lengths = lengths
        self.group_steps = group_steps
        self.step_draws = step_draws
        self.repeat_factors = repeat_factors

    def __len__(self) -> int:
        return self.length if self.length is not None else 2**31 - 1

    def stream(self) -> Iterator[int]:
        draws = self._draws()
        if self.group_steps:
            draws = self._grouped(draws)
        for position, index in enumerate(draws):
            if position >= self.start and position % self.world_size == self.rank:
                yield index

    def _grouped(self, draws: Iterator[int]) -> Iterator[int]:
        assert self.lengths is not None
        lengths = self.lengths
        size = self.group_steps * self.step_draws
        for number in itertools.count():
            window = sorted(itertools.islice(draws, size), key=lambda i: -lengths[i])
            slices = [window[i : i + self.step_draws] for i in range(0, size, self.step_draws)]
            random.Random(f"{self.seed}-group-{number}").shuffle(slices)
            for chunk in slices:
                yield from chunk

    def _draws(self) -> Iterator[int]:
        """The global stream of draws, before grouping and sharding."""
        choice_rng = random.Random(f"{self.seed}-choice")
        cursors = [0, 0]
        passes = [0, 0]
        orders: list[list[int]] = [[], []]
        while True:
            pool = 0 if choice_rng.random() < self.ratio else 1
            if cursors[pool] == len(orders[pool]):
                rng = random.Random(f"{self.seed}-{pool}-{passes[pool]}")
                orders[pool] = self._pass(self.pools[pool], rng)
                rng.shuffle(orders[pool])
                passes[pool] += 1
                cursors[pool] = 0
            cursors[pool] += 1
            yield orders[pool][cursors[pool] - 1]

    def _pass(self, pool: list[int], rng: random.Random) -> list[int]:
        """One pass over ``pool``, each example repeated by its factor."""
        if self.repeat_factors is None:
            return list(pool)
        order = []
        for index in pool:
            factor = self.repeat_factors[index]
            order += [index] * (int(factor) + (rng.random() < factor - int(factor)))
        return order

    def __iter__(self) -> Iterator[int]:
        stream = self.stream()
        if self.length is None:
            yield from stream
            return
        for _ in range(self.length):
            yield next(stream)
