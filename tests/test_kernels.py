import pytest
import torch
from torch import nn

from lessons_lib import gemv  # noqa: F401  (first: it sets TRITON_INTERPRET before bitsandbytes imports Triton)
from lessons_lib import kernels, probing

CPU_FORMATS = [f for f in kernels.FORMATS if kernels.unsupported_reason(f, "cpu") is None]


@pytest.fixture(scope="module")
def case():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(256, 512, generator=gen) * 0.02, torch.randn(5, 512, generator=gen)


def test_every_format_but_missing_libraries_runs_on_this_cpu():
    assert {"fp32", "bf16", "fp16", "int8_weight_only", "int8_w8a8", "int4_weight_only", "fp8_w8a8"} <= set(CPU_FORMATS)


@pytest.mark.parametrize("fmt", CPU_FORMATS)
def test_kernel_agrees_with_float_reference(fmt, case):
    w, x = case
    qw = kernels.quantize(fmt, w, group_size=64 if fmt == "int4_weight_only" else None)
    y = qw(x.to(qw.act_dtype))
    assert y.shape == (5, 256)
    r = kernels.check(qw, x, w)
    assert r["passes"], r
    assert r["kernel_error"] <= kernels.FORMATS[fmt].tolerance
    # quantization error is bounded too: 4-bit formats lose most, 16-bit formats almost nothing
    assert r["error_vs_float"] < {"fp32": 1e-6, "bf16": 1e-2, "fp16": 1e-3}.get(fmt, 0.15)


@pytest.mark.parametrize("fmt", CPU_FORMATS)
def test_dequantized_weight_is_close_to_the_float_weight(fmt, case):
    w, _ = case
    qw = kernels.quantize(fmt, w)
    err = kernels.relative_error(qw.dequantize(), w)
    bits = kernels.FORMATS[fmt].bits
    assert err < {32: 1e-6, 16: 1e-2, 8: 0.05, 4: 0.15}[bits]


def test_int4_layout_matches_the_formula(case):
    w, x = case
    qw = kernels.quantize("int4_weight_only", w, group_size=64)
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
    int8 = kernels.quantize("int8_weight_only", w)
    assert int8.nbytes == n + 256 * int8.scale.element_size()  # one scale per row, in the activation dtype
    int4 = kernels.quantize("int4_weight_only", w, group_size=64)
    assert n / 2 <= int4.nbytes <= n / 2 + (n // 64) * 2 * 4 + 4096  # packed + scale and zero per group


def test_clone_has_its_own_storage(case):
    w, x = case
    for fmt in ("bf16", "int8_w8a8", "int4_weight_only"):
        qw = kernels.quantize(fmt, w)
        twin = qw.clone()
        names = qw.tensor_names
        assert all(getattr(qw, n).data_ptr() != getattr(twin, n).data_ptr() for n in names)
        assert torch.equal(qw(x.to(qw.act_dtype)), twin(x.to(qw.act_dtype)))


def test_probe_reports_every_format():
    r = probing.probe("cpu")
    assert set(r) == set(kernels.FORMATS)
    for fmt, v in r.items():
        assert "runs" in v and "native" in v
        assert v["runs"] == (fmt in CPU_FORMATS)
        if v["runs"]:
            assert v["passes"], (fmt, v)
            assert v["kernel"]
        else:
            assert v["reason"]
    assert r["fp32"]["native"] and not r["fp8_w8a8"]["native"]  # no CPU has FP8 arithmetic


def test_probe_table_rows():
    rows = probing.probe_table(probing.probe("cpu", out_features=64, in_features=128, batch=2))
    assert [r.fmt for r in rows] == list(kernels.FORMATS)


@pytest.mark.parametrize("fmt, shape, group, message", [
    ("int4_weight_only", (100, 512), 64, "multiple of 16, got 100"),
    ("int4_weight_only", (256, 512), 48, r"group sizes \[32, 64, 128, 256\], got 48"),
    ("int4_weight_only", (256, 96), 64, r"does not divide in_features=96: choose one that does, \[32\]"),
    ("int8_w8a8", (256, 512), 64, "has no groups"),
    ("fp8_w8a8", (100, 512), None, "multiples of 16"),
    ("nosuch", (256, 512), None, "unknown format"),
])
def test_clear_error_for_what_the_kernel_cannot_take(fmt, shape, group, message):
    with pytest.raises(kernels.UnsupportedKernel, match=message):
        kernels.quantize(fmt, torch.randn(*shape), group_size=group)


def _fake_gpu(monkeypatch, cc):
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cc)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")


