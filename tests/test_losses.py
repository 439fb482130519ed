"""Hand-computed cases for every loss term, and their edge cases."""

import math

import pytest
import torch

from medisee import losses
from medisee.losses import LossWeights
from medisee.model.medisee import similarity_logits


def test_bce_hand_computed_2x2():
    logits = torch.tensor([[[2.0, -2.0], [0.0, 0.0]]])
    targets = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    # softplus(-2) for the two confident right pixels, ln 2 for the two undecided ones
    expected = (2 * math.log1p(math.exp(-2.0)) + 2 * math.log(2.0)) / 4
    assert losses.sigmoid_bce(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_dice_hand_computed_and_both_empty():
    big = 30.0
    logits = torch.tensor([[[big, big], [-big, -big]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # intersection 1, |P| 2, |G| 1, smooth 1: 1 - 3/4
    assert losses.dice_loss(logits, target).item() == pytest.approx(0.25, abs=1e-6)
    # p = 0.5 everywhere: intersection 0.5, |P| 2, |G| 1: 1 - 2/4
    assert losses.dice_loss(torch.zeros(1, 2, 2), target).item() == pytest.approx(0.5, abs=1e-6)
    both_empty = losses.dice_loss(torch.full((1, 2, 2), -big), torch.zeros(1, 2, 2))
    assert both_empty.item() == pytest.approx(0.0, abs=1e-6)


def test_mask_losses_on_empty_target_are_finite_with_gradient():
    logits = torch.zeros(2, 4, 4, requires_grad=True)
    empty = torch.zeros(2, 4, 4)
    total = (losses.sigmoid_bce(logits, empty) + losses.dice_loss(logits, empty)).sum()
    total.backward()
    assert torch.isfinite(total)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_l1_hand_computed():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    target = torch.tensor([[0.4, 0.5, 0.2, 0.4]])
    assert losses.box_l1(pred, target).item() == pytest.approx(0.075, abs=1e-7)


@pytest.mark.parametrize(
    ("a", "b", "expected_giou"),
    [
        ((0, 0, 2, 2), (1, 1, 3, 3), 1 / 7 - 2 / 9),  # overlap 1, union 7, hull 9
        ((0, 0, 1, 1), (2, 0, 3, 1), -1 / 3),  # disjoint: iou 0, union 2, hull 3
        ((0, 0, 2, 2), (0, 0, 2, 2), 1.0),
        ((0, 0, 4, 4), (1, 1, 2, 2), 1 / 16),  # nested: hull = union
    ],
)
def test_giou_hand_computed(a, b, expected_giou):
    a_t = torch.tensor([a], dtype=torch.float64)
    b_t = torch.tensor([b], dtype=torch.float64)
    assert losses.generalized_box_iou(a_t, b_t).item() == pytest.approx(expected_giou, abs=1e-6)


def test_giou_loss_uses_cxcywh():
    a = torch.tensor([[1.0, 1.0, 2.0, 2.0]])  # xyxy (0,0,2,2)
    b = torch.tensor([[2.0, 2.0, 2.0, 2.0]])  # xyxy (1,1,3,3)
    assert losses.giou_loss(a, b).item() == pytest.approx(1 - (1 / 7 - 2 / 9), abs=1e-6)


def test_degenerate_boxes_give_finite_loss_with_gradient():
    pred = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.2, 0.2, 0.0, 0.3]], requires_grad=True)
    target = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.7, 0.7, 0.1, 0.1]])
    loss = (losses.giou_loss(pred, target) + losses.box_l1(pred, target)).sum()
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_js_divergence_hand_computed():
    half = torch.log(torch.tensor([[0.5, 0.5]]))
    one_hot = torch.tensor([[50.0, -50.0]])
    # m = (0.75, 0.25): KL(p||m) = 0.5 ln(2/3) + 0.5 ln 2, KL(q||m) = ln(4/3)
    expected = 0.5 * ((0.5 * math.log(2 / 3) + 0.5 * math.log(2)) + math.log(4 / 3))
    assert losses.js_divergence(half, one_hot).item() == pytest.approx(expected, abs=1e-6)
    assert losses.js_divergence(half, half).item() == pytest.approx(0.0, abs=1e-7)
    disjoint = losses.js_divergence(torch.tensor([[50.0, -50.0]]), torch.tensor([[-50.0, 50.0]]))
    assert disjoint.item() == pytest.approx(math.log(2), abs=1e-6)


def test_similarity_logits_hand_computed():
    image_states = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    query = torch.tensor([[2.0, 0.0]])
    expected = torch.tensor([[2.0, 0.0, 2.0]]) / math.sqrt(2)
    torch.testing.assert_close(similarity_logits(image_states, query), expected)


