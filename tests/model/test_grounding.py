"""Grounding head: the peak region, its box, the frames of the answer box, the fallback."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from medisee.model.config import GroundingConfig
from medisee.model.grounding import (
    GroundingHead,
    drop_small_pieces,
    peak_region,
    piece_labels,
    region_box,
    region_components,
    region_on_grid,
)
from tests.conftest import make_batch


def _logits(size: int, cells: dict[tuple[int, int], float], background: float = -5.0):
    """``[1, size, size]`` logits; ``cells`` maps (x, y) to a value."""
    logits = torch.full((1, size, size), background)
    for (x, y), value in cells.items():
        logits[0, y, x] = value
    return logits


def _cells_of(region: torch.Tensor) -> set[tuple[int, int]]:
    """The (x, y) cells of a ``[1, g, g]`` region."""
    return {(int(x), int(y)) for y, x in torch.nonzero(region[0]).tolist()}


def test_peak_region_keeps_only_the_blob_holding_the_peak() -> None:
    # Blob A (x 1..2, y 1..2) holds the peak 9; blob B (x 5..6, y 5) is above 0 but apart.
    cells = {(1, 1): 1.0, (2, 1): 1.0, (1, 2): 9.0, (2, 2): 1.0, (5, 5): 3.0, (6, 5): 3.0}
    region = peak_region(_logits(8, cells))
    assert _cells_of(region) == {(1, 1), (2, 1), (1, 2), (2, 2)}
    assert region_box(region).tolist() == [[1.0, 1.0, 3.0, 3.0]]


def test_peak_region_is_8_connected_and_follows_a_long_thin_path() -> None:
    # A diagonal staircase from the peak at (0, 0) to (7, 7): one region, whole grid's box.
    cells = {(i, i): 1.0 for i in range(8)}
    cells[(0, 0)] = 5.0
    region = peak_region(_logits(8, cells))
    assert int(region.sum()) == 8
    assert region_box(region).tolist() == [[0.0, 0.0, 8.0, 8.0]]


def test_seed_threshold_keeps_every_blob_that_holds_a_strong_cell() -> None:
    # A holds the peak 9; B (x 5..6, y 5) holds a seed cell 3 > 2 and a weak cell 0.5;
    # C (x 1, y 6) is above the threshold 0 but never above the seed level.
    cells = {(1, 1): 9.0, (2, 1): 1.0, (5, 5): 3.0, (6, 5): 0.5, (1, 6): 1.5}
    region = peak_region(_logits(8, cells), threshold=0.0, seed_threshold=2.0)
    assert _cells_of(region) == {(1, 1), (2, 1), (5, 5), (6, 5)}
    assert region_box(region).tolist() == [[1.0, 1.0, 7.0, 6.0]]
    # No seed level: the peak's blob alone, as before.
    assert int(peak_region(_logits(8, cells), threshold=0.0).sum()) == 2


def test_seed_margin_keeps_only_the_seeds_near_the_peak() -> None:
    # A holds the peak 13; B (x 5..6, y 5) a seed 6.5, 6.5 below it; C (x 1, y 6) a seed
    # 10, 3 below it. All pass the seed level 4.
    cells = {(1, 1): 13.0, (2, 1): 1.0, (5, 5): 6.5, (6, 5): 0.5, (1, 6): 10.0}
    logits = _logits(8, cells)
    every = {(1, 1), (2, 1), (5, 5), (6, 5), (1, 6)}
    assert _cells_of(peak_region(logits, threshold=0.0, seed_threshold=4.0)) == every
    # Margin 4: C (3 below) joins, B (6.5 below) stays out, its weak cell with it.
    near = peak_region(logits, threshold=0.0, seed_threshold=4.0, seed_margin=4.0)
    assert _cells_of(near) == {(1, 1), (2, 1), (1, 6)}
    # Margin 6.5 reaches B's seed exactly (a cell at peak - margin is kept).
    wide = peak_region(logits, threshold=0.0, seed_threshold=4.0, seed_margin=6.5)
    assert _cells_of(wide) == every
    # The margin narrows the seeds only: a cell within it but under the seed level is no seed.
    low = peak_region(_logits(8, {(1, 1): 5.0, (5, 5): 3.0}), 0.0, 4.0, seed_margin=4.0)
    assert _cells_of(low) == {(1, 1)}


def test_a_seed_margin_of_zero_or_less_is_refused() -> None:
    with pytest.raises(ValueError, match="seed_margin"):
        GroundingConfig(seed_margin=0.0)
    assert GroundingConfig(seed_margin=4.0).seed_margin == 4.0


def test_seed_threshold_below_the_threshold_and_a_negative_gate_are_refused() -> None:
    with pytest.raises(ValueError, match="seed_threshold"):
        GroundingConfig(threshold=-1.0, seed_threshold=-2.0)
    with pytest.raises(ValueError, match="gate_dilation"):
        GroundingConfig(gate_dilation=-1)


def test_nothing_above_the_threshold_gives_the_peak_cell_alone() -> None:
    region = peak_region(_logits(6, {(4, 2): -1.0}))
    assert int(region.sum()) == 1 and bool(region[0, 2, 4])
    assert region_box(region).tolist() == [[4.0, 2.0, 5.0, 3.0]]


def test_peak_margin_cuts_a_weak_map_below_its_peak_and_leaves_a_strong_one() -> None:
    # Row 0, a weak map: peak 0.5 at (2, 2) (threshold 1 passes nothing), a plateau at
    # -1 around it, a -3 cell beyond and a -1 island apart. Margin 2 cuts at -1.5: the
    # plateau joins, the -3 cell and the island (not connected) stay out.
    weak = {(2, 2): 0.5, (1, 2): -1.0, (3, 2): -1.0, (2, 3): -1.0, (4, 2): -3.0, (6, 6): -1.0}
    # Row 1, a strong map: peak 9 with a 2 neighbour; margin 2 would cut at 7, but the cut
    # is never above the threshold 1, so the 2 cell stays and the -1 cell stays out.
    strong = {(2, 2): 9.0, (3, 2): 2.0, (1, 2): -1.0}
    logits = torch.cat([_logits(8, weak), _logits(8, strong)])
    region = peak_region(logits, threshold=1.0, peak_margin=2.0)
    assert _cells_of(region[:1]) == {(2, 2), (1, 2), (3, 2), (2, 3)}
    assert _cells_of(region[1:]) == {(2, 2), (3, 2)}
    assert region_box(region).tolist() == [[1.0, 2.0, 4.0, 4.0], [2.0, 2.0, 4.0, 3.0]]
    # Without a margin the weak map gives its peak cell alone.
    assert _cells_of(peak_region(logits, threshold=1.0)[:1]) == {(2, 2)}
    with pytest.raises(ValueError, match="peak_margin"):
        GroundingConfig(peak_margin=0.0)


def test_region_box_is_per_row_of_a_batch() -> None:
    region = torch.zeros(2, 4, 4, dtype=torch.bool)
    region[0, 0, 3] = True  # x 3, y 0
    region[1, 1:3, 0:2] = True  # x 0..1, y 1..2
    assert region_box(region).tolist() == [[3.0, 0.0, 4.0, 1.0], [0.0, 1.0, 2.0, 3.0]]


def test_grounding_head_scores_cells_by_position_too() -> None:
    """Keys add SAM's positional encoding, so a constant image still gives a varying map,
    and the gradient reaches the query MLP and the keys."""
    torch.manual_seed(0)
    head = GroundingHead(
        hidden_size=12, embedding_dim=8, config=GroundingConfig(dim=6, refine_layers=0)
    )
    state = torch.randn(2, 12)
    embeddings = torch.ones(2, 8, 5, 5)
    positional = torch.randn(1, 8, 5, 5)
    logits = head(state, embeddings, positional)
    assert logits.shape == (2, 5, 5)
    assert float(logits[0].detach().std()) > 0
    logits.sum().backward()
    assert head.query[0].weight.grad.abs().sum() > 0
    assert head.keys.weight.grad.abs().sum() > 0


def test_position_dropout_drops_the_position_of_whole_samples_in_training_only() -> None:
    torch.manual_seed(0)
    config = GroundingConfig(dim=6, refine_layers=1, refine_dim=4, position_dropout=0.5)
    head = GroundingHead(hidden_size=12, embedding_dim=8, config=config)
    state = torch.randn(64, 12)
    embeddings = torch.randn(64, 8, 5, 5)
    positional = torch.randn(1, 8, 5, 5)
    with_position = head.eval()(state, embeddings, positional)
    without = head(state, embeddings, torch.zeros_like(positional))
    trained = head.train()(state, embeddings, positional)
    # Each sample's map is either the one with its position or the one without.
    dropped = [bool(torch.allclose(t, w, atol=1e-5)) for t, w in zip(trained, without)]
    kept = [bool(torch.allclose(t, p, atol=1e-5)) for t, p in zip(trained, with_position)]
    assert all(d != k for d, k in zip(dropped, kept))
    assert 16 <= sum(dropped) <= 48  # about half of 64
    # In eval mode the position is always there.
    assert torch.allclose(head.eval()(state, embeddings, positional), with_position)
    with pytest.raises(ValueError, match="position_dropout"):
        GroundingConfig(position_dropout=1.0)


def test_refined_head_starts_as_the_linear_map_and_then_learns_from_neighbours() -> None:
    """The refiner's last conv is zero-initialised: a new refined head gives exactly the
    linear query-key map of the same weights; after one step its 3x3 convs have gradient."""
    torch.manual_seed(0)
    plain = GroundingHead(
        hidden_size=12, embedding_dim=8, config=GroundingConfig(dim=8, refine_layers=0)
    )
    refined = GroundingHead(
        hidden_size=12,
        embedding_dim=8,
        config=GroundingConfig(dim=8, refine_layers=2, refine_dim=4),
    )
    refined.load_state_dict(plain.state_dict(), strict=False)
    state, embeddings, positional = (
        torch.randn(2, 12),
        torch.randn(2, 8, 6, 6),
        torch.randn(1, 8, 6, 6),
    )
    linear = plain(state, embeddings, positional)
    torch.testing.assert_close(refined(state, embeddings, positional), linear)
    # The linear map is the per-channel product summed, as the docstring says.
    keys = plain.keys(embeddings + positional)
    expected = torch.einsum("bchw,bc->bhw", keys, plain.query(state)) / 8**0.5 + plain.bias
    torch.testing.assert_close(linear, expected)

    optimizer = torch.optim.SGD(refined.parameters(), lr=0.1)
    refined(state, embeddings, positional).square().sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    refined(state, embeddings, positional).square().sum().backward()
    convs = [
        m for m in refined.refine if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    assert len(convs) == 2 and all(c.weight.grad.abs().sum() > 0 for c in convs)
    assert not torch.allclose(refined(state, embeddings, positional), linear)


@pytest.mark.parametrize("refine_layers", [0, 2])
def test_folded_forward_is_the_reference_head_in_values_and_gradients(refine_layers) -> None:
    """``forward`` folds keys, query product and the refiner's first conv into one matrix;
    it must be the same function as ``reference_forward``, with the same gradients for
    every parameter and for the state (the refiner's last conv is perturbed off zero so
    its inputs matter)."""
    torch.manual_seed(0)
    config = GroundingConfig(dim=8, refine_layers=refine_layers, refine_dim=4)
    head = GroundingHead(hidden_size=12, embedding_dim=6, config=config).double()
    if head.refine is not None:
        torch.nn.init.normal_(head.refine[-1].weight)
    embeddings = torch.randn(3, 6, 5, 5, dtype=torch.float64)
    positional = torch.randn(1, 6, 5, 5, dtype=torch.float64)
    results = []
    for method in (head.forward, head.reference_forward):
        state = torch.randn(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        state.requires_grad_(True)
        head.zero_grad()
        logits = method(state, embeddings, positional)
        (logits * torch.linspace(-1, 1, logits.numel()).view_as(logits)).sum().backward()
        grads = {n: p.grad.clone() for n, p in head.named_parameters()}
        results.append((logits.detach(), state.grad.clone(), grads))
    (folded, folded_state, folded_grads), (reference, reference_state, reference_grads) = results
    torch.testing.assert_close(folded, reference)
    torch.testing.assert_close(folded_state, reference_state)
    assert folded_grads.keys() == reference_grads.keys()
    for name in folded_grads:
        torch.testing.assert_close(folded_grads[name], reference_grads[name], msg=name)
    assert float(folded.std()) > 0


def test_answer_box_from_the_map_in_the_original_frame(tiny_model) -> None:
    """Grid cells -> input pixels -> original pixels (longest side resized) -> normalised.

    tiny: image_size 64, grid 16 (4 px per cell). Cells x 2..5, y 4..7 -> grid box
    (2, 4, 6, 8) -> input (8, 16, 24, 32); a 128 x 96 (H x W) image is scaled by 0.5, so
    the original box is (16, 32, 48, 64): cxcywh (32/96, 48/128, 32/96, 32/128).
    """
    grid = tiny_model.config.mask.embedding_size
    assert grid == 16
    logits = torch.full((1, grid, grid), -3.0)
    logits[0, 4:8, 2:6] = 2.0
    fallback = torch.tensor([[0.9, 0.9, 0.1, 0.1]])
    box = tiny_model._grounded_boxes(logits, fallback, torch.tensor([[128, 96]]))
    expected = torch.tensor([[32 / 96, 48 / 128, 32 / 96, 32 / 128]])
    torch.testing.assert_close(box, expected)


def test_mask_answer_box_is_the_decoded_masks_box_in_the_original_frame(tiny_model) -> None:
    """tiny: low-res logits 64 x 64 = the input frame. Pixels x 10..19, y 20..29 -> input
    (10, 20, 20, 30); the 128 x 96 image is scaled by 0.5 -> original (20, 40, 40, 60).
    An empty mask keeps the fallback."""
    logits = torch.full((2, 64, 64), -4.0)
    logits[0, 20:30, 10:20] = 3.0
    fallback = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.6, 0.1, 0.4]])
    box = tiny_model._mask_boxes(logits, fallback, torch.tensor([[128, 96], [128, 96]]))
    torch.testing.assert_close(box[0], torch.tensor([30 / 96, 50 / 128, 20 / 96, 20 / 128]))
    torch.testing.assert_close(box[1], fallback[1])


def test_map_fallback_replaces_only_masks_that_miss_the_maps_region(
    tiny_model, monkeypatch
) -> None:
    """tiny: grid 16, low-res 64 (4 px per cell). Map region: cells x 2..3, y 2..3 ->
    pixels 8..15. Row 0's mask is those pixels plus 16 more (IoU 64/80 = 0.8): kept.
    Row 1's mask is pixels elsewhere (IoU 0): replaced by the region. Row 2's mask is
    empty (IoU 0): replaced. Off (0) changes nothing."""
    monkeypatch.setattr(tiny_model.config.grounding, "map_fallback_iou", 0.0)
    grid = tiny_model.config.mask.embedding_size
    map_logits = torch.full((3, grid, grid), -5.0)
    map_logits[:, 2:4, 2:4] = 4.0
    mask_logits = torch.full((3, 64, 64), -3.0)
    mask_logits[0, 8:16, 8:16] = 2.0
    mask_logits[0, 16:18, 8:16] = 2.0
    mask_logits[1, 40:50, 40:50] = 2.0
    assert torch.equal(tiny_model._map_fallback(mask_logits, map_logits), mask_logits)

    monkeypatch.setattr(tiny_model.config.grounding, "map_fallback_iou", 0.5)
    out = tiny_model._map_fallback(mask_logits, map_logits)
    torch.testing.assert_close(out[0], mask_logits[0])
    region = torch.zeros(64, 64, dtype=torch.bool)
    region[8:16, 8:16] = True
    for row in (1, 2):
        assert torch.equal(out[row] > 0, region)
    monkeypatch.setattr(tiny_model.config.grounding, "map_fallback_iou", 0.85)
    assert torch.equal(tiny_model._map_fallback(mask_logits, map_logits)[0] > 0, region)


def test_map_fallback_acts_in_eval_only(tiny_model, monkeypatch) -> None:
    """Training decodes the mask the loss needs; evaluation may replace it. With the
    threshold at 1 every eval mask that is not exactly the map's region is replaced."""
    monkeypatch.setattr(tiny_model.config.grounding, "map_fallback_iou", 1.0)
    batch = make_batch(tiny_model)
    args = (batch["input_ids"], batch["attention_mask"], batch["image_sizes"])
    with torch.no_grad():
        tiny_model.train()
        trained = tiny_model(*args, pixel_values=batch["pixel_values"])
        tiny_model.eval()
        evaluated = tiny_model(*args, pixel_values=batch["pixel_values"])
    expected = tiny_model._map_fallback(trained.mask_logits, evaluated.grounding_logits)
    assert not torch.equal(expected, trained.mask_logits)
    torch.testing.assert_close(evaluated.mask_logits, expected)


