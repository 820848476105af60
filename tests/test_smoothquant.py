import copy

import pytest
import torch

from lessons_lib import kernels
from lessons_lib import smoothquant as SQ
from test_gptq import tiny_llama


def test_factors_follow_the_formula_and_refuse_bad_input():
    s = SQ.smoothing_factors(torch.tensor([40.0, 1.0]), torch.tensor([0.5, 2.0]), 0.5)
    assert torch.allclose(s, torch.tensor([40**0.5 / 0.5**0.5, 1 / 2**0.5]))
    assert torch.allclose(SQ.smoothing_factors(torch.tensor([8.0]), torch.tensor([4.0]), 1.0), torch.tensor([8.0]))
    for alpha in (-0.1, 1.5, "0.5"):
        with pytest.raises(ValueError, match=r"alpha .* \[0, 1\]"):
            SQ.smoothing_factors(torch.ones(2), torch.ones(2), alpha)
    with pytest.raises(ValueError, match="NaN or Inf"):
        SQ.smoothing_factors(torch.tensor([float("nan"), 1.0]), torch.ones(2), 0.5)
    with pytest.raises(ValueError, match="one statistic per input channel"):
        SQ.smoothing_factors(torch.ones(3), torch.ones(2), 0.5)


def test_fold_keeps_the_function_and_flattens_activations():
    model = tiny_llama().eval()
    ids = torch.randint(0, 128, (4, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # give one input channel of every norm a large outlier
        for layer in model.model.layers:
            layer.input_layernorm.weight[3] = 40.0
    stats = SQ.activation_absmax(model, ids, include_down=True)
    smoothed = copy.deepcopy(model)
    SQ.smooth_model(smoothed, stats, 0.5, include_down=True)
    with torch.no_grad():
        a, b = model(ids).logits, smoothed(ids).logits
    assert kernels.relative_error(b, a) < 1e-5
    after = SQ.activation_absmax(smoothed, ids)
    name = "model.layers.0.self_attn.q_proj"
    ratio = lambda t: (t.max() / t.median()).item()  # noqa: E731
    assert ratio(after[name]) < ratio(stats[name]) / 4
    with pytest.raises(KeyError, match="include_down=True"):
        SQ.smooth_model(copy.deepcopy(model), SQ.activation_absmax(model, ids), 0.5, include_down=True)


def test_integer_kernel_agrees_with_float_on_the_same_int8_operands():
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(64, 128, generator=gen), torch.randn(16, 128, generator=gen)
    x[0, 5] = 300.0  # one massive value: per-tensor scales suffer, per-token ones do not
    errors = {}
    for per_token in (True, False):
        qw = kernels.quantize("int8_w8a8", w, act_dtype=torch.float32, per_token=per_token)
        out = kernels.check(qw, x, w)
        assert out["passes"] and out["kernel_error"] < 1e-6  # int32 accumulation is exact
        errors[per_token] = out["error_vs_float"]
    assert errors[True] < errors[False] / 3


def test_w8a8_swaps_every_decoder_linear_onto_int_mm():
    model = tiny_llama().eval()
    originals = SQ.w8a8(model)
    swapped = [m for m in model.modules() if isinstance(m, kernels.QuantLinear)]
    assert len(swapped) == len(originals) == 2 * 7 and all(m.qw.fmt == "int8_w8a8" for m in swapped)
    kernels.restore_linears(model, originals)
    assert not any(isinstance(m, kernels.QuantLinear) for m in model.modules())