def test_similarity_loss_weights_and_target_has_no_gradient():
    reasoning = torch.tensor([[1.0, 0.0]], requires_grad=True)
    label = torch.tensor([[0.0, 1.0]], requires_grad=True)
    weights = LossWeights(js=2.0, mse=1.0)
    loss = losses.similarity_loss(reasoning, label, weights)
    expected = 2.0 * losses.js_divergence(reasoning, label) + 1.0  # MSE: (1 + 1) / 2
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    loss.sum().backward()
    assert reasoning.grad.abs().sum() > 0
    assert label.grad is None


def test_text_loss_only_on_answer_tokens():
    vocab = 4
    logits = torch.zeros(1, 5, vocab, requires_grad=True)
    labels = torch.tensor([[-100, -100, 2, 3, 1]])
    # uniform over 4 tokens: ln 4 on each supervised position
    assert losses.text_loss(logits, labels).item() == pytest.approx(math.log(vocab), abs=1e-6)
    none = losses.text_loss(logits, torch.full((1, 5), -100))
    none.backward()
    assert none.item() == 0.0 and logits.grad is not None


def test_text_loss_weights_the_answer_sentence():
    # Position t predicts labels[t+1]. Sequence: prompt, prompt, answer, cand, expl, expl.
    labels = torch.tensor([[-100, -100, 1, 2, 0, 0]])
    logits = torch.zeros(1, 6, 3)
    logits[0, 1, 1] = 5.0  # predicts label[2] = 1 well
    logits[0, 2, 2] = 5.0  # predicts label[3] = 2 (the candidate token) well
    # positions 3 and 4 (explanation) stay uniform: CE ln 3 each
    good = -torch.log_softmax(torch.tensor([0.0, 5.0, 0.0]), 0)[1].item()
    answer_end = torch.tensor([3])  # the candidate token sits at position 3
    plain = (2 * good + 2 * math.log(3)) / 4
    weighted = (4 * 2 * good + 2 * math.log(3)) / (4 * 2 + 2)
    assert losses.text_loss(logits, labels).item() == pytest.approx(plain, rel=1e-6)
    got = losses.text_loss(logits, labels, answer_end=answer_end, answer_weight=4.0)
    assert got.item() == pytest.approx(weighted, rel=1e-6)
    same = losses.text_loss(logits, labels, answer_end=answer_end, answer_weight=1.0)
    assert same.item() == pytest.approx(plain, rel=1e-6)
    with pytest.raises(ValueError, match="answer_tokens"):
        LossWeights(answer_tokens=-1.0)


def test_text_loss_on_packed_logits_matches_the_full_sequence():
    # Two rows of different prompt lengths; the packed form holds only the logit rows at
    # next_token_supervised(labels), which are the ones the full form reads.
    labels = torch.tensor([[-100, -100, 1, 2, 0, -100], [-100, 3, 2, 1, 1, 0]])
    assert losses.next_token_supervised(labels).tolist() == [
        [False, True, True, True, False, False],
        [True, True, True, True, True, False],
    ]
    logits = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(0))
    answer_end = torch.tensor([3, 2])
    packed = logits[losses.next_token_supervised(labels)].clone().requires_grad_(True)
    full = logits.clone().requires_grad_(True)
    for kwargs in ({}, {"answer_end": answer_end, "answer_weight": 3.0}):
        expected = losses.text_loss(full, labels, **kwargs)
        got = losses.text_loss(packed, labels, **kwargs)
        assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # Hand check of the weighted form: weights are 3 for label indices <= answer_end.
    per = -torch.log_softmax(logits, -1)
    terms = [
        (0, 1, 1, 3.0),
        (0, 2, 2, 3.0),
        (0, 3, 0, 1.0),
        (1, 0, 3, 3.0),
        (1, 1, 2, 3.0),
        (1, 2, 1, 1.0),
        (1, 3, 1, 1.0),
        (1, 4, 0, 1.0),
    ]  # (row, t, label[t+1], weight)
    hand = sum(w * per[r, t, y] for r, t, y, w in terms) / sum(w for *_, w in terms)
    assert got.item() == pytest.approx(hand.item(), rel=1e-5)
    with pytest.raises(ValueError, match="packed logits have 3 rows"):
        losses.text_loss(packed[:3], labels)


def test_end_to_end_loss_is_the_weighted_sum():
    torch.manual_seed(0)
    kwargs = dict(
        text_logits=torch.randn(2, 6, 5),
        labels=torch.tensor([[-100, -100, 1, 2, 3, 4], [-100, 0, 1, -100, 2, 2]]),
        mask_logits=torch.randn(2, 4, 4),
        target_masks=(torch.rand(2, 4, 4) > 0.5).float(),
        pred_boxes=torch.rand(2, 4) * 0.5 + 0.25,
        target_boxes=torch.rand(2, 4) * 0.5 + 0.25,
    )
    weights = LossWeights(text=1.0, bce=2.0, dice=0.5, l1=1.0, giou=1.0)
    out = losses.end_to_end_loss(weights=weights, **kwargs)
    manual = out.text + 2.0 * out.bce + 0.5 * out.dice + out.l1 + out.giou
    assert out.total.item() == pytest.approx(manual.item(), rel=1e-6)
    assert out.sim is None
    maps = torch.randn(2, 9), torch.randn(2, 9)
    ft = losses.end_to_end_loss(weights=weights, reasoning_map=maps[0], label_map=maps[1], **kwargs)
    assert ft.total.item() == pytest.approx(out.total.item() + ft.sim.item(), rel=1e-6)


