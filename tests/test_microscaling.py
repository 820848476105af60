"""Microscaling: bit-exact against torchao's MX / NVFP4 emulation, gguf's MXFP4 / NVFP4 blocks and
compressed-tensors' FP4 packing; bits per weight from the bytes; refused input."""
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from lessons_lib import microscaling as mx
from lessons_lib import validate


def _x(rows=32, cols=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g) * 3


def test_element_grids_match_the_ocp_spec():
    assert mx.element_values(torch.arange(8, dtype=torch.uint8), "e2m1").tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert mx.ELEMENTS["e2m3"].max_finite == 7.5 and mx.ELEMENTS["e3m2"].max_finite == 28
    assert [mx.FORMATS[k].emax for k in ("mxfp4", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp8")] == [2, 2, 4, 8]


def test_round_trip_error_is_bounded_and_scales_are_powers_of_two():
    x = _x()
    for name in mx.FORMATS:
        enc = mx.encode(x, name)
        assert enc.codes.dtype == torch.uint8 and enc.codes.shape == x.shape
        err = (mx.decode(enc) - x).pow(2).mean() / x.pow(2).mean()
        assert err < {"mxfp8": 1e-3, "mxfp6_e2m3": 3e-3, "mxfp6_e3m2": 1e-2}.get(name, 3e-2), name
    s = mx.block_scales(mx.encode(x, "mxfp4"))
    assert torch.equal(torch.exp2(torch.log2(s).round()), s)


def test_zero_negative_zero_and_saturation():
    x = torch.zeros(1, 32)
    assert torch.equal(mx.decode(mx.encode(x, "mxfp4")), x)
    y = torch.tensor([[8.0, -0.01] + [0.0] * 30])  # amax 8: scale 2**(3 - 2) = 2, 8 / 2 = 4 is exact
    enc = mx.encode(y, "mxfp4")
    assert mx.decode(enc)[0, 0] == 8.0 and enc.codes[0, 1] == 0b1000  # -0.01 rounds to -0: the sign bit stays
    z = torch.tensor([[7.9] + [0.0] * 31])  # floor(log2 7.9) = 2: scale 1, 7.9 saturates at 6 (the OCP FLOOR rule)
    assert mx.decode(mx.encode(z, "mxfp4"))[0, 0] == 6.0


def test_pack_unpack_round_trip():
    g = torch.Generator().manual_seed(1)
    for bits in (4, 6, 8):
        codes = torch.randint(0, 2**bits, (3, 64), generator=g, dtype=torch.uint8)
        p = mx.pack_bits(codes, bits)
        assert p.shape == (3, 64 * bits // 8) and torch.equal(mx.unpack_bits(p, bits), codes)
    assert mx.pack_bits(torch.tensor([[1, 2]], dtype=torch.uint8), 4).item() == 0x21


def test_bits_per_weight_formula_matches_the_bytes():
    assert mx.bits_per_weight("mxfp4") == 4.25 and mx.bits_per_weight("nvfp4") == 4.5
    assert mx.bits_per_weight("mxfp8") == 8.25 and mx.bits_per_weight("mxfp6_e2m3") == 6.25
    x = _x(64, 256)
    for name in mx.FORMATS:
        assert mx.encode(x, name).bits_per_weight() == pytest.approx(mx.bits_per_weight(name, tuple(x.shape)), abs=1e-12)


def _torchao():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.prototype.mx_formats.mx_tensor import MXTensor
        from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale
    return MXTensor, NVFP4Tensor, per_tensor_amax_to_scale


@pytest.mark.parametrize("name,dtype", [("mxfp8", torch.float8_e4m3fn), ("mxfp6_e2m3", "fp6_e2m3"),
                                        ("mxfp6_e3m2", "fp6_e3m2"), ("mxfp4", torch.float4_e2m1fn_x2)])
def test_mx_bit_exact_against_torchao(name, dtype):
    MXTensor, _, _ = _torchao()
    x = _x(seed=2)
    ours, theirs = mx.encode(x, name), MXTensor.to_mx(x, dtype, 32)
    assert torch.equal(theirs.scale.view(torch.uint8), ours.scales)
    q = theirs.qdata.view(torch.uint8)
    assert torch.equal(q, mx.packed(ours) if name == "mxfp4" else ours.codes)
    assert torch.equal(theirs.dequantize(torch.float32), mx.decode(ours))


def test_nvfp4_bit_exact_against_torchao_with_and_without_tensor_scale():
    _, NVFP4Tensor, amax_to_scale = _torchao()
    x = _x(seed=3)
    ours = mx.encode(x, "nvfp4")
    theirs = NVFP4Tensor.to_nvfp4(x, per_tensor_scale=amax_to_scale(x.abs().max()))
    assert ours.tensor_scale == theirs.per_tensor_scale.item()
    assert torch.equal(theirs.scale.view(torch.uint8), ours.scales) and torch.equal(theirs.qdata, mx.packed(ours))
    assert torch.equal(theirs.dequantize(torch.float32), mx.decode(ours))
    one, theirs1 = mx.encode(x, "nvfp4", tensor_scale=1.0), NVFP4Tensor.to_nvfp4(x)
    assert torch.equal(theirs1.qdata, mx.packed(one)) and torch.equal(theirs1.dequantize(torch.float32), mx.decode(one))


def test_gguf_decodes_our_blocks_bit_exactly():
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize, quantize

    x = _x(seed=4)
    enc = mx.encode(x, "mxfp4")
    assert np.array_equal(dequantize(mx.gguf_blocks(enc), T.MXFP4), mx.decode(enc).numpy())
    # gguf's own MXFP4 encoder gives the same values; its bytes differ only where a value rounds to zero:
    # gguf writes +0 (code 0), the spec keeps the sign (-0, code 8)
    theirs = quantize(x.numpy(), T.MXFP4)
    assert np.array_equal(dequantize(theirs, T.MXFP4), mx.decode(enc).numpy())
    assert not np.array_equal(theirs, mx.gguf_blocks(enc))
    plus_zero = enc.codes.masked_fill(enc.codes == 8, 0)
    assert np.array_equal(theirs, mx.gguf_blocks(replace(enc, codes=plus_zero)))
    nv = mx.encode(x, "nvfp4", tensor_scale=1.0)  # GGUF keeps the tensor scale outside its blocks
    assert np.array_equal(dequantize(mx.gguf_blocks(nv), T.NVFP4), mx.decode(nv).numpy())


def test_fp4_packing_matches_compressed_tensors():
    from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8, unpack_fp4_from_uint8

    enc = mx.encode(_x(seed=5), "nvfp4")
    values = mx.element_values(enc.codes, "e2m1")
    assert torch.equal(pack_fp4_to_uint8(values), mx.packed(enc))
    assert torch.equal(unpack_fp4_from_uint8(mx.packed(enc), *enc.shape, dtype=torch.float32), values)



def test_nvfp4_checkpoint_saved_by_compressed_tensors_decodes_to_our_values(tmp_path):
    """llm-compressor's NVFP4 scheme, compressed with our scales, saved, reloaded and decompressed: our values, bit
    for bit. The tensor scale is a power of two, so compressed-tensors' division by its global scale (1 / ours) is
    exact; its own scale arithmetic rounds in another order (lesson 07b)."""
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization import preset_name_to_scheme
    from safetensors.torch import load_file, save_file

    scheme = preset_name_to_scheme("NVFP4", ["Linear"])
    assert (scheme.weights.group_size, scheme.weights.scale_dtype) == (mx.FORMATS["nvfp4"].block, torch.float8_e4m3fn)
    w = _x(32, 64, seed=7)
    ts = 2.0 ** float(torch.ceil(torch.log2(w.abs().max() / (448 * 6))))  # the default tensor scale, rounded up
    ours = mx.encode(w, "nvfp4", tensor_scale=ts)
    state = {"weight": w, "weight_scale": ours.scales.view(torch.float8_e4m3fn).float(),
             "weight_global_scale": torch.tensor([1 / ts])}
    save_file({k: v.contiguous() for k, v in NVFP4PackedCompressor.compress(state, scheme).items()},
              tmp_path / "layer.safetensors")
    stored = load_file(tmp_path / "layer.safetensors")
    assert torch.equal(stored["weight_packed"], mx.packed(ours))
    assert torch.equal(stored["weight_scale"].view(torch.uint8), ours.scales)
    assert torch.equal(NVFP4PackedCompressor.decompress(stored, scheme)["weight"].float(), mx.decode(ours))


def test_mxfp4_checkpoint_saved_by_compressed_tensors_decodes_to_our_values(tmp_path):
    """compressed-tensors' MXFP4 preset (E2M1 in blocks of 32 with E8M0 scales, its mxfp4-pack-quantized format):
    given our power-of-two scales, it stores our packed codes and our scale bytes, and decompresses to our values."""
    from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor
    from compressed_tensors.quantization import preset_name_to_scheme
    from safetensors.torch import load_file, save_file

    scheme = preset_name_to_scheme("MXFP4A16", ["Linear"])
    assert (scheme.weights.group_size, scheme.weights.scale_dtype) == (mx.FORMATS["mxfp4"].block, torch.uint8)
    w = _x(32, 64, seed=8)
    ours = mx.encode(w, "mxfp4")
    state = {"weight": w, "weight_scale": mx.e8m0_value(ours.scales).reshape(32, -1).float()}
    save_file({k: v.contiguous() for k, v in MXFP4PackedCompressor.compress(state, scheme).items()},
              tmp_path / "layer.safetensors")
    stored = load_file(tmp_path / "layer.safetensors")
    assert torch.equal(stored["weight_packed"], mx.packed(ours))
    assert torch.equal(stored["weight_scale"].reshape(-1), ours.scales.reshape(-1))
    assert torch.equal(MXFP4PackedCompressor.decompress(stored, scheme)["weight"].float(), mx.decode(ours))


def test_emulated_schemes_order_their_errors():
    x = _x(seed=6)
    err = {s: (mx.decode(mx.encode(x, mx.scheme("e2m1", 32, s))) - x).pow(2).mean().item() for s in ("e8m0", "e4m3", "fp32")}
    assert err["fp32"] <= err["e4m3"] < err["e8m0"]


def test_bad_input_is_refused_with_what_is_allowed():
    x = _x()
    with pytest.raises(validate.UnknownName, match="mxfp4"):
        mx.encode(x, "mxfp3")
    with pytest.raises(validate.BadInput, match="blocks of 32 elements only"):
        mx.encode(x, "mxfp4", block=16)
    with pytest.raises(validate.BadInput, match="multiple of its block of 16"):
        mx.encode(torch.randn(4, 40), "nvfp4")
    with pytest.raises(validate.BadInput, match="NaN"):
        mx.encode(torch.full((1, 32), float("nan")), "mxfp8")
    with pytest.raises(validate.BadInput, match="block must be one of"):
        mx.scheme("e2m1", 24, "e8m0")
    with pytest.raises(validate.UnknownName, match="e2m1"):
        mx.scheme("e1m2", 32, "e8m0")
    with pytest.raises(validate.BadInput, match="no tensor scale"):
        mx.encode(x, "mxfp4", tensor_scale=1.0)
    with pytest.raises(validate.BadInput, match="floating-point"):
        mx.encode(torch.ones(1, 32, dtype=torch.int32), "mxfp4")


def test_ties_round_to_the_even_code():
    y = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.75, 7.0])
    assert mx.element_values(mx.element_codes(y, "e2m1"), "e2m1").tolist() == [0, 1, 1, 2, 2, 4, 4, -1, 6]
    e4m3 = mx.element_codes(torch.tensor([1.0625, 1.1875, 500.0]), "e4m3")  # midpoints of 1, 1.125, 1.25; saturation
    assert torch.equal(e4m3.view(torch.float8_e4m3fn).float(), torch.tensor([1.0625, 1.1875, 500.0]).to(torch.float8_e4m3fn).float())
