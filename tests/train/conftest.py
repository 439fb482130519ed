"""Synthetic records on disk: two shapes per non-square image, exact masks, both QA kinds."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medisee.boxes import mask_to_box
from medisee.data.schema import QAItem, Record, Target


def _qa(label: str, where: str) -> list[QAItem]:
    return [
        QAItem("referring", None, "short", f"Segment the {label}.", f"It is the {label}.", ""),
        QAItem(
            "reasoning",
            "location",
            "short",
            f"What is the bright structure on the {where}?",
            f"It is the {label}.",
            f"It lies on the {where} of the image.",
        ),
        QAItem(
            "reasoning",
            "attribute",
            "long",
            f"Which round structure here stands out from its surroundings on the {where}?",
            f"The {label}.",
            "Its intensity differs from the background.",
        ),
    ]


def write_synthetic_records(root, count: int = 6, height: int = 48, width: int = 64, seed: int = 0):
    """``count`` images ``height x width`` with a bright disc ("liver") on the left and a
    dark square ("kidney") on the right; splits train/val/test in a 4:1:1 cycle."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    splits = ["train", "train", "train", "train", "val", "test"]
    records = []
    yy, xx = np.mgrid[:height, :width]
    for i in range(count):
        image = rng.normal(100, 8, (height, width))
        cy, cx, r = rng.integers(14, 34), rng.integers(12, 24), rng.integers(6, 10)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        square = np.zeros((height, width), bool)
        sy, sx = rng.integers(8, 30), rng.integers(38, 50)
        square[sy : sy + 12, sx : sx + 10] = True
        image[disc] = 220
        image[square] = 20
        name = f"img_{i:03d}"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / f"{name}.png")
        targets = []
        for label, mask, where in (("liver", disc, "left"), ("kidney", square, "right")):
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / f"{name}_{label}.png")
            targets.append(
                Target(
                    label,
                    f"{name}_{label}.png",
                    mask_to_box(mask),
                    int(mask.sum()),
                    _qa(label, where),
                )
            )
        records.append(
            Record(
                id=name,
                image=f"{name}.png",
                modality="ct",
                source="synthetic",
                source_id=name,
                height=height,
                width=width,
                targets=targets,
                split=splits[i % len(splits)],
            )
        )
    return records


@pytest.fixture
def synthetic_records(tmp_path):
    root = tmp_path / "data"
    return write_synthetic_records(root), root
