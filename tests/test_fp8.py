import pytest
import torch

from lessons_lib import fp8
from test_gptq import tiny_llama


def test_format_limits_and_saturating_cast():
    assert fp8.max_value("e4m3") == 448 and fp8.max_value("e5m2") == 57344
    assert fp8.cast(torch.tensor([1000.0, -1e6]), "e4m3").tolist() == [448.0, -448.0]
    assert fp8.cast(torch.tensor([1e6]), "e5m2").item() == 57344  # clamped, not inf
    with pytest.raises(ValueError, match="unknown FP8 format"):
        fp8.cast(torch.ones(2), "e3m4")


def test_range_report_counts_overflow_and_underflow():
    x = torch.tensor([1e-4, 1.0, 1000.0, 0.0])
    r = fp8.range_report(x, "e4m3")
    assert r["overflow"] == pytest.approx(0.25) and r["underflow"] == pytest.approx(0.25)  # 1000 > 448; 1e-4 -> 0
    assert fp8.range_report(x, "e5m2")["underflow"] == 0  # E5M2 reaches 2**-16
    with pytest.raises(ValueError, match="NaN or Inf"):
        fp8.range_report(torch.tensor([float("inf")]), "e4m3")


@pytest.mark.parametrize("granularity", fp8.GRANULARITIES)
def test_each_scaling_recipe_maps_its_unit_absmax_to_448(granularity):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 300, generator=gen) * torch.logspace(-2, 2, 300)  # ragged: 128 divides neither dimension
    s = fp8.scales(x, "e4m3", granularity)
    assert s.shape == x.shape
    scaled = (x / s).abs()
    assert scaled.max() <= 448 * (1 + 1e-6)
    unit = {"tensor": (200, 300), "row": (1, 300), "block": (128, 128), "group": (1, 128)}[granularity]
    corner = scaled[: unit[0], : unit[1]]  # the first scaling unit reaches the format's maximum exactly
    assert corner.max() == pytest.approx(448, rel=1e-5)
    err = ((fp8.quantize(x, "e4m3", granularity) - x).norm() / x.norm()).item()
    assert err < 0.05


def test_finer_scales_help_a_tensor_with_outlier_rows():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 256, generator=gen) * 1e-3
    x[0] *= 1e5  # one token a hundred thousand times larger: a tensor-wide scale pushes the rest into subnormals
    err = {g: ((fp8.quantize(x, "e4m3", g) - x)[1:].norm() / x[1:].norm()).item() for g in ("tensor", "row")}
    assert err["row"] < err["tensor"] / 5


def test_static_scale_saturates_larger_inputs():
    s = fp8.static_scale(torch.tensor([[2.0, -4.0]]))
    assert s == pytest.approx(4 / 448)
    assert fp8.quantize(torch.tensor([8.0]), scale=s).item() == pytest.approx(4.0)  # clipped at the calibrated range
    with pytest.raises(ValueError, match="empty"):
        fp8.static_scale(torch.empty(0))


def test_kv_cache_changes_attention_inputs_and_restores():
    model = tiny_llama().eval()
    ids = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(0))
    before = model.config._attn_implementation
    with torch.no_grad():
        ref = model(ids).logits
        with fp8.kv_cache(model, "e4m3", scale=None):
            q = model(ids).logits
        with fp8.kv_cache(model, "e4m3", scale=1e3):  # a huge scale flushes keys and values to zero
            zeroed = model(ids).logits
    assert model.config._attn_implementation == before
    assert 0 < (q - ref).norm() / ref.norm() < 0.05
    assert (zeroed - ref).norm() > (q - ref).norm()
