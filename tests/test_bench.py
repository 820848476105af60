import time

import pytest
import torch

from lessons_lib import bench


def test_known_sleep_is_measured():
    median, spread = bench.time_call(lambda: time.sleep(0.01), warmup=1, repeats=8)
    assert 0.009 < median < 0.03 and spread >= 0


def test_known_copy_scales_with_size():
    small, big = torch.empty(2**12), torch.empty(2**24)  # 4096x the bytes: overheads cannot hide it
    t_small, _ = bench.time_call(lambda: small.clone(), repeats=10)
    t_big, _ = bench.time_call(lambda: big.clone(), repeats=10)
    assert t_big > 5 * t_small


def test_too_few_repeats_refused():
    with pytest.raises(ValueError, match="at least 4"):
        bench.time_call(lambda: None, repeats=2)


def test_summarize_median_and_iqr():
    median, iqr = bench.summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert median == 3.0 and iqr == pytest.approx(3.0)  # quartiles 1.5 and 4.5 (exclusive method)


def test_inner_calls_are_divided_out():
    secs = bench.samples(lambda i: time.sleep(0.002), warmup=0, repeats=4, inner=5, device="cpu")
    assert all(0.0018 < s < 0.01 for s in secs)


def test_time_rotating_cycles_through_every_argument_set():
    seen = []
    bench.time_rotating(lambda k: seen.append(k), [(0,), (1,), (2,)], warmup=0, repeats=6)
    assert seen == [0, 1, 2, 0, 1, 2]


def test_time_rotating_needs_arguments():
    with pytest.raises(ValueError, match="at least one"):
        bench.time_rotating(lambda: None, [])


def test_rate_spread_comes_from_the_runs():
    gbs, iqr = bench.rate(8.0, [1.0, 2.0, 4.0, 8.0])
    assert gbs == pytest.approx(3.0) and iqr > 0


def test_adaptive_repeats_is_clamped():
    assert bench.adaptive_repeats(1.0, budget_s=0.25) == 8
    assert bench.adaptive_repeats(1e-9, budget_s=0.25) == 200
    assert bench.adaptive_repeats(0.01, budget_s=0.25, lo=4) == 25


def test_bandwidth_counts_read_and_written():
    r = bench.measure_bandwidth("cpu", nbytes=16 << 20, repeats=5)
    assert r["counted"] == "read + written" and r["bytes_copied"] == 16 << 20
    assert 0.1 < r["gb_per_s"] < 2000 and r["gb_per_s_iqr"] >= 0
    assert r["gb_per_s"] == pytest.approx(2 * r["bytes_copied"] / 1e9 / r["median_s"], rel=0.5)


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_matmul_peak_reports_a_positive_rate(dtype):
    r = bench.measure_matmul_peak("cpu", dtype, n=128, repeats=4)
    assert r["tflops"] > 0 and r["n"] == 128


def test_roofline_arithmetic():
    bw, peak = 1e12, 100e12  # 1 TB/s, 100 TFLOP/s: ridge at 100 FLOP/byte
    assert bench.ridge_intensity(peak, bw) == 100
    assert bench.attainable_flops(10, peak, bw) == 10e12  # memory-bound
    assert bench.attainable_flops(1000, peak, bw) == peak  # compute-bound
    assert bench.arithmetic_intensity(2e9, 1e9) == 2
    assert bench.roofline_time(1e12, 1e9, peak, bw) == pytest.approx(0.01)  # compute side wins
    assert bench.roofline_time(1e9, 1e9, peak, bw) == pytest.approx(1e-3)  # memory side wins
    assert bench.roofline_fraction(2e-3, 1e9, 1e9, peak, bw) == pytest.approx(0.5)


def test_gemm_counts():
    assert bench.gemm_flops(1, 4096, 4096) == 2 * 4096 * 4096
    # bf16 weight (2 bytes each) dominates a batch-1 GEMV; input and output add 2 bytes per element
    assert bench.gemm_bytes(1, 4096, 4096, 4096 * 4096 * 2) == 4096 * 4096 * 2 + 4096 * 2 + 4096 * 2


