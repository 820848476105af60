import pytest
import torch

from lessons_lib import codebooks as C
from lessons_lib import quantize as Q


@pytest.fixture(scope="module")
def gauss():
    return torch.randn(2**18, generator=torch.Generator().manual_seed(0))


def test_nf4_construction():
    levels = C.nf4_levels()
    assert levels.shape == (16,) and (levels > 0).sum() == 8 and (levels < 0).sum() == 7 and (levels == 0).sum() == 1
    assert torch.allclose(levels, C.bnb_levels("nf4"), atol=1e-6)


def test_codebook_comparison_on_gaussian_blocks(gauss):
    normed = C.normalized_blocks(gauss, 64)
    err = {name: Q.error_stats(gauss, C.quantize_codebook(gauss, lv, 64))["rel_mse"] for name, lv in
           {"int4": C.int4_levels(), "fp4": C.fp4_e2m1_levels(), "nf4": C.nf4_levels(), "lloyd": C.lloyd_max(normed)}.items()}
    assert err["lloyd"] < err["nf4"] < err["fp4"] < err["int4"]


def test_quantize_codebook_matches_bitsandbytes_nf4(gauss):
    w = gauss[: 64 * 1024].reshape(64, 1024)
    ours = C.quantize_codebook(w, C.nf4_levels(), 64)
    theirs, _, _ = C.bnb_roundtrip(w, "nf4", 64)
    assert (ours - theirs).abs().max() < 1e-5


@pytest.mark.parametrize("double_quant", [False, True])
def test_bits_per_param_measured_from_bitsandbytes(gauss, double_quant):
    w = gauss[: 256 * 1024].reshape(256, 1024)
    _, state, packed = C.bnb_roundtrip(w, "nf4", 64, double_quant)
    assert abs(C.bnb_measured_bits_per_weight(packed, state) - C.bnb_bits_per_weight(64, double_quant)) < 1e-3
    assert C.bnb_measured_bits_per_weight(packed, state) == pytest.approx(C.bnb_bits_per_weight(64, double_quant, n=w.numel()))
    assert C.bnb_bits_per_weight(64) == 4.5 and abs(C.bnb_bits_per_weight(64, True) - 4.127) < 1e-3
    small = gauss[: 128 * 64].reshape(128, 64)  # 128 blocks: fewer than one double-quantization block of 256
    _, state, packed = C.bnb_roundtrip(small, "nf4", 64, double_quant)
    assert C.bnb_measured_bits_per_weight(packed, state) == pytest.approx(C.bnb_bits_per_weight(64, double_quant, n=small.numel()))


def test_lloyd_max_levels_are_centroids(gauss):
    levels = C.lloyd_max(gauss, n_levels=4, iters=100)
    idx = torch.bucketize(gauss.double(), (levels[1:] + levels[:-1]) / 2)
    for k in range(4):
        assert abs(gauss.double()[idx == k].mean() - levels[k]) < 1e-3
    # the 4-level Lloyd-Max quantizer of N(0,1): +-0.4528 and +-1.510 (Max, 1960)
    assert torch.allclose(levels.abs().sort().values, torch.tensor([0.4528, 0.4528, 1.510, 1.510], dtype=torch.float64), atol=0.01)


def test_clear_errors(gauss):
    with pytest.raises(ValueError, match=r"quant_type must be one of \('nf4', 'fp4'\)"):
        C.bnb_roundtrip(gauss[:4096], "int4", 64)
    with pytest.raises(ValueError, match="blocksize must be one of"):
        C.bnb_roundtrip(gauss[:4096], "nf4", 100)
    with pytest.raises(ValueError, match="do not split into blocks of 64"):
        C.quantize_codebook(torch.randn(100), C.nf4_levels(), 64)
    with pytest.raises(ValueError, match="levels must be"):
        C.quantize_codebook(gauss[:64], torch.tensor([-2.0, 2.0]), 64)
    with pytest.raises(ValueError, match="NaN or Inf"):
        C.quantize_codebook(torch.full((64,), float("nan")), C.nf4_levels(), 64)
    with pytest.raises(ValueError, match="need at least 16 samples"):
        C.lloyd_max(torch.randn(5))