def test_gpu_rules_read_compute_capability(monkeypatch):
    _fake_gpu(monkeypatch, (8, 0))  # an A100: no FP8
    assert kernels.unsupported_reason("fp8_w8a8", "cuda") == "fp8 _scaled_mm needs compute capability >= 8.9, found 8.0"
    assert kernels.unsupported_reason("int4_weight_only", "cuda") is None
    assert kernels.unsupported_reason("int8_w8a8", "cuda") is None
    with pytest.raises(kernels.UnsupportedKernel, match=r"fp8_w8a8 on Fake GPU: .*>= 8.9, found 8.0"):
        kernels.require("fp8_w8a8", "cuda")
    _fake_gpu(monkeypatch, (7, 5))  # a T4: no bf16 tensor cores, so no tinygemm
    assert "found 7.5" in kernels.unsupported_reason("int4_weight_only", "cuda")
    assert kernels.unsupported_reason("int8_w8a8", "cuda") is None
    _fake_gpu(monkeypatch, (7, 0))
    assert "found 7.0" in kernels.unsupported_reason("int8_w8a8", "cuda")
    _fake_gpu(monkeypatch, (9, 0))  # an H100: everything, within shape rules
    assert all(kernels.unsupported_reason(f, "cuda") is None for f in ("fp8_w8a8", "int4_weight_only", "int8_w8a8"))
    assert "multiple of 8" in kernels.unsupported_reason("int4_weight_only", "cuda", out_features=100)
    assert "multiples of 8" in kernels.unsupported_reason("int8_w8a8", "cuda", in_features=100)


def test_no_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.4")  # a CUDA build of torch on a machine without a GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(kernels.UnsupportedKernel, match="no CUDA GPU"):  # the message itself must not touch CUDA
        kernels.require("fp8_w8a8", "cuda")
    assert "no CUDA GPU" in kernels.unsupported_reason("bf16", "cuda")


def test_missing_bitsandbytes_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(kernels, "_bnb", lambda: None)
    with pytest.raises(kernels.UnsupportedKernel, match="bitsandbytes is not installed"):
        kernels.quantize("nf4", torch.randn(256, 512))


def test_inner_k_tiles():
    assert kernels.inner_k_tiles(4096) == 8 and kernels.inner_k_tiles(14336) == 8
    assert kernels.inner_k_tiles(576) == 4 and kernels.inner_k_tiles(96) == 2 and kernels.inner_k_tiles(40) == 0


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(128, 256)
        self.down = nn.Linear(256, 128, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block()])
        self.lm_head = nn.Linear(128, 64, bias=False)

    def forward(self, x):
        return self.lm_head(self.layers[0](x))

    def get_output_embeddings(self):  # how transformers models name their head; swap_linears keeps it
        return self.lm_head


@pytest.mark.parametrize("fmt", ["int8_weight_only", "int8_w8a8", "int4_weight_only"])
def test_swap_and_restore_linears(fmt):
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(2, 3, 128)
    with torch.no_grad():
        ref = model(x)
        before = kernels.linear_bytes(model)
        originals = kernels.swap_linears(model, fmt, **({"group_size": 64} if fmt == "int4_weight_only" else {}))
        assert set(originals) == {"layers.0.up", "layers.0.down"}  # lm_head kept
        assert isinstance(model.layers[0].up, kernels.QuantLinear) and isinstance(model.lm_head, nn.Linear)
        y = model(x)
        assert y.shape == ref.shape and kernels.relative_error(y, ref) < 0.1
        assert kernels.linear_bytes(model) < before
        kernels.restore_linears(model, originals)
        assert torch.equal(model(x), ref)


def test_every_format_is_one_registry_entry():
    for name, f in kernels.FORMATS.items():
        assert f.name == name and f.bits in (4, 8, 16, 32) and 0 < f.tolerance < 0.05
        assert f.storage in ("fp32", "bf16", "fp16", "int8", "int4", "nf4", "fp8")
        devices = ["cpu"] if f.is_float else ["cpu", "cuda"]  # a float format asks the GPU what it has
        for device in devices:
            native, what = f.notes(torch.device(device))
            assert isinstance(native, bool) and isinstance(what, str) and what


def test_old_format_names_say_their_new_name():
    with pytest.raises(kernels.UnsupportedKernel, match="'int4_wo' is now called 'int4_weight_only'"):
        kernels.quantize("int4_wo", torch.randn(256, 512))


