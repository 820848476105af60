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


def test_blackwell_rows_load_with_their_fp4_rates():
    b200, rtx = hw.gpu("B200"), hw.gpu("RTX 5090")
    assert b200.compute_capability == 10.0 and b200.memory_gb == 180 and b200.rates["fp4_tflops"] == 9000
    assert rtx.compute_capability == 12.0 and rtx.memory_gb == 32 and rtx.bandwidth_gbs == 1792
    assert rtx.rates["fp4_tflops"] == 3352 / 2  # the product page's sparse AI TOPS, halved
    assert rtx.rates["bf16_tflops"] is None  # not verified: left empty, never guessed
    for g in (b200, rtx):
        assert "fp4" in g.tensor_formats and g.source.startswith("https://www.nvidia.com/")


def test_microscaling_bits_come_from_one_definition():
    from lessons_lib import microscaling

    for fmt in ("nvfp4", "mxfp4", "mxfp8"):
        assert hw.format_bits_per_weight(fmt) == microscaling.bits_per_weight(fmt), fmt
    assert (hw.format_bits_per_weight("nvfp4"), hw.format_bits_per_weight("mxfp4")) == (4.5, 4.25)
    assert hw.weight_bytes(1e9, "nvfp4") == 4.5e9 / 8
    assert hw.LLAMA3_70B.kv_bytes_per_token("mxfp4") == 2 * 80 * 8 * 128 * 4.25 / 8
    with pytest.raises(ValueError, match="fixes its blocks"):
        hw.format_bits_per_weight("nvfp4", 32)


def test_fp4_compute_needs_blackwell_and_falls_back_to_w4a16():
    kw = dict(n_gpus=1, batch=4096, context=16)
    for name in ("H100 SXM", "A100 80GB", "H200"):
        with pytest.raises(ValueError, match="no NVFP4 tensor cores.*W4A16"):
            hw.plan(hw.LLAMA3_8B, "nvfp4", name, compute="nvfp4", **kw)
        assert hw.default_compute("nvfp4", hw.gpu(name)) == "fp16"
        w4a16 = hw.plan(hw.LLAMA3_8B, "nvfp4", name, **kw)  # stored in 4.5 bits, multiplied in 16
        fp16 = hw.plan(hw.LLAMA3_8B, "fp16", name, **kw)
        assert w4a16.bound == "compute" and math.isclose(w4a16.step_ms, fp16.step_ms)
        assert w4a16.weights_gb == pytest.approx(fp16.weights_gb * 4.5 / 16)
    with pytest.raises(ValueError, match="no MXFP8 tensor cores"):  # Hopper's FP8 tensor cores take no block scales
        hw.plan(hw.LLAMA3_8B, "mxfp8", "H100 SXM", **kw)
    for name in ("B200", "RTX 5090"):
        assert hw.default_compute("nvfp4", hw.gpu(name)) == "nvfp4" and hw.has_tensor_cores(hw.gpu(name), "mxfp4")
    fp4 = hw.plan(hw.LLAMA3_8B, "nvfp4", "B200", **kw)
    fp8 = hw.plan(hw.LLAMA3_8B, "fp8", "B200", **kw)
    assert fp4.bound == fp8.bound == "compute" and math.isclose(fp8.step_ms / fp4.step_ms, 9000 / 4500)
    assert hw.gpu("B200").peak_flops("nvfp4") == 9000e12


def test_unknown_formats_are_refused_with_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown format 'nvfp3'.*'mxfp4'.*'nvfp4'"):
        hw.plan(hw.LLAMA3_8B, "nvfp3", "B200")
    with pytest.raises(ValueError, match=r"unknown format 'fp2'.*'nvfp4'"):
        hw.plan(hw.LLAMA3_8B, "nvfp4", "B200", compute="fp2")
