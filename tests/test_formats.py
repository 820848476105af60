import math

import pytest
import torch

from lessons_lib import formats as F

TORCH_FLOATS = ["fp32", "bf16", "fp16", "fp8_e4m3", "fp8_e5m2"]


@pytest.mark.parametrize("key", TORCH_FLOATS)
def test_limits_equal_torch_finfo(key):
    f = F.get(key)
    info = torch.finfo(f.torch_dtype)
    assert f.max_finite == info.max and f.min_normal == info.smallest_normal and f.epsilon == info.eps
    one = torch.tensor([1], dtype=torch.int64).to(torch.int32 if f.bits == 32 else torch.int16 if f.bits == 16 else torch.uint8)
    assert f.min_subnormal == one.view(f.torch_dtype).double().item()


def test_seed_gaps_filled():
    """The seed's format table leaves these out; they follow from the bit layouts."""
    assert F.get("fp8_e5m2").max_finite == 57344 and F.get("fp8_e4m3").max_finite == 448
    assert F.get("fp16").max_finite == 65504 and F.get("fp4_e2m1").max_finite == 6
    assert [F.get(k).n_finite for k in ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1"]] == [253, 247, 15]


@pytest.mark.parametrize("key", ["fp8_e4m3", "fp8_e5m2"])
def test_all_256_fp8_patterns_decode_like_torch(key):
    f = F.get(key)
    ours = f.values()
    theirs = torch.arange(256, dtype=torch.uint8).view(f.torch_dtype).double()
    assert torch.equal(ours.isnan(), theirs.isnan())
    assert torch.equal(ours[~ours.isnan()], theirs[~theirs.isnan()])
    assert torch.equal(torch.signbit(ours[~ours.isnan()]), torch.signbit(theirs[~theirs.isnan()]))


@pytest.mark.parametrize("key", TORCH_FLOATS)
def test_rounding_sweep_matches_torch_casts(key):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20000, generator=g) * s for s in (1e-9, 1e-6, 1e-3, 1, 300, 6e4, 1e6, 1e39)]).float()
    x = torch.cat([x, torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 464.0, 61440.0, 65520.0])])
    f = F.get(key)
    ours, theirs = f.round(x), F.torch_round_trip(x, f)
    same = (ours == theirs) | (ours.isnan() & theirs.isnan())
    assert same.all(), x[~same][:5]


def test_fp4_values_and_bits():
    f = F.get("fp4_e2m1")
    assert sorted(set(f.values().abs().tolist())) == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert F.get("fp16").bit_fields(1.0) == "0 | 01111 | 0000000000"
    assert F.get("fp8_e4m3").bit_fields(-448) == "1 | 1111 | 110"
    for key in ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1"]:
        f = F.get(key)
        assert all(f.decode(f.encode(v)) == v for v in f.values().tolist() if v == v)


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown format"):
        F.get("fp6")
    with pytest.raises(TypeError, match="floating-point"):
        F.get("fp16").round(torch.arange(3))
    with pytest.raises(ValueError, match="pattern must be in"):
        F.get("fp8_e4m3").decode(256)
