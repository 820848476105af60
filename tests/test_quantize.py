import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lessons_lib import codebooks
from lessons_lib import quantize as Q

finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(finite, min_size=2, max_size=64), bits=st.integers(2, 8), symmetric=st.booleans())
def test_rtn_error_is_at_most_half_a_step(values, bits, symmetric):
    x = torch.tensor(values, dtype=torch.float32)
    r = Q.quantize_rtn(x, bits, "tensor", symmetric=symmetric)
    err = (x - r.dequantized).abs()
    assert (err <= r.scale.flatten()[0] / 2 * (1 + 1e-5) + 1e-6).all()
    assert r.q.min() >= (-(2 ** (bits - 1)) + 1 if symmetric else 0) and r.q.max() <= 2**bits - 1


def test_error_bound_on_real_shapes_per_group():
    w = torch.randn(64, 576, generator=torch.Generator().manual_seed(0))
    r = Q.quantize_rtn(w, 4, "group", 64, symmetric=False)
    step = r.scale.expand(-1, 64).reshape(w.shape)  # each group of 64 shares one scale
    assert ((w - r.dequantized).abs() <= step / 2 + 1e-6).all()


def test_finer_granularity_lowers_error_on_uneven_rows():
    w = torch.randn(64, 576, generator=torch.Generator().manual_seed(1)) * torch.logspace(-2, 0, 64)[:, None]
    errs = [Q.error_stats(w, Q.fake_quant(w, 4, g, 64 if g == "group" else None))["mse"] for g in ["tensor", "channel", "group"]]
    assert errs[0] > errs[1] > errs[2]


def test_zero_is_exact_and_all_zero_rows_survive():
    x = torch.tensor([[0.0, 1.0, 3.0], [0.0, 0.0, 0.0]])
    for sym in (True, False):
        out = Q.fake_quant(x, 4, "channel", symmetric=sym)
        assert out[0, 0] == 0 and torch.equal(out[1], x[1])


def test_bits_per_weight_accounting():
    assert Q.rtn_bits_per_weight(4, "group", (576, 576), 64) == 4 + 16 / 64
    assert Q.rtn_bits_per_weight(4, "group", (576, 576), 64, symmetric=False) == 4 + 20 / 64
    assert Q.rtn_bits_per_weight(8, "channel", (1536, 576)) == 8 + 16 / 576
    assert Q.rtn_bits_per_weight(8, "tensor", (1536, 576)) == 8 + 16 / (1536 * 576)
    assert Q.storage_bits(4) == 4 and Q.storage_bits(4, 32, 16, 16) == 5.0  # Q4_1: fp16 scale and min per 32


def test_clear_errors():
    w = torch.randn(4, 576)
    with pytest.raises(ValueError, match=r"group_size 128 does not divide the input dimension 576.*64"):
        Q.fake_quant(w, 4, "group", 128)
    with pytest.raises(ValueError, match="bits must be an integer in 2..16"):
        Q.fake_quant(w, 17)
    with pytest.raises(ValueError, match="bits must be an integer in 2..16"):
        Q.fake_quant(w, 1, symmetric=True)
    with pytest.raises(ValueError, match="NaN or Inf"):
        Q.fake_quant(torch.tensor([1.0, float("nan")]))
    with pytest.raises(TypeError, match="floating-point"):
        Q.fake_quant(torch.arange(8))
    with pytest.raises(ValueError, match="unknown granularity"):
        Q.fake_quant(w, 4, "block")
    with pytest.raises(ValueError, match="needs a 2-D tensor"):
        Q.fake_quant(torch.randn(2, 3, 4), 8, "channel")


def test_nf4_levels_match_bitsandbytes():
    import bitsandbytes.functional as bnbf

    table = bnbf.get_4bit_type("nf4", device="cpu").double().sort().values
    ours = codebooks.nf4_levels()
    assert ours.shape == (16,) and (ours == 0).sum() == 1 and ours[-1] == 1 and ours[0] == -1
    assert torch.allclose(ours, table, atol=1e-6)


def test_swapped_weights_restores_and_takes_one_function_per_layer():
    from test_gptq import tiny_llama

    from lessons_lib import models, quantize

    model = tiny_llama()
    weights = models.linear_weights(model)
    name = "model.layers.1.mlp.up_proj"
    before = {n: w.detach().clone() for n, w in weights.items()}
    with quantize.swapped_weights(model, {name: torch.zeros_like}):
        assert (weights[name] == 0).all()
        assert all(torch.equal(w, before[n]) for n, w in weights.items() if n != name)
    assert all(torch.equal(w, before[n]) for n, w in weights.items())