def test_grounding_config_rejects_a_fallback_iou_outside_0_1() -> None:
    with pytest.raises(ValueError, match="map_fallback_iou"):
        GroundingConfig(map_fallback_iou=1.5)


def test_answer_box_mask_mode_answers_with_the_box_of_the_mask_it_returns(
    tiny_model, monkeypatch
) -> None:
    batch = make_batch(tiny_model)
    kwargs = {"pixel_values": batch["pixel_values"]}
    args = (batch["input_ids"], batch["attention_mask"], batch["image_sizes"])
    with torch.no_grad():
        prompt_mode = tiny_model(*args, **kwargs)
        monkeypatch.setattr(tiny_model.config, "answer_box", "mask")
        mask_mode = tiny_model(*args, **kwargs)
    # Same prompt, same mask; only the answer box differs.
    torch.testing.assert_close(mask_mode.mask_logits, prompt_mode.mask_logits)
    expected = tiny_model._mask_boxes(
        mask_mode.mask_logits, prompt_mode.boxes, batch["image_sizes"]
    )
    torch.testing.assert_close(mask_mode.boxes, expected)
    assert not torch.allclose(mask_mode.boxes, prompt_mode.boxes)


def test_answer_box_falls_back_to_the_box_decoder_when_the_map_is_empty(tiny_model) -> None:
    grid = tiny_model.config.mask.embedding_size
    logits = torch.full((2, grid, grid), -3.0)
    logits[1, 0, 0] = 1.0
    fallback = torch.tensor([[0.4, 0.5, 0.2, 0.3], [0.4, 0.5, 0.2, 0.3]])
    box = tiny_model._grounded_boxes(logits, fallback, torch.tensor([[64, 64], [64, 64]]))
    torch.testing.assert_close(box[0], fallback[0])
    torch.testing.assert_close(box[1], torch.tensor([0.5 / 16, 0.5 / 16, 1 / 16, 1 / 16]))


