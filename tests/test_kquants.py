"""GGUF k-quants: the course's blocks decoded by gguf bit-exactly, Q8_0 / Q4_0 bytes equal to gguf's encoder,
bits per weight, the importance matrix, refused input."""
import numpy as np
import pytest
import torch

from lessons_lib import kquants as kq
from lessons_lib import validate


def _w(rows=16, cols=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g)


@pytest.mark.parametrize("fmt", kq.FORMATS)
def test_gguf_decodes_our_blocks_bit_exactly(fmt):
    q = kq.quantize(_w(), fmt)
    assert q.blocks.dtype == np.uint8 and q.blocks.shape == (16, 512 // kq.BLOCK[fmt] * kq.BYTES[fmt])
    assert torch.equal(kq.gguf_dequantize(q), q.values)
    rel = ((q.values - _w()).pow(2).mean() / _w().pow(2).mean()).item()
    assert rel < {"Q8_0": 1e-4, "Q6_K": 1e-3, "Q4_K": 1e-2, "Q4_0": 1.5e-2}[fmt]


@pytest.mark.parametrize("fmt", ["Q8_0", "Q4_0"])
def test_flat_formats_equal_ggufs_own_encoder_byte_for_byte(fmt):
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize

    assert np.array_equal(quantize(_w(seed=1).numpy(), T[fmt]), kq.quantize(_w(seed=1), fmt).blocks)


def test_bits_per_weight():
    assert {f: kq.bits_per_weight(f) for f in kq.FORMATS} == {"Q8_0": 8.5, "Q4_0": 4.5, "Q4_K": 4.5, "Q6_K": 6.5625}
    assert kq.flat_bits_per_weight("Q8_0") == 8.5 and kq.flat_bits_per_weight("Q4_0") == 4.5
    for f in kq.FORMATS:
        assert kq.quantize(_w(), f).bits_per_weight() == kq.bits_per_weight(f)


def test_importance_lowers_the_weighted_error_it_targets():
    w = _w(seed=2)
    imp = torch.rand(512, generator=torch.Generator().manual_seed(3)) ** 4 * 10
    for f in ("Q4_K", "Q6_K"):
        plain, weighted = kq.quantize(w, f), kq.quantize(w, f, imp)
        assert torch.equal(kq.gguf_dequantize(weighted), weighted.values)
        assert kq.weighted_error(w, weighted.values, imp) < 0.9 * kq.weighted_error(w, plain.values, imp)
        assert kq.weighted_error(w, plain.values) <= kq.weighted_error(w, weighted.values)  # plain wins on plain MSE


def test_zero_rows_and_constant_rows():
    for f in kq.FORMATS:
        z = torch.zeros(2, 256)
        assert torch.equal(kq.quantize(z, f).values, z) and torch.equal(kq.gguf_dequantize(kq.quantize(z, f)), z)
        c = torch.full((1, 256), 0.5)
        assert torch.allclose(kq.quantize(c, f).values, c, rtol=1e-2)


def test_importance_matrix_is_the_mean_square_of_inputs():
    lin = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3))
    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = lin
        def forward(self, ids):
            return self.m(ids)
    model, ids = Wrap(), torch.tensor([[1, 2, 3]])
    imp = kq.importance_matrix(model, ids, names=["m.1"])
    x = lin[0](ids).reshape(-1, 4)
    assert torch.allclose(imp["m.1"], x.pow(2).mean(0))


def test_bad_input():
    with pytest.raises(validate.UnknownName, match="Q4_K"):
        kq.quantize(_w(), "Q3_K")
    with pytest.raises(validate.BadInput, match="multiple of 256"):
        kq.quantize(torch.randn(4, 576), "Q4_K")
    with pytest.raises(validate.BadInput, match="NaN"):
        kq.quantize(torch.full((1, 32), float("nan")), "Q8_0")
    with pytest.raises(validate.BadInput, match="one nonnegative value per input channel"):
        kq.quantize(_w(), "Q4_K", torch.ones(3))
    with pytest.raises(validate.BadInput, match="importance applies to Q4_K"):
        kq.quantize(_w(), "Q4_0", torch.ones(512))
