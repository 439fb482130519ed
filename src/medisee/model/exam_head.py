"""The exam head: which kind of exam an image is, read off its segmenter embedding.

A brain MRI cannot show a lung, and a fundus photograph no sternum. Yet a constrained
answer (``medisee.model.answer_constraint``) may name any trained label, and on questions
written outside the template engine the LM often names one from another exam ("the
aorta" on a brain MRI). The head scores the exam kinds of the training data (a record's
``meta["kind"]``, such as ``brain_mri`` or ``chest_ct``, else its modality:
``medisee.data.schema.exam_kind``) from the frozen segmenter's image embedding, pooled per
channel (mean and max over the grid). Generation then constrains an answer to the labels
trained on images of the kinds the head finds likely (``allowed_exams``).

The head is a linear classifier fitted after training, on the training images' cached
embeddings (``fit_exam_head``): the kinds are few and far apart in the embedding, so a
convex fit on pooled features is enough, and the weights of the rest of the model are
untouched by it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn


class ExamHead(nn.Module):
    """``[B, C, g, g]`` image embeddings -> ``[B, K]`` logits over ``K`` exam kinds.

    The weights start at zero (every kind equally likely) and draw nothing from the RNG,
    so adding the head leaves every other initialisation as it was.
    """

    def __init__(self, channels: int, num_exams: int) -> None:
        super().__init__()
        if channels < 1 or num_exams < 1:
            raise ValueError(
                f"ExamHead needs channels >= 1 and num_exams >= 1, got {channels}, {num_exams}"
            )
        self.weight = nn.Parameter(torch.zeros(num_exams, 2 * channels))
        self.bias = nn.Parameter(torch.zeros(num_exams))

    @staticmethod
    def pool(embeddings: torch.Tensor) -> torch.Tensor:
        """``[B, C, g, g]`` -> ``[B, 2C]`` float32: per-channel mean and max over the grid,
        each row normalised to zero mean and unit variance (the scale of an embedding
        varies with the image's contrast more than with its kind)."""
        if embeddings.dim() != 4:
            raise ValueError(f"expected [B, C, g, g] embeddings, got {tuple(embeddings.shape)}")
        flat = embeddings.float().flatten(2)
        features = torch.cat((flat.mean(-1), flat.amax(-1)), dim=1)
        return nn.functional.layer_norm(features, features.shape[-1:])

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, 2C]`` pooled features (``pool``) -> ``[B, K]`` logits."""
        return nn.functional.linear(features, self.weight, self.bias)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.classify(self.pool(embeddings))


def fit_exam_head(
    head: ExamHead,
    features: torch.Tensor,
    targets: torch.Tensor,
    steps: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-3,
) -> dict[str, float]:
    """Fit ``head`` in place on ``[N, 2C]`` pooled features and ``[N]`` kind indices:
    full-batch AdamW on cross-entropy, each kind weighted by the inverse of its count (one
    kind is most of the demo's images). Deterministic. Returns the final loss and the
    training accuracy."""
    if features.dim() != 2 or targets.shape != features.shape[:1]:
        raise ValueError(
            f"features [N, D] and targets [N] expected, got {tuple(features.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    num_exams = head.bias.shape[0]
    if int(targets.min()) < 0 or int(targets.max()) >= num_exams:
        raise ValueError(f"targets must be kind indices in [0, {num_exams})")
    device = head.weight.device
    features, targets = features.to(device).float(), targets.to(device).long()
    counts = torch.bincount(targets, minlength=num_exams).clamp(min=1).float()
    loss_fn = nn.CrossEntropyLoss(weight=counts.sum() / (num_exams * counts))
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(head.classify(features), targets)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        logits = head.classify(features)
        final = float(loss_fn(logits, targets))
        accuracy = float((logits.argmax(-1) == targets).float().mean())
    return {"loss": final, "accuracy": accuracy}


def allowed_exams(probabilities: torch.Tensor, min_probability: float) -> list[list[int]]:
    """``[B, K]`` probabilities -> per row, the kinds at or above ``min_probability``,
    always with the most likely one (so an unsure head widens the answer's choice rather
    than narrowing it to a guess)."""
    if probabilities.dim() != 2:
        raise ValueError(f"expected [B, K] probabilities, got {tuple(probabilities.shape)}")
    out = []
    for row in probabilities:
        kinds = {int(row.argmax())} | {int(k) for k in torch.nonzero(row >= min_probability)}
        out.append(sorted(kinds))
    return out


def labels_of_exams(
    exams: Mapping[str, Sequence[str]], kinds: Sequence[str], chosen: Sequence[int]
) -> tuple[str, ...]:
    """The labels trained on the exam kinds ``chosen`` (indices into ``kinds``)."""
    return tuple(sorted({label for k in chosen for label in exams[kinds[k]]}))
