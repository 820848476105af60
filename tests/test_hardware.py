import math

import pytest

from lessons_lib import hardware as hw


def test_published_parameter_counts():
    assert hw.LLAMA3_70B.parameters == 70_553_706_496  # Meta-Llama-3-70B safetensors total
    assert hw.LLAMA3_8B.parameters == 8_030_261_248  # Meta-Llama-3-8B safetensors total
    assert hw.SMOLLM2_135M.parameters == 134_515_008


def test_kv_cache_per_token():
    assert hw.LLAMA3_70B.kv_bytes_per_token("fp16") == 2 * 80 * 8 * 128 * 2
    assert hw.LLAMA3_70B.kv_bytes_per_token("fp8") == 80 * 8 * 128 * 2


def test_bits_and_bytes():
    assert hw.format_bits_per_weight("int4", 128) == 4.125
    assert hw.format_bits_per_weight("int4", 64, zero_bits=16) == 4.5
    assert hw.weight_bytes(1e9, "fp16") == 2e9 and hw.weight_bytes(1e9, "nf4") == 0.5e9


def test_floors_and_roofline():
    a100 = hw.gpu("A100 80GB")
    assert math.isclose(hw.decode_step_floor_s(a100, 2, 140e9), 140e9 / (2 * 2039e9))
    assert math.isclose(hw.compute_floor_s(a100, 1, 1e9, 1, "int8"), 2e9 / 624e12)
    assert math.isclose(hw.ridge_intensity(a100, "fp16"), 312e12 / 2039e9)
    assert hw.attainable_flops(a100, "fp16", 1.0) == 2039e9  # bandwidth-bound
    assert hw.attainable_flops(a100, "fp16", 1e4) == 312e12  # compute-bound
    assert 0.99 < hw.gemm_intensity(1, 4096, 4096, "fp16") < 1.0  # a GEMV does ~1 FLOP per weight byte
    assert hw.gemm_intensity(512, 4096, 4096, "fp16") > 200


def test_memory_fit_and_cost():
    a100 = hw.gpu("A100 80GB")
    assert hw.gpus_needed(141e9, a100) == 2 and hw.gpus_needed(70e9, a100) == 1
    assert hw.kv_tokens_that_fit(a100, 1, 100e9, 1000) == 0
    assert hw.kv_tokens_that_fit(a100, 1, 70e9, 1e6) == 2000  # 72 GB usable - 70 GB
    assert math.isclose(hw.cost_per_month(2, 1.0), 1460)
    assert math.isclose(hw.cost_per_million_tokens(1, 3.6, 1000), 1.0)


def test_plan_and_max_batch():
    p = hw.plan(hw.LLAMA3_70B, "int4", "A100 80GB", batch=4)
    assert p.n_gpus == 1 and p.fits and p.bound == "memory" and math.isclose(p.tokens_per_s, 4000 / p.step_ms)
    big = hw.plan(hw.LLAMA3_8B, "fp8", "H100 SXM", n_gpus=8, batch=4096, context=16)
    assert big.bound == "compute"
    b = hw.max_batch(hw.LLAMA3_70B, "int4", "A100 80GB", 1, latency_ms=50)
    assert hw.plan(hw.LLAMA3_70B, "int4", "A100 80GB", n_gpus=1, batch=b).step_ms <= 50
    over = hw.plan(hw.LLAMA3_70B, "int4", "A100 80GB", n_gpus=1, batch=b + 1)
    assert over.step_ms > 50 or not over.fits


def test_gpu_table_rows_are_sourced_and_sane():
    for name in hw.gpu_names():
        g = hw.gpu(name)
        assert g.source.startswith("https://") and g.memory_gb > 0 and g.bandwidth_gbs > 0
        assert ("fp8" in g.tensor_formats) == (g.compute_capability >= 8.9), name
        for col, fmt in [("fp8_tflops", "fp8"), ("int4_tops", "int4"), ("fp4_tflops", "fp4")]:
            if g.rates[col] is not None:
                assert fmt in g.tensor_formats, (name, fmt)


def test_corrected_support_facts():
    """Common support-matrix claims, corrected: each fact from the datasheets in resources/gpus.csv."""
    assert hw.gpu("H100 SXM").rates["int4_tops"] is None and "int4" not in hw.gpu("H100 SXM").tensor_formats
    assert hw.gpu("A100 80GB").rates["int4_tops"] == 1248
    for ada in ["L4", "L40S", "RTX 4090"]:
        assert hw.gpu(ada).compute_capability == 8.9 and "fp8" in hw.gpu(ada).tensor_formats
    for ga102 in ["A10G", "RTX 3090"]:
        assert hw.gpu(ga102).compute_capability == 8.6 and {"bf16", "int4"} <= set(hw.gpu(ga102).tensor_formats)
    assert "fp4" in hw.gpu("B200").tensor_formats