def test_forward_answers_with_the_grounded_box_and_trains_the_decoder_box(tiny_model) -> None:
    batch = make_batch(tiny_model)
    out = tiny_model(
        batch["input_ids"],
        batch["attention_mask"],
        batch["image_sizes"],
        pixel_values=batch["pixel_values"],
    )
    grid = tiny_model.config.mask.embedding_size
    assert out.grounding_logits.shape == (2, grid, grid)
    expected = tiny_model._grounded_boxes(
        out.grounding_logits, out.decoder_boxes, batch["image_sizes"]
    )
    torch.testing.assert_close(out.boxes, expected)
    assert out.decoder_boxes.requires_grad  # L_bbox trains the box decoder


def test_the_grounding_loss_reaches_the_routers_and_the_language_model(tiny_model) -> None:
    """The map's gradient trains the head, and also reaches the routers (and through them
    the LM): ``h_det`` is shaped by L_ground as well as by L_txt and L_bbox."""
    batch = make_batch(tiny_model)
    tiny_model.zero_grad()
    out = tiny_model(
        batch["input_ids"],
        batch["attention_mask"],
        batch["image_sizes"],
        pixel_values=batch["pixel_values"],
        decode_masks=False,
    )
    out.grounding_logits.square().mean().backward()
    head = [p.grad for p in tiny_model.grounding.parameters()]
    assert all(g is not None for g in head) and any(g.abs().sum() > 0 for g in head)
    routers = [p.grad for p in tiny_model.fusion.parameters()]
    reached = any(g is not None and g.abs().sum() > 0 for g in routers)
    assert reached


