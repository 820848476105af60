import pytest
import torch
from torch import nn

from lessons_lib import kernels

CPU_FORMATS = [f for f in kernels.FORMATS if kernels.unsupported_reason(f, "cpu") is None]


@pytest.fixture(scope="module")
def case():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(256, 512, generator=gen) * 0.02, torch.randn(5, 512, generator=gen)


def test_every_format_but_missing_libraries_runs_on_this_cpu():
    assert {"fp32", "bf16", "fp16", "int8_wo", "int8_w8a8", "int4_wo", "fp8"} <= set(CPU_FORMATS)


@pytest.mark.parametrize("fmt", CPU_FORMATS)
def test_kernel_agrees_with_float_reference(fmt, case):
    w, x = case
    qw = kernels.quantize(fmt, w, group_size=64 if fmt == "int4_wo" else None)
    y = qw(x.to(qw.act_dtype))
    assert y.shape == (5, 256)
    r = kernels.check(qw, x, w)
    assert r["passes"], r
    assert r["kernel_error"] <= kernels.TOLERANCE[fmt]
    # quantization error is bounded too: 4-bit formats lose most, 16-bit formats almost nothing
    assert r["error_vs_float"] < {"fp32": 1e-6, "bf16": 1e-2, "fp16": 1e-3}.get(fmt, 0.15)


@pytest.mark.parametrize("fmt", CPU_FORMATS)
def test_dequantized_weight_is_close_to_the_float_weight(fmt, case):
    w, _ = case
    qw = kernels.quantize(fmt, w)
    err = kernels.relative_error(qw.dequantize(), w)
    bits = kernels.WEIGHT_BITS[fmt]
    assert err < {32: 1e-6, 16: 1e-2, 8: 0.05, 4: 0.15}[bits]


