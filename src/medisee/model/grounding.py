"""Grounding head (``lite`` preset): a query-conditioned coarse map over the SAM embedding.

Why it exists: the paper's box decoder regresses a box from ``h_det`` alone, so the box's
location must travel from the image through the LM's attention into one vector. At 7B
scale with 1024 px and a pretrained MLLM that is learned; with a small LM trained from
scratch on a CPU budget it is not (measured in ``docs/training.md``: the MLP box stays at
the image centre). The grounding head instead scores every cell of the segmenter's image
embedding against a query computed from ``h_det``:

    map[b, y, x] = <q(h_det[b]), k(E[b, :, y, x] + PE[:, y, x])> / sqrt(dim) + bias

(``E`` the frozen SAM embedding, ``PE`` SAM's dense positional encoding, so the keys know
where a cell is). It is trained against the ground-truth mask at the embedding's grid
(``medisee.losses.grounding_loss``), and the box is read off the map: the bounding box of
the connected region above the threshold that holds the map's peak.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medisee.model.config import GroundingConfig


class GroundingHead(nn.Module):
    """``(h [B, d], E [B, C, g, g], PE [1, C, g, g]) -> logits [B, g, g]``."""

    def __init__(self, hidden_size: int, embedding_dim: int, config: GroundingConfig) -> None:
        super().__init__()
        self.config = config
        self.query = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, config.dim)
        )
        self.keys = nn.Conv2d(embedding_dim, config.dim, kernel_size=1)
        # Start with a low prior: most of the image is background for any one target.
        self.bias = nn.Parameter(torch.tensor(-2.0))
        self.refine = _refiner(config) if config.refine_layers > 0 else None

    def forward(
        self, state: torch.Tensor, image_embeddings: torch.Tensor, positional: torch.Tensor
    ) -> torch.Tensor:
        """Same function as ``reference_forward``, computed in the order that is cheap.

        The keys (a 1x1 conv), the per-channel product with the query and the refiner's
        first 1x1 conv are all linear in the embedding, so they fold into one per-sample
        ``[1 + refine_dim, C]`` matrix applied to ``E + PE``: one batched matmul over the
        cells instead of a ``dim``-wide key map, its product with the query and a conv over
        that (~4x fewer FLOPs in those layers at the lite preset's widths, and the
        ``[B, dim, g, g]`` intermediates are never stored for backward; half the time per
        step, ``benchmarks/grounding_head.py``).
        """
        dtype = image_embeddings.dtype
        batch, channels, height, width = image_embeddings.shape
        key_weight = self.keys.weight[:, :, 0, 0].to(dtype)  # [k, C]
        key_bias = _bias(self.keys).to(dtype)  # [k]
        query = self.query(state).to(dtype) / self.config.dim**0.5  # [B, k]
        # Row 0: the linear score sum_k q_k (W x + b)_k; rows 1..: the refiner's first conv
        # V (q * (W x + b)) + c.
        weights = [query[:, None, :]]  # [B, 1, k]
        offsets = [(query * key_bias)[:, None].sum(-1, keepdim=True)]  # [B, 1, 1]
        if self.refine is not None:
            first = self.refine[0]
            if not isinstance(first, nn.Conv2d):
                raise TypeError(f"the refiner must start with a 1x1 Conv2d, not {type(first)}")
            project = first.weight[:, :, 0, 0].to(dtype)  # [w, k]
            modulated_project = project[None] * query[:, None, :]  # [B, w, k]
            weights.append(modulated_project)
            offsets.append(
                (modulated_project @ key_bias)[..., None] + _bias(first).to(dtype)[None, :, None]
            )
        folded = torch.cat(weights, 1) @ key_weight  # [B, 1 + w, C]
        # F (E + PE) as F E + F PE: PE is shared by the batch, so this skips a [B, C, g, g]
        # sum (and keeping it for backward) for one small matmul.
        scores = torch.bmm(folded, image_embeddings.reshape(batch, channels, height * width))
        positional_scores = folded @ positional.to(dtype).reshape(channels, height * width)
        if self.training and self.config.position_dropout > 0:
            keep = torch.rand(batch, 1, 1, device=scores.device) >= self.config.position_dropout
            positional_scores = positional_scores * keep.to(dtype)
        scores = scores + positional_scores
        scores = (scores + torch.cat(offsets, 1)).view(batch, -1, height, width)
        logits = scores[:, 0] + self.bias
        if self.refine is not None:
            # A small conv tower sees each cell's neighbourhood, which a dot product cannot
            # (a lesion is "a bright blob inside the organ", not one cell's feature).
            logits = logits + self.refine[1:](scores[:, 1:])[:, 0]
        return logits

    def reference_forward(
        self, state: torch.Tensor, image_embeddings: torch.Tensor, positional: torch.Tensor
    ) -> torch.Tensor:
        """The head as written in the module docstring (for tests and reading)."""
        keys = self.keys(image_embeddings + positional.to(image_embeddings.dtype))
        query = self.query(state).to(keys.dtype)
        # Per-channel products; their sum over channels is the linear query-key score.
        modulated = keys * query[:, :, None, None] / self.config.dim**0.5  # [B, k, g, g]
        logits = modulated.sum(1) + self.bias
        if self.refine is not None:
            logits = logits + self.refine(modulated)[:, 0]
        return logits


def _refiner(config: GroundingConfig) -> nn.Sequential:
    """``[B, dim, g, g] -> [B, 1, g, g]``; the last layer starts at zero, so a new head
    begins as the plain linear map."""
    width = config.refine_dim
    layers: list[nn.Module] = [nn.Conv2d(config.dim, width, kernel_size=1), nn.GELU()]
    for _ in range(config.refine_layers):
        layers += [nn.Conv2d(width, width, kernel_size=3, padding=1), nn.GELU()]
    out = nn.Conv2d(width, 1, kernel_size=1)
    nn.init.zeros_(out.weight)
    nn.init.zeros_(_bias(out))
    return nn.Sequential(*layers, out)


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    """``conv.bias``; every conv of the head is built with one."""
    if conv.bias is None:
        raise ValueError(f"{conv} has no bias")
    return conv.bias


def peak_region(
    logits: torch.Tensor,
    threshold: float = 0.0,
    seed_threshold: float | None = None,
    peak_margin: float | None = None,
    seed_margin: float | None = None,
) -> torch.Tensor:
    """``[B, g, g]`` logits -> ``[B, g, g]`` bool: the 8-connected region of cells with
    ``logit > threshold`` that contains the peak cell (just the peak if none pass).

    With ``seed_threshold``, every connected region above ``threshold`` that holds a cell
    above ``seed_threshold`` is kept as well (hysteresis, as in Canny's edge linking): a
    target in pieces (a lung cut by the heart at its base, several lesions) is found
    whole, while faint blobs elsewhere stay out.

    With ``peak_margin``, a map whose peak is weak is cut lower: each row's threshold is
    ``min(threshold, peak - peak_margin)``. On a lesion unlike the training patients' the
    map can rise over the whole lesion yet pass ``threshold`` in one cell or none, and
    the box of that one cell prompts the decoder to paint a fraction of the lesion.
    Maps with a peak above ``threshold + peak_margin`` are cut as before.

    With ``seed_margin`` (and ``seed_threshold``), a seed must also be within
    ``seed_margin`` of the row's peak: a second structure that the map lifts past
    ``seed_threshold`` but far below the target (the spinal canal beside the psoas asked
    for, peaks 6.8 against 13.2) stays out, while a target's own pieces, which the map
    lifts alike, still join.

    A flood fill by repeated 3x3 max-pooling, restricted to the cells above the threshold;
    it stops when the region no longer grows (at most g*g rounds, usually a few dozen).
    """
    flat = logits.flatten(1)
    if peak_margin is None:
        above = logits > threshold
    else:
        cut = torch.clamp(flat.amax(1) - peak_margin, max=threshold)  # [B]
        above = logits > cut[:, None, None]
    region = torch.zeros_like(above).flatten(1)
    region[torch.arange(flat.shape[0]), flat.argmax(1)] = True
    region = region.view_as(above)
    if seed_threshold is not None:
        seeds = logits > max(seed_threshold, threshold)
        if seed_margin is not None:
            seeds &= logits >= (flat.amax(1) - seed_margin)[:, None, None]
        region = region | seeds
    allowed = above | region
    for _ in range(logits.shape[-1] * logits.shape[-2]):
        grown = F.max_pool2d(region[:, None].float(), 3, stride=1, padding=1)[:, 0].bool()
        grown &= allowed
        if torch.equal(grown, region):
            break
        region = grown
    return region


def region_on_grid(
    region: torch.Tensor, size: tuple[int, int] | torch.Size, grow: int = 0
) -> torch.Tensor:
    """``[B, g, g]`` bool map region -> ``[B, *size]`` bool on a finer grid over the same
    frame (nearest upsampling), grown first by ``grow`` cells (8-connected)."""
    cells = region[:, None].float()
    if grow > 0:
        cells = F.max_pool2d(cells, 2 * grow + 1, stride=1, padding=grow)
    return F.interpolate(cells, size=size, mode="nearest")[:, 0] > 0


def region_box(region: torch.Tensor) -> torch.Tensor:
    """``[B, g, g]`` bool (non-empty rows) -> ``[B, 4]`` xyxy in grid-cell units, edges of
    the cells (a single cell ``(x, y)`` gives ``(x, y, x+1, y+1)``)."""
    rows = region.any(dim=2)  # [B, g] over y
    cols = region.any(dim=1)  # [B, g] over x
    index = torch.arange(region.shape[-1], device=region.device)
    big = region.shape[-1] + 1
    x0 = torch.where(cols, index, big).min(1).values
    x1 = torch.where(cols, index, -1).max(1).values + 1
    y0 = torch.where(rows, index, big).min(1).values
    y1 = torch.where(rows, index, -1).max(1).values + 1
    return torch.stack((x0, y0, x1, y1), dim=1).float()


def region_components(region: torch.Tensor) -> torch.Tensor:
    """``[B, g, g]`` bool -> ``[B, g, g]`` long: each 8-connected component of a row's
    region numbered 1, 2, ... by size (largest first; ties by first cell in raster
    order), 0 outside (the components of :func:`piece_labels`)."""
    labels = piece_labels(region)
    out = torch.zeros(region.shape, dtype=torch.long, device=region.device)
    for row in range(region.shape[0]):
        found, counts = torch.unique(labels[row][region[row]], return_counts=True)
        first = torch.stack([(labels[row] == value).flatten().nonzero()[0, 0] for value in found])
        order = sorted(range(len(found)), key=lambda i: (-int(counts[i]), int(first[i])))
        for rank, i in enumerate(order, start=1):
            out[row][labels[row] == found[i]] = rank
    return out


def drop_small_pieces(inside: torch.Tensor, share: float) -> torch.Tensor:
    """``[B, H, W]`` bool -> the same without the 8-connected pieces whose area is below
    ``share`` times the area of the row's largest piece (:func:`piece_labels`)."""
    labels = piece_labels(inside)
    kept = torch.zeros_like(inside)
    for row in range(inside.shape[0]):
        if not inside[row].any():
            continue
        found, counts = torch.unique(labels[row][inside[row]], return_counts=True)
        large = found[counts >= share * counts.max()]
        kept[row] = torch.isin(labels[row], large) & inside[row]
    return kept


def piece_labels(inside: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]`` bool -> ``[B, H, W]`` float: one label per 8-connected piece (the
    largest raster index in it, 1-based), 0 outside. Label propagation over each row's
    box around its pixels: every horizontal and vertical run of a piece takes its maximum
    in one step, then the diagonals spread it. A few rounds for the masks of this model,
    where spreading one pixel per round takes as many rounds as a piece is long."""
    _, height, width = inside.shape
    labels = torch.zeros(inside.shape, dtype=torch.float32, device=inside.device)
    for row in range(inside.shape[0]):
        rows = inside[row].any(1).nonzero().flatten()
        if rows.numel() == 0:
            continue
        cols = inside[row].any(0).nonzero().flatten()
        y0, y1 = int(rows[0]), int(rows[-1]) + 1
        x0, x1 = int(cols[0]), int(cols[-1]) + 1
        within = inside[row, y0:y1, x0:x1]
        ys = torch.arange(y0, y1, device=inside.device, dtype=torch.float32)
        xs = torch.arange(x0, x1, device=inside.device, dtype=torch.float32)
        index = ys[:, None] * width + xs[None, :] + 1
        labels[row, y0:y1, x0:x1] = _propagate(torch.where(within, index, 0.0), within)
    return labels


def _propagate(labels: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """``[h, w]`` labels >= 0 on ``inside`` -> each 8-connected piece at its maximum."""
    for _ in range(labels.numel()):
        spread = _run_maximum(labels, inside)
        spread = _run_maximum(spread.T.contiguous(), inside.T.contiguous()).T
        padded = F.pad(spread, (1, 1, 1, 1))
        diagonal = torch.maximum(
            torch.maximum(padded[:-2, :-2], padded[:-2, 2:]),
            torch.maximum(padded[2:, :-2], padded[2:, 2:]),
        )
        spread = torch.where(inside, torch.maximum(spread, diagonal), 0.0)
        if torch.equal(spread, labels):
            break
        labels = spread
    return labels


def _run_maximum(values: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """``[..., w]`` values >= 0: each run of ``inside`` along the last axis set to its
    maximum of ``values`` (0 outside the runs)."""
    starts = inside & ~F.pad(inside[..., :-1], (1, 0), value=False)
    # A new id at each start; a pixel outside a run keeps the id of the run before it,
    # and its value 0 cannot raise that run's maximum.
    run = torch.cumsum(starts.flatten(), 0)
    flat = torch.where(inside, values, 0.0).flatten()
    best = torch.zeros(int(run[-1]) + 1, dtype=values.dtype, device=values.device)
    best = best.scatter_reduce(0, run, flat, reduce="amax")
    return torch.where(inside, best[run].view(inside.shape), 0.0)