def test_grounding_head_must_match_the_config(tiny_model) -> None:
    from medisee.model.medisee import MediSee

    config = dataclasses.replace(tiny_model.config, grounding=GroundingConfig(enabled=False))
    with pytest.raises(ValueError, match="grounding head"):
        MediSee(
            config,
            tiny_model.language,
            tiny_model.tokenizer,
            tiny_model.fusion,
            tiny_model.box_decoder,
            tiny_model.seg_projection,
            tiny_model.segmenter,
            grounding=tiny_model.grounding,
        )


def test_grounding_config_rejects_a_non_positive_width() -> None:
    with pytest.raises(ValueError, match="GroundingConfig.dim"):
        GroundingConfig(dim=0)
    with pytest.raises(ValueError, match="GroundingConfig.refine_layers"):
        GroundingConfig(refine_layers=-1)
    with pytest.raises(ValueError, match="GroundingConfig.refine_dim"):
        GroundingConfig(refine_layers=1, refine_dim=0)


def test_model_config_rejects_an_unknown_answer_box(tiny_model) -> None:
    with pytest.raises(ValueError, match="answer_box"):
        dataclasses.replace(tiny_model.config, answer_box="decoder")


def test_map_gate_cuts_the_mask_outside_the_grown_region(tiny_model, monkeypatch) -> None:
    """tiny: grid 16, low-res 64 (4 px per cell). Region: cells x 2..3, y 2..3. Grown by
    one cell it is cells 1..4 -> pixels 4..19; the mask's pixels 0..29 keep 4..19 only.
    Dilation 0 keeps the region's own pixels 8..15; None changes nothing."""
    region = torch.zeros(1, 16, 16, dtype=torch.bool)
    region[0, 2:4, 2:4] = True
    mask_logits = torch.full((1, 64, 64), -3.0)
    mask_logits[0, 0:30, 0:30] = 2.0

    monkeypatch.setattr(tiny_model.config.grounding, "gate_dilation", None)
    assert torch.equal(tiny_model._map_gate(mask_logits, region), mask_logits)

    def kept(dilation: int) -> torch.Tensor:
        monkeypatch.setattr(tiny_model.config.grounding, "gate_dilation", dilation)
        return tiny_model._map_gate(mask_logits, region)[0] > 0

    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[4:20, 4:20] = True
    assert torch.equal(kept(1), expected)
    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[8:16, 8:16] = True
    assert torch.equal(kept(0), expected)
    # Inside the grown region the logits are the decoder's own.
    out = tiny_model._map_gate(mask_logits, region)
    assert torch.equal(out[0, 8:16, 8:16], mask_logits[0, 8:16, 8:16])


