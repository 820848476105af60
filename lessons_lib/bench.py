"""Timing done right, device ceilings and roofline arithmetic (lesson 08 builds on it).

Every figure comes with its spread: a median and an interquartile range (IQR) over many timed runs, after
warm-up runs, with the device synchronized (CUDA events on a GPU). Rates (GB/s, FLOP/s) are computed per
run, so their spread is the spread of the rate itself.
"""
from __future__ import annotations

import json
import re
import statistics
import time
from typing import Callable, Sequence

import torch

from . import resource, validate


def _positive(**values: float) -> None:
    for name, v in values.items():
        validate.number(v, name, 0, lo_open=True)


def _timer_args(fn, warmup: int, repeats: int, inner: int) -> None:
    if not callable(fn):
        raise validate.BadInput(f"fn must be a function to time (e.g. lambda: layer(x)), got {type(fn).__name__}")
    warmup = validate.integer(warmup, "warmup", lo=0)
    repeats = validate.integer(repeats, "repeats", lo=4, todo="repeats must be at least 4 to report a spread")
    inner = validate.integer(inner, "inner", lo=1)


def summarize(samples: Sequence[float]) -> tuple[float, float]:
    """Median and interquartile range of a list of numbers (at least 4)."""
    if isinstance(samples, (str, bytes)) or not hasattr(samples, "__len__") or len(samples) < 4:
        raise validate.BadInput("repeats must be at least 4 to report a spread: pass a list of 4 or more numbers")
    for i, v in enumerate(samples):
        validate.number(v, f"samples[{i}]", 0, todo="timings are seconds >= 0")
    q = statistics.quantiles(samples, n=4)
    return statistics.median(samples), q[2] - q[0]


def _on_cuda(device: str | torch.device | None) -> bool:
    if device is None:
        return torch.cuda.is_available()
    return validate.device(device).type == "cuda"  # CUDA asked of a CPU-only torch: a clear error, before any timing


def _cuda_samples(fn: Callable[[int], object], warmup: int, repeats: int, inner: int) -> list[float]:
    """Seconds per call, from CUDA events around `inner` back-to-back calls; fn(i) gets the call index."""
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    pairs = []
    for r in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(inner):
            fn(r * inner + i)
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return [s.elapsed_time(e) / 1e3 / inner for s, e in pairs]


def _host_samples(fn: Callable[[int], object], warmup: int, repeats: int, inner: int) -> list[float]:
    """Seconds per call, from the host clock around `inner` back-to-back calls (CPU work is synchronous)."""
    for i in range(warmup):
        fn(i)
    samples = []
    for r in range(repeats):
        start = time.perf_counter()
        for i in range(inner):
            fn(r * inner + i)
        samples.append((time.perf_counter() - start) / inner)
    return samples


def samples(fn: Callable[[int], object], warmup: int = 3, repeats: int = 20, inner: int = 1,
            device: str | torch.device | None = None) -> list[float]:
    """Seconds per call of fn(i) over `repeats` timed runs; CUDA events on a GPU, the host clock on a CPU."""
    _timer_args(fn, warmup, repeats, inner)
    timer = _cuda_samples if _on_cuda(device) else _host_samples
    return timer(fn, warmup, repeats, inner)


def time_call(fn: Callable[[], object], warmup: int = 3, repeats: int = 20,
              device: str | torch.device | None = None) -> tuple[float, float]:
    """Median and interquartile range, in seconds, of fn() over `repeats` runs after `warmup` runs."""
    _timer_args(fn, warmup, repeats, 1)
    return summarize(samples(lambda i: fn(), warmup, repeats, 1, device))


