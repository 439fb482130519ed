import pytest
import torch

from medisee.model.box_decoder import BoxDecoder
from medisee.model.config import BoxDecoderConfig, FusionConfig
from medisee.model.fusion import CandidateFusion


def _fusion(mode: str, batch: int, candidates: int, hidden: int, seed: int, **randn):
    """A seeded fusion (routers ``2 * hidden`` wide) and random states, batch x candidates x
    hidden (``randn``: more ``torch.randn`` arguments)."""
    torch.manual_seed(seed)
    config = FusionConfig(mode=mode, router_hidden=2 * hidden)
    fusion = CandidateFusion(hidden_size=hidden, num_candidates=candidates, config=config)
    return fusion, torch.randn(batch, candidates, hidden, **randn)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_fusion_shapes_and_weights(n, mode):
    fusion, states = _fusion(mode, 5, n, 8, seed=0, requires_grad=True)
    out = fusion(states)
    assert out.seg_state.shape == out.det_state.shape == (5, 8)
    torch.testing.assert_close(out.seg_weights.sum(-1), torch.ones(5))
    (out.seg_state.sum() + out.det_state.sum()).backward()
    assert fusion.seg_router.net[0].weight.grad.abs().sum() > 0 or n == 1
    assert states.grad is not None


def test_hard_fusion_picks_the_argmax_candidate():
    fusion, states = _fusion("hard", 4, 3, 6, seed=1)
    out = fusion(states)
    chosen = fusion.seg_router(states).argmax(-1)
    torch.testing.assert_close(out.seg_state, states[torch.arange(4), chosen])
    chosen_det = fusion.det_router(states).argmax(-1)
    torch.testing.assert_close(out.det_state, states[torch.arange(4), chosen_det])
    assert set(out.seg_weights.unique().tolist()) <= {0.0, 1.0}


def test_soft_fusion_is_the_weighted_sum():
    fusion, states = _fusion("soft", 3, 2, 4, seed=2)
    out = fusion(states)
    weights = fusion.seg_router(states).softmax(-1)
    torch.testing.assert_close(
        out.seg_state, weights[:, :1] * states[:, 0] + weights[:, 1:] * states[:, 1]
    )


def test_router_rejects_wrong_candidate_count():
    fusion = CandidateFusion(hidden_size=4, num_candidates=2, config=FusionConfig(router_hidden=8))
    with pytest.raises(ValueError, match="2 candidates got 3"):
        fusion(torch.randn(1, 3, 4))


def test_box_decoder_is_a_3_layer_mlp_in_unit_range():
    decoder = BoxDecoder(16, BoxDecoderConfig(hidden_size=512, num_layers=3))
    linears = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 512), (512, 512), (512, 4)]
    out = decoder(torch.randn(7, 16) * 10)
    assert out.shape == (7, 4) and bool(((out >= 0) & (out <= 1)).all())