def test_decoded_masks_stay_inside_the_seeded_region_at_inference(tiny_model, monkeypatch) -> None:
    """The wiring in ``decode_targets``: with both rules on, every decoded mask pixel lies
    in the map's seeded region (dilation 0), the region computed from the same map."""
    monkeypatch.setattr(tiny_model.config.grounding, "seed_threshold", 0.0)
    monkeypatch.setattr(tiny_model.config.grounding, "gate_dilation", 0)
    monkeypatch.setattr(tiny_model.config.grounding, "map_fallback_iou", 0.0)
    tiny_model.eval()
    torch.manual_seed(1)
    hidden = tiny_model.config.language.hidden_size
    states = torch.randn(3, hidden), torch.randn(3, hidden)
    embeddings = torch.randn(3, tiny_model.config.mask.prompt_dim, 16, 16)
    with torch.no_grad():
        out = tiny_model.decode_targets(*states, embeddings, torch.tensor([[64, 64]] * 3))
    region = peak_region(out.grounding_logits, threshold=-1.0, seed_threshold=0.0)
    inside = region_on_grid(region, out.mask_logits.shape[-2:])
    decoded = out.mask_logits > 0
    assert bool((decoded & ~inside).sum() == 0)
    # The gate did cut something: without it the same decoder paints outside.
    monkeypatch.setattr(tiny_model.config.grounding, "gate_dilation", None)
    with torch.no_grad():
        free = tiny_model.decode_targets(*states, embeddings, torch.tensor([[64, 64]] * 3))
    assert bool(((free.mask_logits > 0) & ~inside).any())