def test_int4_layout_matches_the_formula(case):
    w, x = case
    qw = kernels.quantize("int4_wo", w, group_size=64)
    assert qw.scales_and_zeros.shape == (512 // 64, 256, 2)
    codes = qw.codes.float().reshape(256, 8, 64)
    scale, zero = qw.scales_and_zeros.float().transpose(0, 1).unbind(-1)
    deq = ((codes - 8) * scale[..., None] + zero[..., None]).reshape(256, 512)
    xb = x.to(qw.act_dtype)
    assert kernels.relative_error(qw(xb), xb.float() @ deq.T) < 1e-2
    assert codes.min() >= 0 and codes.max() <= 15


def test_storage_bytes_follow_bits_per_weight(case):
    w, _ = case
    n = w.numel()
    assert kernels.quantize("fp32", w).nbytes == 4 * n
    assert kernels.quantize("bf16", w).nbytes == 2 * n
    int8 = kernels.quantize("int8_wo", w)
    assert int8.nbytes == n + 256 * int8.scale.element_size()  # one scale per row, in the activation dtype
    int4 = kernels.quantize("int4_wo", w, group_size=64)
    assert n / 2 <= int4.nbytes <= n / 2 + (n // 64) * 2 * 4 + 4096  # packed + scale and zero per group


def test_clone_has_its_own_storage(case):
    w, x = case
    for fmt in ("bf16", "int8_w8a8", "int4_wo"):
        qw = kernels.quantize(fmt, w)
        twin = qw.clone()
        names = qw.tensor_names
        assert all(getattr(qw, n).data_ptr() != getattr(twin, n).data_ptr() for n in names)
        assert torch.equal(qw(x.to(qw.act_dtype)), twin(x.to(qw.act_dtype)))


def test_probe_reports_every_format():
    r = kernels.probe("cpu")
    assert set(r) == set(kernels.FORMATS)
    for fmt, v in r.items():
        assert "runs" in v and "native" in v
        assert v["runs"] == (fmt in CPU_FORMATS)
        if v["runs"]:
            assert v["passes"], (fmt, v)
            assert v["kernel"]
        else:
            assert v["reason"]
    assert r["fp32"]["native"] and not r["fp8"]["native"]  # no CPU has FP8 arithmetic


def test_probe_table_rows():
    rows = kernels.probe_table(kernels.probe("cpu", out_features=64, in_features=128, batch=2))
    assert [r.fmt for r in rows] == list(kernels.FORMATS)


@pytest.mark.parametrize("fmt, shape, group, message", [
    ("int4_wo", (100, 512), 64, "multiple of 16, got 100"),
    ("int4_wo", (256, 512), 48, "group sizes 32, 64, 128 or 256"),
    ("int4_wo", (256, 96), 64, "does not divide in_features=96"),
    ("fp8", (100, 512), None, "multiples of 16"),
    ("nosuch", (256, 512), None, "unknown format"),
])
def test_clear_error_for_what_the_kernel_cannot_take(fmt, shape, group, message):
    with pytest.raises(kernels.UnsupportedKernel, match=message):
        kernels.quantize(fmt, torch.randn(*shape), group_size=group)


def _fake_gpu(monkeypatch, cc):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cc)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")


def test_gpu_rules_read_compute_capability(monkeypatch):
    _fake_gpu(monkeypatch, (8, 0))  # an A100: no FP8
    assert kernels.unsupported_reason("fp8", "cuda") == "fp8 _scaled_mm needs compute capability >= 8.9, found 8.0"
    assert kernels.unsupported_reason("int4_wo", "cuda") is None
    assert kernels.unsupported_reason("int8_w8a8", "cuda") is None
    with pytest.raises(kernels.UnsupportedKernel, match=r"fp8 on Fake GPU: .*>= 8.9, found 8.0"):
        kernels.require("fp8", "cuda")
    _fake_gpu(monkeypatch, (7, 5))  # a T4: no bf16 tensor cores, so no tinygemm
    assert "found 7.5" in kernels.unsupported_reason("int4_wo", "cuda")
    assert kernels.unsupported_reason("int8_w8a8", "cuda") is None
    _fake_gpu(monkeypatch, (7, 0))
    assert "found 7.0" in kernels.unsupported_reason("int8_w8a8", "cuda")
    _fake_gpu(monkeypatch, (9, 0))  # an H100: everything, within shape rules
    assert all(kernels.unsupported_reason(f, "cuda") is None for f in ("fp8", "int4_wo", "int8_w8a8"))
    assert "multiple of 8" in kernels.unsupported_reason("int4_wo", "cuda", out_features=100)
    assert "multiples of 8" in kernels.unsupported_reason("int8_w8a8", "cuda", in_features=100)


def test_no_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(kernels.UnsupportedKernel, match="no CUDA GPU"):  # the message itself must not touch CUDA
        kernels.require("fp8", "cuda")
    assert "no CUDA GPU" in kernels.unsupported_reason("bf16", "cuda")


def test_missing_bitsandbytes_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(kernels, "_bnb", lambda: None)
    with pytest.raises(kernels.UnsupportedKernel, match="bitsandbytes is not installed"):
        kernels.quantize("nf4", torch.randn(256, 512))


def test_inner_k_tiles():
    assert kernels.inner_k_tiles(4096) == 8 and kernels.inner_k_tiles(14336) == 8
    assert kernels.inner_k_tiles(576) == 4 and kernels.inner_k_tiles(96) == 2 and kernels.inner_k_tiles(40) == 0


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(128, 256)
        self.down = nn.Linear(256, 128, bias=False)
        self.lm_head = nn.Linear(128, 64, bias=False)

    def forward(self, x):
        return self.lm_head(self.down(torch.relu(self.up(x))))


@pytest.mark.parametrize("fmt", ["int8_wo", "int8_w8a8", "int4_wo"])
def test_swap_and_restore_linears(fmt):
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(2, 3, 128)
    with torch.no_grad():
        ref = model(x)
        before = kernels.linear_bytes(model)
        originals = kernels.swap_linears(model, fmt, **({"group_size": 64} if fmt == "int4_wo" else {}))
        assert set(originals) == {"up", "down"}  # lm_head kept
        assert isinstance(model.up, kernels.QuantLinear) and isinstance(model.lm_head, nn.Linear)
        y = model(x)
        assert y.shape == ref.shape and kernels.relative_error(y, ref) < 0.1
        assert kernels.linear_bytes(model) < before
        kernels.restore_linears(model, originals)
        assert torch.equal(model(x), ref)