@pytest.mark.parametrize("name, row", [("NVIDIA H200", "H200"), ("NVIDIA H100 80GB HBM3", "H100 SXM"),
                                       ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA A100-SXM4-80GB", "A100 80GB"),
                                       ("NVIDIA A100-SXM4-40GB", "A100 40GB"), ("NVIDIA A10G", "A10G"),
                                       ("NVIDIA A10", "A10"), ("NVIDIA L4", "L4"), ("NVIDIA L40S", "L40S"),
                                       ("Tesla T4", "T4"), ("NVIDIA GeForce RTX 4090", "RTX 4090"),
                                       ("NVIDIA H100 NVL", None), ("NVIDIA L40", None), ("AMD EPYC", None)])
def test_match_gpu_finds_the_datasheet_row(name, row):
    from lessons_lib import hardware

    assert bench.match_gpu(name) == row
    if row is not None:
        assert hardware.gpu(row).name == row


# ----------------------------------------------------------------------------------------------- the script and its sections
def _script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("benchmark_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _decode_result(fmt, graph_tps, bytes_per_token):
    return {"format": fmt, "bytes_read_per_token": bytes_per_token,
            "batches": {"1": {"prefill": {"tokens_per_s": 1e4}, "eager": {"tokens_per_s": graph_tps / 4},
                              "graph": {"tokens_per_s": graph_tps}, "graph_over_eager": 4.0}}}


def test_decode_floors_and_targets():
    from lessons_lib import throughput as tp

    dec = {"results": [_decode_result("bf16", 200.0, 16e9), _decode_result("int4_weight_only", 450.0, 5e9),
                       _decode_result("fp8_w8a8", 330.0, 9e9), {"format": "nf4", "error": "boom"}]}
    ceil = {"bandwidth": {"gb_per_s": 4000.0}}
    dec["floors"] = tp.decode_floors(dec, ceil)
    assert dec["floors"]["bf16"]["floor_tokens_per_s"] == pytest.approx(250.0)  # 16 GB at 4 TB/s: 4 ms a token
    assert dec["floors"]["bf16"]["fraction_of_floor"] == pytest.approx(0.8)
    t = tp.decode_targets(dec)
    assert t["bf16_fraction_of_floor"] == {"measured": 0.8, "target": 0.7, "met": True}
    assert t["best_4bit_speedup"]["format"] == "int4_weight_only" and t["best_4bit_speedup"]["met"] is False  # 2.25x
    assert t["fp8_speedup"]["measured"] == pytest.approx(1.65) and t["fp8_speedup"]["met"] is True
    assert "nf4" not in t["speedup_vs_bf16_batch1"]


def test_targets_say_unknown_when_a_format_is_missing():
    from lessons_lib import throughput as tp

    t = tp.decode_targets({"results": [_decode_result("bf16", 200.0, 16e9)], "floors": {}})
    assert t["fp8_speedup"]["met"] is None and t["best_4bit_speedup"]["met"] is None
    assert t["bf16_fraction_of_floor"]["met"] is None


def test_script_and_throughput_helpers():
    from lessons_lib import throughput as tp

    assert _script().slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert tp.steps_that_fit(0.5, 64, 6.0) == 12 and tp.steps_that_fit(1e-3, 64, 6.0) == 64
    assert tp.steps_that_fit(5.0, 64, 6.0) == 8
    assert tp.strict_json({"a": [float("nan"), 1.0], 2: float("inf")}) == {"a": [None, 1.0], "2": None}
    assert tp.batch_cap("nf4", torch.device("cpu")) == 16 and tp.batch_cap("nf4", torch.device("cuda")) > 1e6
    assert tp.batch_cap("fp8_w8a8", torch.device("cpu"), decode=True) == 1


def test_budget_is_checked_between_measurements():
    logged = []
    budget = bench.Budget(10.0, log=logged.append)
    assert budget.allows("small", 1.0) and 9 < budget.left() <= 10
    assert not budget.allows("huge", 100.0)
    assert budget.skipped == [{"what": "huge", "why": budget.skipped[0]["why"], "for_budget": True}]
    budget.skip("capped", "a naive kernel")
    assert budget.skipped[-1]["for_budget"] is False and len(logged) == 2
    assert not bench.Budget(1.0, start=0.0).allows("anything", 0.0)  # started long ago: the deadline has passed


def test_crossover_batch_is_where_compute_time_reaches_memory_time():
    from lessons_lib import throughput as tp

    n = k = 4096  # bf16 weight, 2-byte activations, ridge 200 FLOP/byte: compute-bound from about batch 200
    b = tp.crossover_batch(n, k, n * k * 2, 2, peak_flops=200e12, bandwidth=1e12)
    flops = lambda m: bench.gemm_flops(m, n, k) / 200e12  # noqa: E731
    moved = lambda m: bench.gemm_bytes(m, n, k, n * k * 2, 2, 2) / 1e12  # noqa: E731
    assert flops(b) >= moved(b) and flops(b - 1) < moved(b - 1) and 150 < b < 250
    assert tp.crossover_batch(n, k, n * k / 2, 2, 200e12, 1e12) < b / 3  # 4-bit weights: compute-bound sooner


def test_gemm_point_reports_rates_and_roofline(tmp_path):
    from lessons_lib import kernels
    from lessons_lib import throughput as tp

    qw = kernels.quantize("fp32", torch.randn(64, 128))
    p = tp.gemm_point(tp.rotating_copies(qw, 4 * qw.nbytes), 2, 1e10, {"fp32": 1e11}, torch.device("cpu"), 0.01)
    assert p["format"] == "fp32" and p["copies"] == 4 and p["gb_per_s"] > 0 and p["tflops"] > 0
    assert 0 < p["fraction_of_roofline"] and p["bound"] in ("memory", "compute")


def test_script_summary_survives_partial_results(tmp_path):
    s = _script()
    run = s.Run(tmp_path, "test-device", budget_s=1e6)
    run.results.update(environment={"name": "Test"}, errors={"gemm": "trace"},
                       gemm=[{"format": "bf16", "out": 8, "in": 8, "batch": 1, "gb_per_s": 1.0, "tflops": 0.1}],
                       decode={"results": [{"format": "bf16", "error": "x"}]})
    with run.section("broken"):
        raise RuntimeError("this section fails, the run goes on")
    assert "RuntimeError" in run.results["errors"]["broken"]
    with run.section("too long", need_s=1e7) as ok:
        assert not ok
    assert run.results["skipped"][0]["what"] == "too long" and run.results["skipped"][0]["for_budget"]
    text = s.summary(run.results)
    assert "errors in: gemm, broken" in text and (tmp_path / "test-device.json").exists()
    run.close(text)


def test_script_quick_mode_runs_every_section_on_cpu(tmp_path):
    """The GPU preset's quick mode on this CPU: every section but compile, within its budget, into one JSON file."""
    import json

    s = _script()
    assert s.main(["--preset", "gpu", "--device", "cpu", "--quick", "--no-compile", "--threads", "1",
                   "--budget-s", "240", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*.json")
    r = json.loads(path.read_text())
    assert r["finished"] and r["quick"] and path.name.endswith("-quick.json") and not r["errors"]
    assert r["environment"]["collect_env"]["torch_version"] == torch.__version__
    assert r["ceilings"]["bandwidth"]["gb_per_s"] > 0 and r["probe"]["fp32"]["runs"]
    assert {p["format"] for p in r["gemm"] if "tflops" in p} >= {"fp32", "bf16"}
    decoded = {d["format"]: d for d in r["decode"]["results"]}
    assert "tokens_per_s" in decoded["bf16"]["batches"]["1"]["eager"] and "bf16" in r["decode"]["floors"]
    assert any(x["what"] == "compile" for x in r["skipped"]) and r["elapsed_s"] < 240  # ~25 s when quiet