def test_the_models_peak_region_reads_the_peak_margin(tiny_model, monkeypatch) -> None:
    # A weak map (peak 0.5 < threshold -1 + margin 3) whose plateau at -2 joins with the
    # margin and stays out without it.
    logits = _logits(16, {(5, 5): 0.5, (6, 5): -2.0, (7, 5): -2.0}, background=-9.0)
    assert _cells_of(tiny_model._peak_region(logits)) == {(5, 5)}
    monkeypatch.setattr(tiny_model.config.grounding, "peak_margin", 3.0)
    assert _cells_of(tiny_model._peak_region(logits)) == {(5, 5), (6, 5), (7, 5)}
    box = tiny_model._grounded_boxes(logits, torch.zeros(1, 4), torch.tensor([[64.0, 64.0]]))
    # Cells 5..8 of 16 over a 64-pixel image: x 20..32, y 20..24 -> normalised cxcywh.
    assert torch.allclose(box, torch.tensor([[26 / 64, 22 / 64, 12 / 64, 4 / 64]]))


def test_with_a_peak_margin_the_map_boxes_down_to_threshold_minus_margin(tiny_model, monkeypatch):
    # Peaks -2 (below the threshold -1, within the margin 3) and -5 (below -1 - 3).
    logits = torch.cat(
        [_logits(16, {(5, 5): -2.0}, background=-9.0), _logits(16, {(5, 5): -5.0}, -9.0)]
    )
    fallback = torch.full((2, 4), 0.5)
    sizes = torch.tensor([[64.0, 64.0], [64.0, 64.0]])
    cell = torch.tensor([22 / 64, 22 / 64, 4 / 64, 4 / 64])  # the peak cell (5, 5)
    assert torch.equal(tiny_model._grounded_boxes(logits, fallback, sizes), fallback)
    monkeypatch.setattr(tiny_model.config.grounding, "peak_margin", 3.0)
    box = tiny_model._grounded_boxes(logits, fallback, sizes)
    assert torch.allclose(box[0], cell) and torch.equal(box[1], fallback[1])