def test_cuda_on_a_cpu_only_torch_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(kernels.UnsupportedKernel, match="CPU-only build: install a CUDA build of torch"):
        kernels.quantize("bf16", torch.randn(256, 512), device="cuda")


@pytest.mark.parametrize("bad, error, message", [
    (torch.full((256, 512), float("nan")), ValueError, "NaN or Inf"),
    (torch.tensor([[1.0, float("inf")]]).repeat(256, 256), ValueError, "NaN or Inf"),
    (torch.randint(-8, 8, (256, 512)), TypeError, "floating-point"),
    (torch.randn(2, 256, 512), ValueError, "2-D .out_features, in_features."),
    (torch.randn(512), ValueError, "2-D"),
])
def test_quantize_refuses_bad_weights(bad, error, message):
    for fmt in ("int8_w8a8", "int4_weight_only"):
        with pytest.raises(error, match=message):
            kernels.quantize(fmt, bad)


def test_int4_default_group_on_a_576_wide_layer_names_the_sizes_that_fit():
    with pytest.raises(kernels.UnsupportedKernel, match=r"group size 128 does not divide in_features=576: .*\[32, 64\]"):
        kernels.quantize("int4_weight_only", torch.randn(64, 576))


def test_int4_codes_reproduce_a_weight_on_the_q4_1_grid():
    gen = torch.Generator().manual_seed(1)  # every group of 32 holds at most 16 values lo + k * step (exact in bf16)
    lo = torch.randint(-8, 8, (64, 16, 1), generator=gen) / 64
    codes = torch.randint(0, 16, (64, 16, 32), generator=gen)
    codes[..., 0], codes[..., 1] = 0, 15
    w = (lo + codes / 256).reshape(64, 512)
    qw = kernels.quantize("int4_weight_only", w, group_size=32)
    assert torch.equal(qw.dequantize(), w)


def test_int8_w8a8_float_path_gives_the_int_mm_sums(monkeypatch):
    """Without AVX512 VNNI the W8A8 GEMM multiplies the same int8 codes on float units: the same int32 sums."""
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(96, 64, generator=gen), torch.randn(5, 64, generator=gen)
    q = kernels.quantize("int8_w8a8", w, act_dtype=torch.float32)
    monkeypatch.setenv("QHT_INT8_MM", "1")
    assert kernels.fast_int8_cpu()
    on_int_mm = q(x)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.delenv("QHT_INT8_MM")
    assert not kernels.fast_int8_cpu()
    assert torch.equal(q(x), on_int_mm)


def test_a_new_format_is_one_entry_that_reaches_probe_swap_and_planner(monkeypatch):
    """Adding a format touches one registry entry: here MXFP4 weights decoded to bf16 before a dense GEMM (the W4A16
    fallback a GPU without FP4 tensor cores runs), registered in a test only, since no real FP4 kernel runs here."""
    from lessons_lib import decide, microscaling

    class MXFP4Fallback(kernels.QuantWeight):
        tensor_names = ("packed", "scales")

        def __init__(self, w, act_dtype):
            super().__init__(w, act_dtype)
            self.enc = microscaling.encode(w, "mxfp4")
            self.packed, self.scales = microscaling.packed(self.enc), self.enc.scales

        def __call__(self, x):
            return torch.nn.functional.linear(x, self.dequantize().to(self.act_dtype))

        def dequantize(self):
            return microscaling.decode(self.enc)

    entry = kernels.Format("mxfp4_fallback", 4, 1e-2, "mxfp4", ("bf16", "bf16"), lambda w, act, g: MXFP4Fallback(w, act),
                           kernels._on((False, "MXFP4 decoded to bf16, then a bf16 GEMM"),
                                       (False, "MXFP4 decoded to bf16, then a bf16 GEMM")), groups=(32,))
    monkeypatch.setitem(kernels.FORMATS, entry.name, entry)
    assert probing.probe("cpu")[entry.name]["passes"]
    qw = kernels.quantize(entry.name, torch.randn(64, 128))
    assert qw.nbytes == 64 * 128 // 2 + 64 * 128 // 32  # 4.25 bits per weight: codes and one E8M0 byte per block
    model = Tiny().eval()
    kernels.swap_linears(model, entry.name)
    assert isinstance(model.layers[0].up, kernels.QuantLinear)
    assert decide.Candidate(entry.name, "H200", 1).storage == "mxfp4"
