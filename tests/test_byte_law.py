"""The byte law's measurements: read bandwidth, decode against its floor (eager and compiled), and the profile."""
import pytest
import torch

from lessons_lib import bench, kernels, throughput
from test_gptq import tiny_llama


def test_read_bandwidth_counts_bytes_read_once():
    r = bench.measure_read_bandwidth("cpu", nbytes=8 << 20, repeats=4)
    assert r["bytes_read"] == 8 << 20 and r["counted"].startswith("read")
    assert r["gb_per_s"] == pytest.approx(r["bytes_read"] / r["median_s"] / 1e9, rel=0.5)


def test_floors_use_the_read_bandwidth_when_measured_and_the_copy_otherwise():
    dec = {"results": [{"format": "fp32", "bytes_read_per_token": 4e9,
                        "batches": {"1": {"eager": {"tokens_per_s": 2.0}}}}]}
    copy_only = throughput.decode_floors(dec, {"bandwidth": {"gb_per_s": 20.0}})["fp32"]
    both = throughput.decode_floors(dec, {"bandwidth": {"gb_per_s": 20.0}, "read_bandwidth": {"gb_per_s": 40.0}})["fp32"]
    assert copy_only["floor_step_s"] == pytest.approx(0.2) and copy_only["floor_bandwidth"].startswith("copy")
    assert both["floor_step_s"] == pytest.approx(0.1) and both["fraction_of_floor"] == pytest.approx(0.2)


def test_decode_vs_floor_reports_each_format_against_its_own_floor():
    model = tiny_llama()
    rows = throughput.decode_vs_floor(model, ["fp32", "int8_weight_only"], read_bw=10e9, prompt=8, new_tokens=4,
                                      compiled=False, log=lambda s: None)
    fp32, int8 = rows
    assert fp32["format"] == "fp32" and fp32["bytes_ratio"] == 1 and fp32["eager_speedup"] == 1
    assert int8["bytes_read_per_token"] < fp32["bytes_read_per_token"] and int8["bytes_ratio"] > 1
    for r in rows:
        assert r["floor_s"] == pytest.approx(r["bytes_read_per_token"] / 10e9)
        assert r["eager_fraction_of_floor"] == pytest.approx(r["floor_s"] / r["eager"]["step_median_s"])
        assert "compiled" not in r
    assert all(isinstance(m, torch.nn.Linear) for m in kernels.decoder_linears(model).values())  # model untouched


def test_decode_profile_splits_the_step_and_measures_the_linear_kernels():
    model = tiny_llama()
    p = throughput.decode_profile(model, prompt=8, steps=2)
    assert set(p["ms"]) == {"linear kernels", "attention", "other torch ops", "Python, modules, dispatch"}
    assert p["ms"]["linear kernels"] > 0 and all(v >= 0 for v in p["ms"].values())
    assert sum(p["ms"].values()) >= 0.999 * p["step_ms"]  # the rest is what the ops leave of the wall time
    assert p["linear_bytes"] == kernels.linear_bytes(model) and p["linear_gb_per_s"] > 0


def test_benchmark_script_records_the_byte_law(tmp_path, monkeypatch):
    """The CPU preset's byte-law section, run through the quick path (tiny random model, no compile)."""
    import json

    from test_bench import _script

    s = _script()
    small = dict(shapes=[(256, 256)], batches=[1], decode_formats=["bf16"], decode_batches=[1], gemm_share=0.1)
    monkeypatch.setattr(s, "QUICK", {**s.QUICK, **small, "byte_law": ["bf16", "int8_weight_only"]})
    assert s.main(["--preset", "gpu", "--device", "cpu", "--quick", "--no-compile", "--threads", "1",
                   "--budget-s", "300", "--out", str(tmp_path)]) == 0
    r = json.loads(next(tmp_path.glob("*.json")).read_text())
    law = {row["format"]: row for row in r["decode"]["byte_law"]}
    assert set(law) == {"bf16", "int8_weight_only"} and law["int8_weight_only"]["bytes_ratio"] > 1
    assert 0 < law["bf16"]["eager_fraction_of_floor"] and "compiled" not in law["bf16"]
    assert r["ceilings"]["read_bandwidth"]["gb_per_s"] > 0
    assert s.PRESETS["cpu"]["byte_law"] == ["fp32", "bf16", "int8_weight_only", "int4_weight_only"]