def test_region_components_number_the_pieces_by_size() -> None:
    region = torch.zeros(2, 8, 8, dtype=torch.bool)
    region[0, 0, 0] = region[0, 1, 1] = True  # diagonal: one 8-connected piece of 2
    region[0, 5:7, 4:7] = True  # 6 cells: the largest
    region[0, 0, 7] = True  # 1 cell
    region[1, 3, 3] = True  # the second row: one piece
    pieces = region_components(region)
    assert pieces[0, 5:7, 4:7].eq(1).all() and pieces[0, 0, 0] == pieces[0, 1, 1] == 2
    assert pieces[0, 0, 7] == 3 and int(pieces[0].max()) == 3
    assert torch.equal(pieces[0] > 0, region[0])
    assert int(pieces[1, 3, 3]) == 1 and int(pieces[1].sum()) == 1


def test_decode_regions_decodes_each_piece_with_its_own_box(tiny_model, monkeypatch) -> None:
    """A region in two pieces: the mask is the pixelwise max of the masks decoded from
    each piece's box; a region in one piece keeps the mask it had."""
    tiny_model.eval()
    torch.manual_seed(2)
    hidden = tiny_model.config.language.hidden_size
    seg = torch.randn(2, hidden)
    embeddings = torch.randn(2, tiny_model.config.mask.prompt_dim, 16, 16)
    sizes = torch.tensor([[64, 64], [64, 64]])
    region = torch.zeros(2, 16, 16, dtype=torch.bool)
    region[0, 1:3, 1:4] = True  # two pieces in row 0
    region[0, 10:14, 9:15] = True
    region[1, 5:8, 5:8] = True  # one piece in row 1
    whole = torch.randn(2, 64, 64)
    monkeypatch.setattr(tiny_model.config.grounding, "decode_regions", 2)
    with torch.no_grad():
        out = tiny_model._decode_pieces(whole, seg, embeddings, sizes, region)
        boxes = tiny_model._grid_boxes(
            torch.tensor([[9.0, 10.0, 15.0, 14.0], [1.0, 1.0, 4.0, 3.0]]), 16, sizes
        )
        by_hand, _ = tiny_model._decode_masks(seg[[0, 0]], embeddings[[0, 0]], sizes, boxes)
    assert torch.allclose(out[0], by_hand.amax(0), atol=1e-5)
    assert torch.equal(out[1], whole[1])
    with pytest.raises(ValueError, match="decode_regions"):
        GroundingConfig(decode_regions=1)


