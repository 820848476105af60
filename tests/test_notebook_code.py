"""The methods written out in lessons 01-07 (cells tagged "library-twin") must stay equal to lessons_lib's."""
import glob
import math

import nbformat
import pytest
import torch

from lessons_lib import awq, codebooks, fp8, gptq
from lessons_lib import formats as F
from lessons_lib import quantize as Q
from lessons_lib import smoothquant as SQ
from lessons_lib.architecture import Group

MARKER = "# library twin:"


def twin(lesson: str) -> dict:
    """Exec the lesson's library-twin cell and return what it defined."""
    (path,) = glob.glob(f"notebooks/{lesson}_*.ipynb")
    cells = [c for c in nbformat.read(path, 4).cells if c.cell_type == "code"
             and ("library-twin" in c.metadata.get("tags", []) or c.source.startswith(MARKER))]
    assert len(cells) == 1, f"{path}: expected one library-twin cell, found {len(cells)}"
    assert cells[0].source.startswith(MARKER), f"{path}: a library-twin cell starts with '{MARKER} <function>'"
    ns = {"torch": torch, "math": math, "gptq": gptq}
    exec(cells[0].source, ns)
    return ns


def test_every_lesson_01_to_07_has_one():
    for lesson in ("01", "02", "03", "04", "05", "06", "07"):
        assert callable(next(v for k, v in twin(lesson).items() if not k.startswith("__") and k not in ("torch", "math", "gptq")))


def test_01_decode_bits():
    decode = twin("01")["decode_bits"]
    g = torch.Generator().manual_seed(11)
    for key in ("fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "fp16", "bf16", "fp32"):
        f = F.get(key)
        for p in torch.randint(0, 2**min(f.bits, 31), (300,), generator=g).tolist():
            ours, lib = decode(p, f.exponent, f.mantissa, f.bias, f.specials), f.decode(p)
            assert ours == lib or (math.isnan(ours) and math.isnan(lib)), (key, p)


@pytest.mark.parametrize("bits,symmetric", [(8, True), (4, True), (4, False), (2, False)])
def test_02_quantize_groups(bits, symmetric):
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(bits)) * 0.05
    w[3, :64] = 0  # an all-zero group
    assert torch.equal(twin("02")["quantize_groups"](w, bits, 64, symmetric), Q.fake_quant(w, bits, "group", 64, symmetric))


def test_03_nf4_levels():
    assert torch.equal(twin("03")["nf4_levels_by_hand"](), codebooks.nf4_levels())


def test_04_gptq_column_loop():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(400, 128, generator=g) * torch.rand(128, generator=g) * 3
    w = torch.randn(32, 128, generator=g)
    h = gptq.hessian(x)
    ours = twin("04")["gptq_by_hand"](w, h, bits=4, group_size=32, damp=0.05)
    assert torch.allclose(ours, gptq.gptq_quantize(w, h, 4, 32, damp=0.05, block=128).weight, atol=1e-6)


def test_05_awq_scale_search():
    g = torch.Generator().manual_seed(5)
    lin, feeder = torch.nn.Linear(128, 64, bias=False), torch.nn.Linear(32, 128, bias=False)
    x = torch.randn(200, 128, generator=g) * (1 + 20 * (torch.rand(128, generator=g) > 0.95))  # a few loud channels
    s_ours, alpha_ours = twin("05")["awq_scale_by_hand"](lin.weight.detach(), x, 4, 32, 10)
    s_lib, history = awq.search_scales(Group("feeder", feeder, [lin], lin), [((x,), {})], 4, 32, n_grid=10)
    assert alpha_ours == min(history, key=lambda r: r[2])[0] and torch.allclose(s_ours, s_lib)


def test_06_smoothing_factors_and_fold():
    g = torch.Generator().manual_seed(6)
    lin = torch.nn.Linear(96, 40, bias=False)
    x = torch.randn(50, 96, generator=g) * (1 + 30 * (torch.rand(96, generator=g) > 0.9))
    for alpha in (0.0, 0.5, 0.8):
        s, w_s = twin("06")["smooth_by_hand"](x.abs().amax(0), lin.weight.detach(), alpha)
        assert torch.equal(s, SQ.smoothing_factors(x.abs().amax(0), SQ.weight_absmax([lin]), alpha))
        assert torch.allclose((x / s) @ w_s.T, x @ lin.weight.detach().T, rtol=1e-4, atol=1e-4)


def test_07_fp8_per_row():
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(7)) * torch.logspace(-3, 3, 64)[:, None]
    assert torch.equal(twin("07")["fp8_per_row"](x), fp8.quantize(x, "e4m3", "row"))
