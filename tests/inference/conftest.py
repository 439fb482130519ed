"""Fixtures of the inference tests (helpers in ``tests.inference.helpers``)."""

from __future__ import annotations

import pytest

from medisee.inference.predictor import Predictor
from tests.inference.helpers import echo_predictor, make_tiny_model, one_torch_thread  # noqa: F401


@pytest.fixture
def predictor() -> Predictor:
    """The random tiny model, its own LM generating."""
    return Predictor(make_tiny_model(), batch_size=4)


@pytest.fixture
def echo(monkeypatch) -> Predictor:
    """The tiny model whose LM always emits the candidate tokens (echoing the question)."""
    return echo_predictor(monkeypatch)


@pytest.fixture(scope="session")
def saved_tiny_model(tmp_path_factory):
    """A ``save_pretrained`` directory of the tiny model (for the CLIs)."""
    path = tmp_path_factory.mktemp("model") / "tiny"
    make_tiny_model().save_pretrained(path)
    return path