def test_clear_errors():
    with pytest.raises(KeyError, match="unknown GPU 'V100'.*A100"):
        hw.gpu("V100")
    with pytest.raises(ValueError, match="unknown format 'int3'"):
        hw.weight_bytes(1e9, "int3")
    with pytest.raises(ValueError, match="parameters must be a positive number"):
        hw.weight_bytes(-5, "fp16")
    with pytest.raises(ValueError, match="batch must be a positive number"):
        hw.plan(hw.LLAMA3_8B, "fp16", "H100 SXM", batch=0)
    with pytest.raises(ValueError, match="lists no int4_tops rate"):
        hw.gpu("H100 SXM").peak_flops("int4")
    with pytest.raises(ValueError, match="group_size must be a positive integer"):
        hw.format_bits_per_weight("int4", 0)


def test_tensor_parallel_sizes_follow_the_heads():
    """vLLM's rule: TP divides the query heads; KV heads split evenly or are replicated (tp a multiple of them)."""
    assert hw.tensor_parallel_sizes(hw.LLAMA3_70B) == [1, 2, 4, 8, 16, 32, 64]  # 64 query, 8 KV heads
    assert hw.tensor_parallel_sizes(hw.SMOLLM2_135M) == [1, 3, 9]  # 9 query, 3 KV heads
    assert not any(hw.valid_tensor_parallel(hw.LLAMA3_70B, n) for n in (3, 5, 6, 7, 10))
    assert [hw.gpus_for_tensor_parallel(hw.LLAMA3_70B, n) for n in (3, 5, 7, 10)] == [4, 8, 8, 16]
    assert hw.parallel_layout(hw.LLAMA3_70B, 6) == (2, 3) and hw.parallel_layout(hw.LLAMA3_70B, 3) == (1, 3)


def test_plan_rounds_to_a_tensor_parallel_size_or_says_pipeline():
    for name in hw.gpu_names():
        for fmt in ("bf16", "int8", "int4"):
            p = hw.plan(hw.LLAMA3_70B, fmt, name)
            assert hw.valid_tensor_parallel(hw.LLAMA3_70B, p.n_gpus) and p.pipeline_parallel == 1, (name, fmt)
            assert p.fits and p.tensor_parallel == p.n_gpus
    t4 = hw.plan(hw.LLAMA3_70B, "bf16", "T4")  # 10 T4s would hold it; 16 is the next size the heads allow
    assert hw.gpus_needed(t4.weights_gb * 1e9 + t4.kv_gb * 1e9, hw.gpu("T4")) == 10 and t4.n_gpus == 16
    three = hw.plan(hw.LLAMA3_70B, "bf16", "A100 80GB", n_gpus=3)  # no TP size: one GPU per stage, in turn
    assert three.parallelism == "TP 1 x PP 3"
    one = hw.decode_step_floor_s(hw.gpu("A100 80GB"), 1, three.weights_gb * 1e9, three.kv_gb * 1e9) * 1e3
    assert math.isclose(three.step_ms, one) and three.usd_per_month == hw.cost_per_month(3, 2.0)


def test_weight_only_int4_computes_on_fp16_tensor_cores():
    """W4A16 unpacks its weights to the activation dtype: the compute floor uses FP16 rates, INT4 TOPS only W4A4."""
    kw = dict(n_gpus=1, batch=2048, context=16)
    w4a16 = hw.plan(hw.LLAMA3_8B, "int4", "A100 80GB", **kw)
    w4a4 = hw.plan(hw.LLAMA3_8B, "int4", "A100 80GB", compute="int4", **kw)
    fp16 = hw.plan(hw.LLAMA3_8B, "fp16", "A100 80GB", **kw)
    assert w4a16.bound == w4a4.bound == fp16.bound == "compute"
    assert math.isclose(w4a16.step_ms, fp16.step_ms) and math.isclose(w4a16.step_ms / w4a4.step_ms, 1248 / 312)
    with pytest.raises(ValueError, match="no INT4|lists no int4_tops"):  # Hopper has no INT4 tensor cores
        hw.plan(hw.LLAMA3_8B, "int4", "H100 SXM", compute="int4", **kw)
    assert hw.plan(hw.LLAMA3_8B, "int4", "H100 SXM", **kw).bound == "compute"  # W4A16 runs on H100's FP16 rate
