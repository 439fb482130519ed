"""Inference: ``Predictor`` (image embedding cached), ``Prediction`` and its writers.

Names are imported on first use, so ``import medisee.inference`` (and the CLI that
registers its verbs) does not import torch or build anything.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Predictor": "medisee.inference.predictor",
    "Prediction": "medisee.inference.predictor",
    "PredictRequest": "medisee.inference.predictor",
    "GenerationOptions": "medisee.inference.predictor",
    "ImageState": "medisee.inference.predictor",
    "Conversation": "medisee.inference.predictor",
    "ReadOptions": "medisee.inference.inputs",
    "VolumePrediction": "medisee.inference.volume",
    "predict_volume": "medisee.inference.volume",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