def test_end_to_end_loss_rejects_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        losses.end_to_end_loss(
            text_logits=torch.zeros(1, 2, 3),
            labels=torch.zeros(1, 2, dtype=torch.long),
            mask_logits=torch.zeros(1, 4, 4),
            target_masks=torch.zeros(1, 8, 8),
            pred_boxes=torch.zeros(1, 4),
            target_boxes=torch.zeros(1, 4),
            weights=LossWeights(),
        )
    with pytest.raises(ValueError, match="LossWeights.dice"):
        LossWeights(dice=-1.0)


def test_grid_targets_are_cell_fractions() -> None:
    from medisee.losses import grid_targets

    mask = torch.zeros(1, 4, 4)
    mask[0, 0, 0:2] = 1  # top-left cell: 2 of 4 pixels
    mask[0, 2:4, 2:4] = 1  # bottom-right cell: all 4
    torch.testing.assert_close(grid_targets(mask, 2), torch.tensor([[[0.5, 0.0], [0.0, 1.0]]]))
    with pytest.raises(ValueError, match="multiple of the grid"):
        grid_targets(torch.zeros(1, 5, 5), 2)


def test_grid_targets_with_a_cover_lift_the_cells_covered_enough_to_one() -> None:
    """Cells 1/4, 2/4, 3/4 and 0/4 inside: with cover 0.5 the second and third become 1,
    the first keeps its share."""
    from medisee.losses import grid_targets

    mask = torch.zeros(1, 4, 4)
    mask[0, 0, 0] = 1
    mask[0, 0, 2:4] = 1
    mask[0, 2, 0:2] = 1
    mask[0, 3, 0] = 1
    shares = torch.tensor([[[0.25, 0.5], [0.75, 0.0]]])
    torch.testing.assert_close(grid_targets(mask, 2), shares)
    torch.testing.assert_close(
        grid_targets(mask, 2, cover=0.5), torch.tensor([[[0.25, 1.0], [1.0, 0.0]]])
    )
    with pytest.raises(ValueError, match="ground_cover"):
        LossWeights(ground_cover=1.5)


def test_grounding_loss_hand_computed() -> None:
    """Logits 0 everywhere: p = 0.5, BCE = ln 2 per cell whatever the soft target; cell
    targets (1, 0.5, 0, 0) give Dice = 1 - (2*0.75 + 1)/(2 + 1.5 + 1) = 1 - 2.5/4.5."""
    from medisee.losses import LossWeights, grounding_loss

    mask = torch.zeros(1, 4, 4)
    mask[0, 0:2, 0:2] = 1
    mask[0, 0:2, 2] = 1  # top-right cell half full
    loss = grounding_loss(torch.zeros(1, 2, 2), mask, LossWeights(ground_bce=1.0, ground_dice=2.0))
    torch.testing.assert_close(loss, torch.tensor([math.log(2) + 2 * (1 - 2.5 / 4.5)]))
    # With cover 0.5 the half-full cell is a target of 1: Dice = 1 - (2*1 + 1)/(2 + 2 + 1).
    covered = grounding_loss(
        torch.zeros(1, 2, 2), mask, LossWeights(ground_bce=1.0, ground_dice=2.0, ground_cover=0.5)
    )
    torch.testing.assert_close(covered, torch.tensor([math.log(2) + 2 * (1 - 3 / 5)]))


def test_end_to_end_loss_without_masks_leaves_the_mask_terms_out() -> None:
    from medisee.losses import LossWeights, end_to_end_loss

    logits = torch.zeros(1, 3, 5, requires_grad=True)
    labels = torch.tensor([[-100, 1, 2]])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    common = dict(
        text_logits=logits,
        labels=labels,
        target_masks=torch.ones(1, 4, 4),
        pred_boxes=boxes,
        target_boxes=boxes,
        weights=LossWeights(),
    )
    without = end_to_end_loss(mask_logits=None, **common)
    with_masks = end_to_end_loss(mask_logits=torch.zeros(1, 4, 4), **common)
    assert without.bce is None and without.dice is None
    assert "bce" not in without.as_floats()
    torch.testing.assert_close(without.total, without.text)  # boxes equal: L_bbox = 0
    expected = without.total + 2.0 * with_masks.bce + 0.5 * with_masks.dice
    torch.testing.assert_close(with_masks.total, expected)
