"""Fixtures of the inference tests (helpers in ``tests.inference.helpers``)."""

from __future__ import annotations

import pytest
import torch

from medisee.inference.predictor import Predictor
from tests.inference.helpers import echo_predictor, make_tiny_model


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


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine an
    OpenMP team spinning against other processes makes them 10-20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