def test_drop_small_pieces_keeps_the_pieces_of_at_least_a_share_of_the_largest() -> None:
    inside = torch.zeros(3, 10, 10, dtype=torch.bool)
    inside[0, 0:4, 0:5] = True  # 20 pixels: the largest
    inside[0, 8:10, 8:10] = True  # 4 pixels: 0.2 of the largest
    inside[0, 6, 0] = True  # 1 pixel: 0.05 of the largest
    inside[0, 5, 5] = True  # 1 pixel, apart from the others
    inside[1, 2, 2] = True  # the second row: one piece of 1 pixel
    # row 2 is empty
    assert torch.equal(drop_small_pieces(inside, 1.0)[0], _block(10, (0, 4), (0, 5)))
    kept = drop_small_pieces(inside, 0.2)[0]
    assert torch.equal(kept, _block(10, (0, 4), (0, 5)) | _block(10, (8, 10), (8, 10)))
    assert torch.equal(drop_small_pieces(inside, 0.01), inside)  # every piece passes
    assert torch.equal(drop_small_pieces(inside, 0.5)[1], inside[1])  # a lone piece stays
    assert not drop_small_pieces(inside, 0.5)[2].any()


def _block(size: int, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    block = torch.zeros(size, size, dtype=torch.bool)
    block[rows[0] : rows[1], cols[0] : cols[1]] = True
    return block


def test_piece_labels_give_the_8_connected_pieces_of_a_flood_fill() -> None:
    """A spiral (one piece that turns at every side) and random masks: the same
    8-connected partition as a flood fill, each piece labelled with its
    largest raster index (1-based)."""
    spiral = torch.zeros(1, 12, 12, dtype=torch.bool)
    spiral[0, 0, :] = spiral[0, :, 11] = spiral[0, 11, 1:] = spiral[0, 2:, 1] = True
    spiral[0, 2, 1:10] = spiral[0, 2:10, 9] = spiral[0, 9, 3:10] = spiral[0, 4:10, 3] = True
    generator = torch.Generator().manual_seed(0)
    for mask in [spiral, torch.rand(6, 20, 20, generator=generator) > 0.55]:
        labels = piece_labels(mask)
        for row in range(mask.shape[0]):
            assert torch.equal(labels[row], _flood_fill_labels(mask[row]))
    assert int(piece_labels(spiral).unique().numel()) == 2  # the spiral and the outside


def _flood_fill_labels(mask: torch.Tensor) -> torch.Tensor:
    """``[H, W]`` bool -> each 8-connected piece at its largest raster index + 1, 0
    outside: a flood fill, one pixel at a time."""
    height, width = mask.shape
    out = torch.zeros(height, width)
    seen: set[tuple[int, int]] = set()
    for start in zip(*torch.nonzero(mask, as_tuple=True)):
        start = (int(start[0]), int(start[1]))
        if start in seen:
            continue
        piece, frontier = [start], [start]
        seen.add(start)
        while frontier:
            y, x = frontier.pop()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    near = (y + dy, x + dx)
                    if (
                        0 <= near[0] < height
                        and 0 <= near[1] < width
                        and near not in seen
                        and bool(mask[near])
                    ):
                        seen.add(near)
                        piece.append(near)
                        frontier.append(near)
        label = max(y * width + x for y, x in piece) + 1
        for y, x in piece:
            out[y, x] = label
    return out


def test_min_piece_share_drops_specks_before_the_answer_box(tiny_model, monkeypatch) -> None:
    """A mask with a far speck: off, the box holds the speck; at 0.5 the speck is set to
    -10 and the box is the piece's own; the piece's logits are the decoder's."""
    logits = torch.full((1, 64, 64), -3.0)
    logits[0, 10:30, 20:40] = 2.0
    logits[0, 60, 2] = 5.0
    monkeypatch.setattr(tiny_model.config.grounding, "min_piece_share", None)
    assert torch.equal(tiny_model._drop_small_pieces(logits), logits)
    monkeypatch.setattr(tiny_model.config.grounding, "min_piece_share", 0.5)
    out = tiny_model._drop_small_pieces(logits)
    assert float(out[0, 60, 2]) == -10.0
    assert torch.equal(out[0, 10:30, 20:40], logits[0, 10:30, 20:40])
    sizes = torch.tensor([[64, 64]])
    fallback = torch.zeros(1, 4)
    piece = tiny_model._mask_boxes(out, fallback, sizes)
    by_hand = tiny_model._grid_boxes(torch.tensor([[20.0, 10.0, 40.0, 30.0]]), 64, sizes)
    torch.testing.assert_close(piece, by_hand)
    with pytest.raises(ValueError, match="min_piece_share"):
        GroundingConfig(min_piece_share=0.0)