def time_rotating(fn: Callable, args_list: Sequence[tuple], warmup: int = 3, repeats: int = 20, inner: int = 1,
                  device: str | torch.device | None = None) -> tuple[float, float]:
    """Median and IQR (seconds) of fn(*args), cycling through args_list so no run finds its data in cache."""
    if isinstance(args_list, (str, bytes)) or not hasattr(args_list, "__len__") or not args_list:
        raise validate.BadInput("args_list needs at least one argument tuple")
    _timer_args(fn, warmup, repeats, inner)
    n = len(args_list)
    return summarize(samples(lambda i: fn(*args_list[i % n]), warmup, repeats, inner, device))


def graph_samples(fn: Callable, args_list: Sequence[tuple], repeats: int = 20, warmup: int = 2) -> list[float]:
    """Seconds per call of fn(*args) with launch overhead removed: a CUDA graph replays one pass over args_list."""
    validate.device("cuda", "graph_samples' device (CUDA graphs)")
    if isinstance(args_list, (str, bytes)) or not hasattr(args_list, "__len__") or not args_list:
        raise validate.BadInput("args_list needs at least one argument tuple")
    _timer_args(fn, warmup, repeats, 1)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the capture stream (lazy init, library workspaces)
        for args in list(args_list)[:2]:
            fn(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for args in args_list:
            fn(*args)
    secs = samples(lambda i: graph.replay(), warmup, repeats, 1, "cuda")
    return [s / len(args_list) for s in secs]


def adaptive_repeats(seconds_per_call: float, budget_s: float = 0.25, lo: int = 8, hi: int = 200) -> int:
    """How many timed repeats fit in budget_s, clamped to [lo, hi]."""
    validate.number(seconds_per_call, "seconds_per_call", 0, todo="a time per call is >= 0 (0: too short for the clock)")
    _positive(budget_s=budget_s)
    if validate.integer(lo, "lo", lo=1) > validate.integer(hi, "hi", lo=1):
        raise validate.BadInput(f"lo ({lo}) must not exceed hi ({hi})")
    if seconds_per_call <= 0:
        return hi
    return int(max(lo, min(hi, budget_s / seconds_per_call)))


def rate(work: float, secs: Sequence[float]) -> tuple[float, float]:
    """Median and IQR of work / seconds over timed runs (e.g. bytes -> bytes/s)."""
    _positive(work=work)
    if isinstance(secs, (str, bytes)) or not hasattr(secs, "__iter__"):
        raise validate.BadInput(f"secs must be a list of timed seconds, got {secs!r}")
    for i, s in enumerate(secs):
        validate.number(s, f"secs[{i}]", 0, lo_open=True)
    return summarize([work / s for s in secs])


def synchronize(device: str | torch.device | None = None) -> None:
    """Wait for the device to finish queued work (no-op on a CPU)."""
    if _on_cuda(device):
        torch.cuda.synchronize()


class Budget:
    """A run's wall-clock budget, checked between measurements (cooperative: nothing is interrupted), and its skips."""

    def __init__(self, seconds: float, start: float | None = None, log: Callable[[str], None] = print):
        self.seconds, self.log, self.skipped = seconds, log, []
        self.start = time.monotonic() if start is None else start

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.start

    def left(self) -> float:
        """Seconds left before the deadline (negative once it passed)."""
        return self.seconds - self.elapsed()

    def skip(self, what: str, why: str, for_budget: bool = False) -> None:
        """Record (and log) a measurement that was not made, and why."""
        self.skipped.append({"what": what, "why": why, "for_budget": for_budget})
        self.log(f"-- skipped {what}: {why}")

    def allows(self, what: str, need_s: float) -> bool:
        """True if need_s seconds are left; otherwise record `what` as skipped for the budget."""
        if self.left() >= need_s:
            return True
        self.skip(what, f"{self.left():.0f} s left of the budget, it wants {need_s:.0f} s", for_budget=True)
        return False


# ----------------------------------------------------------------------------------------------- ceilings
def measure_bandwidth(device: str | torch.device = "cpu", nbytes: int = 256 * 2**20, repeats: int = 20) -> dict:
    """Memory bandwidth from a large device-to-device copy: bytes read + bytes written per second."""
    device = validate.device(device)
    nbytes = validate.integer(nbytes, "nbytes", lo=4096)
    n = nbytes // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    secs = samples(lambda i: dst.copy_(src), warmup=3, repeats=repeats, device=device)
    gbs, iqr = rate(2 * n * 4 / 1e9, secs)
    return {"gb_per_s": gbs, "gb_per_s_iqr": iqr, "bytes_copied": n * 4, "counted": "read + written",
            "median_s": statistics.median(secs)}


def measure_read_bandwidth(device: str | torch.device = "cpu", nbytes: int = 256 * 2**20, repeats: int = 20) -> dict:
    """Streaming-read bandwidth from a large sum reduction: bytes read per second, what decode does to its weights."""
    device = validate.device(device)
    nbytes = validate.integer(nbytes, "nbytes", lo=4096)
    n = nbytes // 4
    src = torch.rand(n, device=device)
    secs = samples(lambda i: src.sum(), warmup=3, repeats=repeats, device=device)
    gbs, iqr = rate(n * 4 / 1e9, secs)
    return {"gb_per_s": gbs, "gb_per_s_iqr": iqr, "bytes_read": n * 4, "counted": "read (sum reduction)",
            "median_s": statistics.median(secs)}


def _matmul_fn(device: torch.device, dtype: str, n: int) -> Callable[[int], object]:
    """A closure running one n x n x n matmul of the given kind on prepared operands."""
    if dtype == "int8":
        a = torch.randint(-64, 64, (n, n), dtype=torch.int8, device=device)
        b = torch.randint(-64, 64, (n, n), dtype=torch.int8, device=device)
        return lambda i: torch._int_mm(a, b.t())
    if dtype == "fp8":
        a = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
        b = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
        one = torch.ones((), device=device)
        return lambda i: torch._scaled_mm(a, b.t(), one, one, out_dtype=torch.bfloat16, use_fast_accum=True)
    tdtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a = torch.randn(n, n, device=device, dtype=tdtype)
    b = torch.randn(n, n, device=device, dtype=tdtype)
    return lambda i: a @ b


def measure_matmul_peak(device: str | torch.device = "cpu", dtype: str = "bf16", n: int | None = None,
                        repeats: int = 10) -> dict:
    """Dense matmul rate (FLOP/s, or OP/s for int8) of an n x n x n product: fp32, bf16, fp16, int8, fp8."""
    from .kernels import require

    device = validate.device(device)
    validate.choice(dtype, "matmul dtype", ("fp32", "bf16", "fp16", "int8", "fp8"))
    if n is not None:
        n = validate.integer(n, "n", lo=16)
    n = n or (8192 if device.type == "cuda" else 512)  # 512 on a CPU: bf16 without native support runs at ~1 GFLOP/s
    if dtype in ("int8", "fp8"):  # the same capability rules as the weight formats that use these kernels
        require({"int8": "int8_w8a8", "fp8": "fp8_w8a8"}[dtype], device, n, n)
    fn = _matmul_fn(device, dtype, n)
    secs = samples(fn, warmup=2, repeats=repeats, device=device)
    flops, iqr = rate(2 * n**3, secs)
    note = "TF32 off (true fp32)" if dtype == "fp32" and device.type == "cuda" else ""
    return {"dtype": dtype, "n": n, "tflops": flops / 1e12, "tflops_iqr": iqr / 1e12,
            "median_s": statistics.median(secs), "note": note}


# Device names as torch reports them -> rows of the GPU table (resources/gpus.csv) (checked in this order; first match wins).
_GPU_PATTERNS = (("H100", "NVL", None), ("H100", "PCIE", "H100 PCIe"), ("H100", "", "H100 SXM"), ("H200", "", "H200"),
                 ("B200", "", "B200"), ("A100", "80GB", "A100 80GB"), ("A100", "", "A100 40GB"), ("A10G", "", "A10G"), ("A10", "", "A10"),
                 ("L40S", "", "L40S"), ("L4", "", "L4"), ("T4", "", "T4"), ("4090", "", "RTX 4090"),
                 ("3090", "", "RTX 3090"))


def committed(slug: str) -> dict:
    """Benchmark results of one device measured on the course machines, resources/bench/<slug>.json."""
    validate.text(slug, "slug", "e.g. 'nvidia-h200' or 'cpu-amd-epyc'")
    if "/" in slug or "\\" in slug or slug.startswith("."):
        raise validate.BadInput(f"slug must be a plain name such as 'nvidia-h200', got {slug!r}")
    path = resource("bench", f"{slug}.json")
    if not path.is_file():
        known = sorted(p.name[:-5] for p in resource("bench").iterdir() if p.name.endswith(".json"))
        raise FileNotFoundError(f"no committed results {slug}.json; committed ones: {known}")
    return json.loads(path.read_text())


def match_gpu(device_name: str) -> str | None:
    """The GPU-table name of a CUDA device ('NVIDIA H100 80GB HBM3' -> 'H100 SXM'), or None."""
    validate.text(device_name, "device_name", "pass torch.cuda.get_device_name()")
    name = device_name.upper()
    for key, extra, row in _GPU_PATTERNS:
        if re.search(rf"(?<![A-Z0-9]){key}(?![0-9])", name) and extra in name:
            return row
    return None


# ----------------------------------------------------------------------------------------------- roofline
def arithmetic_intensity(flops: float, bytes_moved: float) -> float:
    """FLOP per byte moved to or from memory."""
    _positive(flops=flops, bytes_moved=bytes_moved)
    return flops / bytes_moved


def attainable_flops(intensity: float, peak_flops: float, bandwidth: float) -> float:
    """Roofline: min(peak FLOP/s, bandwidth (bytes/s) x intensity (FLOP/byte))."""
    _positive(intensity=intensity, peak_flops=peak_flops, bandwidth=bandwidth)
    return min(peak_flops, bandwidth * intensity)


def roofline_time(flops: float, bytes_moved: float, peak_flops: float, bandwidth: float) -> float:
    """Least time (s) for work of `flops` moving `bytes_moved`: the slower of compute and memory."""
    _positive(flops=flops, bytes_moved=bytes_moved, peak_flops=peak_flops, bandwidth=bandwidth)
    return max(flops / peak_flops, bytes_moved / bandwidth)


def roofline_fraction(measured_s: float, flops: float, bytes_moved: float, peak_flops: float,
                      bandwidth: float) -> float:
    """Fraction of the roofline reached: roofline time / measured time (1.0 = at the roof)."""
    _positive(measured_s=measured_s)
    return roofline_time(flops, bytes_moved, peak_flops, bandwidth) / measured_s


def ridge_intensity(peak_flops: float, bandwidth: float) -> float:
    """Intensity (FLOP/byte) above which work is compute-bound rather than memory-bound."""
    _positive(peak_flops=peak_flops, bandwidth=bandwidth)
    return peak_flops / bandwidth


def gemm_flops(batch: int, out_features: int, in_features: int) -> int:
    """FLOPs of y = x @ W.T with x [batch, in] and W [out, in]: one multiply and one add per weight per row."""
    for name, v in (("batch", batch), ("out_features", out_features), ("in_features", in_features)):
        validate.integer(v, name, lo=1)
    return 2 * batch * out_features * in_features


def gemm_bytes(batch: int, out_features: int, in_features: int, weight_bytes: float, act_bytes: float = 2.0,
               out_bytes: float = 2.0) -> float:
    """Bytes moved by y = x @ W.T: the stored weight once, the input read, the output written."""
    for name, v in (("batch", batch), ("out_features", out_features), ("in_features", in_features)):
        validate.integer(v, name, lo=1)
    _positive(weight_bytes=weight_bytes, act_bytes=act_bytes, out_bytes=out_bytes)
    return weight_bytes + batch * in_features * act_bytes + batch * out_features * out_bytes
