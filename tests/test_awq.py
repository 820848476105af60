import copy

import pytest
import torch

from lessons_lib import awq, gptq
from test_gptq import tiny_llama


@pytest.fixture(scope="module")
def outlier_layer():
    """A linear layer whose inputs have a few channels 30x larger than the rest, as in real LLM activations."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1024, 64, generator=g)
    x[:, :3] *= 30
    prev = torch.nn.Linear(32, 64, bias=True)
    lin = torch.nn.Linear(64, 48, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(48, 64, generator=g))
    return x, prev, lin


def test_grid_starts_with_identity_and_spans_alpha():
    pts = awq.grid_points(20)
    assert pts[0] == (0.0, False) and pts[1] == (0.0, True) and pts[-1] == (1.0, True) and len(pts) == 20
    with pytest.raises(ValueError, match="at least 3"):
        awq.grid_points(2)


def test_scales_are_normalized():
    s = awq.candidate_scales(torch.rand(64) + 0.1, torch.rand(64) + 0.1, 0.5, True)
    assert torch.isclose(s.max() * s.min(), torch.tensor(1.0)) and (s > 0).all()


def test_search_beats_rounding_on_outlier_channels(outlier_layer):
    x, prev, lin = outlier_layer
    m = awq.Mapping("test", prev, [lin], lin)
    w = lin.weight.detach().clone()
    s, history = awq.search_scales(m, [((x,), {})], bits=3, group_size=16, n_grid=20)
    assert torch.equal(lin.weight, w)  # the search leaves the layer as it found it
    identity_err, best_err = history[0][2], min(e for *_, e in history)
    assert best_err < 0.8 * identity_err
    scaled = gptq.rtn(w * s, 3, 16) / s
    assert gptq.output_error(w, scaled, x) < 0.8 * gptq.output_error(w, gptq.rtn(w, 3, 16), x)


def test_fold_keeps_the_function_of_linear_and_norm_pairs(outlier_layer):
    x, prev, lin = outlier_layer
    p2, l2 = copy.deepcopy(prev), copy.deepcopy(lin)
    s = torch.rand(64) + 0.5
    awq.fold_scales(awq.Mapping("test", p2, [l2], l2), s)
    z = torch.randn(16, 32)
    assert torch.allclose(l2(p2(z)), lin(prev(z)), rtol=1e-5, atol=1e-5)
    model = tiny_llama()
    folded = copy.deepcopy(model)
    for layer in folded.model.layers:
        for m in awq.layer_mappings(layer):
            awq.fold_scales(m, torch.rand(m.balance[0].in_features) + 0.5)
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        assert torch.allclose(folded(ids).logits, model(ids).logits, atol=1e-4)


def test_clipping_never_increases_the_group_error(outlier_layer):
    x, _, lin = outlier_layer
    w = lin.weight.detach()
    ratios = awq.clip_ratios(w, x, 3, 16)
    assert ratios.shape == (48, 4, 1) and (ratios <= 1).all() and (ratios >= 0.5).all()
    clipped = gptq.rtn(awq.clip(w, ratios, 16), 3, 16)
    assert gptq.output_error(w, clipped, x) <= gptq.output_error(w, gptq.rtn(w, 3, 16), x) * 1.001


def test_whole_model_runs_and_refuses_bad_input():
    model = tiny_llama()
    calib = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    histories = awq.quantize_model(model, calib, 4, 16, n_grid=5, apply_clip=True, progress=False)
    assert len(histories) == 2 * 3  # 2 layers x (norm->qkv, norm->gate/up, up->down); v->o skipped (GQA shapes)
    for lin in (m for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)):
        assert all(group.unique().numel() <= 16 for group in lin.weight.reshape(-1, 16))  # on a 4-bit grid
    with pytest.raises(ValueError, match="too few"):
        awq.quantize_model(tiny_llama(), calib[:1], 4, 16)
    with pytest.raises(ValueError, match="does not divide"):
        awq.quantize_model(tiny_llama(), calib, 4, 24)


def test_salient_channels_and_keeping_them():
    model = tiny_llama()
    calib = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    for by in ("activation", "weight", "random"):
        picked = awq.salient_channels(model, calib, 0.05, by)
        assert len(picked) == 14 and all(c.numel() in (3, 6) for c in picked.values())  # 5% of 64 or 128 inputs
    w = torch.randn(8, 64)
    kept = awq.keep_channels(w, torch.tensor([3, 40]), 3, 16)
    assert torch.equal(kept[:, [3, 40]], w[:, [3, 40]]) and torch.equal(kept[:, :3], gptq.rtn(w, 3, 16)[:, :3])
    with pytest.raises(ValueError, match="'activation', 'weight' or 'random'"):
        awq.salient_channels(model, calib, 0.01, "gradient")
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        awq.salient_channels(model, calib, 1.5)
