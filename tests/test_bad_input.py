"""Every public function of lessons_lib refuses bad input with a message that says what was wrong and what to do,
before any deep torch or transformers error: one table of cases per module, and a sweep over every function."""
import importlib
import inspect
import math
import pkgutil

import pytest
import torch

from lessons_lib import gemv  # noqa: F401  (first: it sets TRITON_INTERPRET before bitsandbytes imports Triton)
import lessons_lib
from lessons_lib import (activations, awq, bench, codebooks, data, decide, evaluate, formats, fp8, gptq, hardware,
                         kernels, kquants, microscaling, models, probing, quantize, results, smoothquant, throughput,
                         toolkit, validate)

NAN = float("nan")
CPU_ONLY = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def tiny():
    """A two-layer LLaMA with random weights (fast; shapes like the course model, scaled down)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


class FakeTokenizer:
    eos_token_id, bos_token_id = 0, None

    def __call__(self, text, return_tensors=None):
        ids = torch.arange(len(text.split())) % 60 + 1
        return type("Enc", (), {"input_ids": ids[None] if return_tensors else ids.tolist()})()


W = torch.randn(8, 64)
WINDOWS = torch.randint(0, 64, (2, 16))
BAD_TENSORS = {"a list": [[1.0, 2.0]], "NaN": torch.tensor([[1.0, NAN]]), "Inf": torch.tensor([[math.inf, 1.0]]),
               "integers": torch.ones(2, 2, dtype=torch.int64), "empty": torch.empty(0, 4)}

# (id, call, expected exception types, a phrase the message must hold)
CASES = [
    # validate: the shared wording
    ("validate.number bool", lambda: validate.number(True, "x"), validate.BadInput, "got True"),
    ("validate.number NaN", lambda: validate.number(NAN, "x"), validate.BadInput, "finite"),
    ("validate.integer fraction", lambda: validate.integer(1.5, "n"), validate.BadInput, "whole number"),
    ("validate.choice unknown", lambda: validate.choice("fp9", "format", ["fp8"]), KeyError, "choose one of"),
    ("validate.device tpu", lambda: validate.device("tpu"), validate.BadInput, "'cpu' or 'cuda'"),
    # models
    ("models.load_model empty id", lambda: models.load_model(""), validate.BadInput, "model_id"),
    ("models.load_model int dtype", lambda: models.load_model(None, dtype=torch.int8), validate.BadInput, "dtype"),
    ("models.load_model str dtype", lambda: models.load_model(None, dtype="float32"), validate.BadInput, "torch.dtype"),
    ("models.resolve_device garbage", lambda: models.resolve_device("gpu0"), validate.BadInput, "'cpu' or 'cuda'"),
    ("models.identity number", lambda: models.identity(3), validate.BadInput, "non-empty string"),
    ("models.q4_1 1-D", lambda: models.q4_1_grid_fraction(torch.randn(64)), validate.BadInput, "2-D"),
    ("models.q4_1 ints", lambda: models.q4_1_grid_fraction(torch.ones(2, 64, dtype=torch.int32)), validate.BadInput,
     "floating-point"),
    ("models.q4_1 block 0", lambda: models.q4_1_grid_fraction(W, 0), validate.BadInput, "block"),
    ("models.describe tuple", lambda: models.describe((1, 2)), validate.BadInput, "unpack"),
    ("models.storage_bytes str", lambda: models.storage_bytes("model"), validate.BadInput, "torch.nn.Module"),
    ("models.checkpoint_problem int", lambda: models.checkpoint_problem(3), validate.BadInput, "path"),
    # results
    ("results.path lesson 4", lambda: results.path(4), validate.BadInput, "two-digit"),
    ("results.record NaN", lambda: results.record("98", {"model": "m"}, ppl=NAN), validate.BadInput, "NaN"),
    ("results.committed unknown", lambda: results.committed("99"), LookupError, "99.json"),
    ("results.check_consistent list", lambda: results.check_consistent([1]), validate.BadInput, "dict"),
    # evaluate
    ("evaluate.perplexity list", lambda: evaluate.perplexity(torch.nn.Linear(2, 2), [[1, 2, 3]]), validate.BadInput,
     "2-D LongTensor"),
    ("evaluate.perplexity empty", lambda: evaluate.perplexity(torch.nn.Linear(2, 2), torch.empty(0, 8, dtype=torch.long)),
     validate.BadInput, "2-D LongTensor"),
    ("evaluate.perplexity 1-D", lambda: evaluate.perplexity(torch.nn.Linear(2, 2), torch.arange(8)), validate.BadInput,
     "2-D"),
    ("evaluate.perplexity float ids", lambda: evaluate.perplexity(torch.nn.Linear(2, 2), torch.rand(2, 8)),
     validate.BadInput, "token ids"),
    ("evaluate.perplexity negative ids", lambda: evaluate.perplexity(torch.nn.Linear(2, 2), -torch.ones(2, 8).long()),
     validate.BadInput, "negative"),
    ("evaluate.perplexity batch 0", lambda: evaluate.perplexity(torch.nn.Linear(2, 2), WINDOWS, batch_size=0),
     validate.BadInput, "batch_size"),
    ("evaluate.perplexity batch 1.5", lambda: evaluate.perplexity(torch.nn.Linear(2, 2), WINDOWS, batch_size=1.5),
     validate.BadInput, "batch_size"),
    ("evaluate.perplexity progress str", lambda: evaluate.perplexity(torch.nn.Sequential(torch.nn.Linear(2, 2)), WINDOWS, progress="no"),
     validate.BadInput, "True or False"),
    ("evaluate.perplexity tuple model", lambda: evaluate.perplexity((None, None), WINDOWS), validate.BadInput, "unpack"),
    ("evaluate.bits_per_byte a string", lambda: evaluate.bits_per_byte(torch.nn.Linear(2, 2), FakeTokenizer(), "text"),
     validate.BadInput, "list"),
    ("evaluate.bits_per_byte empty doc", lambda: evaluate.bits_per_byte(torch.nn.Linear(2, 2), FakeTokenizer(), [""]),
     validate.BadInput, "non-empty"),
    ("evaluate.lm_eval_text no folder", lambda: evaluate.lm_eval_text("/nonexistent-qht", ["a doc"]), validate.BadInput,
     "config.json"),
    # data
    ("data.load_text unknown", lambda: data.load_text("wikipedia"), KeyError, "unknown text set"),
    ("data.load_text number", lambda: data.load_text(3), ValueError, "text set"),
    ("data.token_windows fraction", lambda: data.token_windows(FakeTokenizer(), "calib", 1.5, 16), ValueError, "1.5"),
    ("data.token_windows bool", lambda: data.token_windows(FakeTokenizer(), "calib", True, 16), ValueError, "True"),
    ("data.token_windows no tokenizer", lambda: data.token_windows(object(), "calib", 1, 16), ValueError, "tokenizer"),
    ("data.check_windows floats", lambda: data.check_windows(torch.rand(16, 32)), ValueError, "token ids"),
    ("data.check_windows bools", lambda: data.check_windows(torch.ones(16, 32, dtype=torch.bool)), ValueError, "token ids"),
    ("data.check_windows few", lambda: data.check_windows(torch.ones(1, 3, dtype=torch.long)), ValueError, "too few"),
    ("data.documents zero", lambda: data.documents("calib", 0), ValueError, "n_docs"),
    # quantize
    ("quantize.rtn_bits_per_weight 0 bits", lambda: quantize.rtn_bits_per_weight(0, "tensor", (4, 4)), ValueError, "bits"),
    ("quantize.rtn_bits_per_weight bad shape", lambda: quantize.rtn_bits_per_weight(4, "tensor", (4,)), ValueError,
     "shape"),
    ("quantize.storage_bits 0", lambda: quantize.storage_bits(0), ValueError, "code_bits"),
    ("quantize.quantize_rtn bool bits", lambda: quantize.quantize_rtn(W, True), ValueError, "bits"),
    ("quantize.quantize_rtn float bits", lambda: quantize.quantize_rtn(W, 4.0), ValueError, "bits"),
    ("quantize.quantize_rtn clip NaN", lambda: quantize.quantize_rtn(W, 8, clip=NAN), ValueError, "clip"),
    ("quantize.quantize_rtn clip 0", lambda: quantize.quantize_rtn(W, 8, clip=0), ValueError, "clip"),
    ("quantize.quantize_rtn group 1.5", lambda: quantize.quantize_rtn(W, 4, "group", 1.5), ValueError, "group_size"),
    ("quantize.quantize_rtn group 3d", lambda: quantize.quantize_rtn(torch.randn(2, 2, 8), 4, "group", 4), ValueError, "2-D"),
    ("quantize.error_stats shapes", lambda: quantize.error_stats(W, W[:2]), ValueError, "same shape"),
    ("quantize.fake_quant symmetric str", lambda: quantize.fake_quant(W, 8, symmetric="yes"), ValueError, "True or False"),
    # formats
    ("formats.get unknown", lambda: formats.get("fp6"), KeyError, "unknown format"),
    ("formats.decode bool", lambda: formats.get("fp8_e4m3").decode(True), ValueError, "pattern"),
    ("formats.encode str", lambda: formats.get("fp8_e4m3").encode("1.0"), ValueError, "number"),
    ("formats.round object", lambda: formats.get("fp16").round(object()), TypeError, "floating-point"),
    ("formats.torch_round_trip name", lambda: formats.torch_round_trip(torch.ones(2), "fp16"), ValueError, "FloatFormat"),
    # fp8
    ("fp8.cast ints", lambda: fp8.cast(torch.ones(2, dtype=torch.int32)), TypeError, "floating-point"),
    ("fp8.cast NaN", lambda: fp8.cast(torch.tensor([NAN])), ValueError, "NaN"),
    ("fp8.scales granularity", lambda: fp8.scales(W, "e4m3", "channel"), KeyError, "granularity"),
    ("fp8.scales block 0", lambda: fp8.scales(W, "e4m3", "block", 0), ValueError, "block"),
    ("fp8.quantize scale 0", lambda: fp8.quantize(W, scale=0.0), ValueError, "scale"),
    ("fp8.quantize scale negative tensor", lambda: fp8.quantize(W, scale=-torch.ones(1)), ValueError, "positive"),
    ("fp8.range_report scale NaN", lambda: fp8.range_report(W, scale=NAN), ValueError, "scale"),
    ("fp8.max_value unknown", lambda: fp8.max_value("e3m4"), KeyError, "FP8 format"),
    # gptq
    ("gptq.hessian 1-D", lambda: gptq.hessian(torch.randn(8)), ValueError, "2-D or 3-D"),
    ("gptq.rtn 1-D", lambda: gptq.rtn(torch.randn(64)), ValueError, "2-D"),
    ("gptq.rtn group not dividing", lambda: gptq.rtn(W, 4, 48), ValueError, "does not divide"),
    ("gptq.rtn group 0", lambda: gptq.rtn(W, 4, 0), ValueError, "group_size"),
    ("gptq.gptq_quantize damp 1", lambda: gptq.gptq_quantize(W, torch.eye(64), 4, 64, damp=1.0), ValueError, "damp"),
    ("gptq.gptq_quantize damp NaN", lambda: gptq.gptq_quantize(W, torch.eye(64), 4, 64, damp=NAN), ValueError, "damp"),
    ("gptq.gptq_quantize NaN Hessian", lambda: gptq.gptq_quantize(W, torch.full((64, 64), NAN)), ValueError, "NaN"),
    ("gptq.output_error shapes", lambda: gptq.output_error(W, W, torch.randn(4, 32)), ValueError, "input features"),
    ("gptq.quantize_model no decoder", lambda: gptq.quantize_model(torch.nn.Linear(2, 2), WINDOWS), ValueError,
     "decoder"),
    # awq
    ("awq.grid_points 2", lambda: awq.grid_points(2), ValueError, "at least 3"),
    ("awq.grid_points fraction", lambda: awq.grid_points(4.5), ValueError, "n_grid"),
    ("awq.candidate_scales alpha 2", lambda: awq.candidate_scales(torch.ones(4), torch.ones(4), 2.0, True), ValueError,
     "alpha"),
    ("awq.keep_channels out of range", lambda: awq.keep_channels(W, torch.tensor([64]), 4, 64), ValueError,
     "column indices"),
    ("awq.keep_channels float index", lambda: awq.keep_channels(W, torch.tensor([1.0]), 4, 64), ValueError, "integer"),
    ("awq.clip ratios count", lambda: awq.clip(W, torch.ones(3), 64), ValueError, "ratios"),
    ("awq.layer_mappings linear", lambda: awq.layer_mappings(torch.nn.Linear(2, 2)), ValueError, "decoder layer"),
    # smoothquant
    ("smoothquant.check_alpha 1.5", lambda: smoothquant.check_alpha(1.5), ValueError, r"\[0, 1\]"),
    ("smoothquant.check_alpha bool", lambda: smoothquant.check_alpha(True), ValueError, "alpha"),
    ("smoothquant.check_alpha NaN", lambda: smoothquant.check_alpha(NAN), ValueError, "alpha"),
    ("smoothquant.smoothing_factors shapes", lambda: smoothquant.smoothing_factors(torch.ones(3), torch.ones(4), 0.5),
     ValueError, "one statistic per input channel"),
    ("smoothquant.weight_absmax empty", lambda: smoothquant.weight_absmax([]), ValueError, "non-empty list"),
    ("smoothquant.w8a8 int act", lambda: smoothquant.w8a8(torch.nn.Sequential(torch.nn.Linear(2, 2)), act_dtype=torch.int8), ValueError,
     "act_dtype"),
    # activations
    ("activations.channel_absmax list", lambda: activations.channel_absmax([1.0, 2.0]), ValueError, "torch.Tensor"),
    ("activations.capture_inputs no names", lambda: activations.capture_inputs(torch.nn.Linear(2, 2), [], WINDOWS),
     ValueError, "non-empty list"),
    ("activations.run_with_input_hooks unknown", lambda: activations.run_with_input_hooks(
        torch.nn.Sequential(torch.nn.Linear(2, 2)), WINDOWS, {"nope": print}), KeyError, "no modules named"),
    # codebooks
    ("codebooks.check_bnb_4bit type", lambda: codebooks.check_bnb_4bit("nf5", 64), ValueError, "quant_type"),
    ("codebooks.check_bnb_4bit block", lambda: codebooks.check_bnb_4bit("nf4", 63), ValueError, "blocksize"),
    ("codebooks.quantize_codebook levels", lambda: codebooks.quantize_codebook(W, torch.tensor([0.0, 2.0])), ValueError,
     "[-1, 1]"),
    ("codebooks.quantize_codebook block 0", lambda: codebooks.quantize_codebook(W, codebooks.nf4_levels(), 0),
     ValueError, "block"),
    ("codebooks.lloyd_max 1 level", lambda: codebooks.lloyd_max(torch.randn(100), 1), ValueError, "n_levels"),
    ("codebooks.bnb_bits_per_weight 0", lambda: codebooks.bnb_bits_per_weight(0), ValueError, "blocksize"),
    # hardware: the planner
    ("hardware.plan fractional GPUs", lambda: hardware.plan(hardware.LLAMA3_70B, "fp16", "H100 SXM", n_gpus=1.5),
     ValueError, "whole"),
    ("hardware.plan FP8 without FP8 tensor cores", lambda: hardware.plan(hardware.LLAMA3_70B, "fp8", "A100 80GB"),
     ValueError, "no FP8 tensor cores"),
    ("hardware.plan batch 0", lambda: hardware.plan(hardware.LLAMA3_8B, "fp16", "H100 SXM", batch=0), ValueError, "batch"),
    ("hardware.plan bool GPUs", lambda: hardware.plan(hardware.LLAMA3_8B, "fp16", "H100 SXM", n_gpus=True), ValueError,
     "n_gpus"),
    ("hardware.plan shape dict", lambda: hardware.plan({"layers": 80}, "fp16", "H100 SXM"), ValueError, "ModelShape"),
    ("hardware.gpu unknown", lambda: hardware.gpu("V100"), KeyError, "unknown GPU"),
    ("hardware.gpu number", lambda: hardware.gpu(100), KeyError, "unknown GPU"),
    ("hardware.weight_bytes negative", lambda: hardware.weight_bytes(-1, "fp16"), ValueError, "positive"),
    ("hardware.kv_tokens_that_fit fraction", lambda: hardware.kv_tokens_that_fit(hardware.gpu("H200"), 1, 1e9, 1e5, 1.5),
     ValueError, "usable_fraction"),
    ("hardware.ModelShape zero layers", lambda: hardware.ModelShape("m", 0, 8, 8, 2, 1, 4, 10), ValueError, "layers"),
    ("hardware.peak_flops fp8 on T4", lambda: hardware.gpu("T4").peak_flops("fp8"), ValueError, "no FP8 tensor cores"),
    ("hardware.max_batch fractional", lambda: hardware.max_batch(hardware.LLAMA3_8B, "fp16", "H100 SXM", 0.5), ValueError,
     "n_gpus"),
    # bench and throughput: timers
    ("bench.time_call not callable", lambda: bench.time_call(3), ValueError, "function"),
    ("bench.time_call 3 repeats", lambda: bench.time_call(lambda: None, repeats=3), ValueError, "at least 4"),
    ("bench.summarize 2 samples", lambda: bench.summarize([1.0, 2.0]), ValueError, "at least 4"),
    ("bench.summarize NaN", lambda: bench.summarize([1.0, 2.0, NAN, 3.0]), ValueError, "finite"),
    ("bench.gemm_flops fraction", lambda: bench.gemm_flops(1.5, 4, 4), ValueError, "batch"),
    ("bench.committed path", lambda: bench.committed("../results/04"), ValueError, "plain name"),
    ("bench.attainable_flops 0", lambda: bench.attainable_flops(1.0, 0.0, 1.0), ValueError, "peak_flops"),
    ("bench.measure_matmul_peak dtype", lambda: bench.measure_matmul_peak("cpu", "fp64"), KeyError, "matmul dtype"),
    ("throughput.crossover_batch peak 0", lambda: throughput.crossover_batch(4, 4, 16, 2, 0.0, 1.0), ValueError,
     "peak_flops"),
    ("throughput.time_decode_graph cpu", lambda: throughput.time_decode_graph(torch.nn.Linear(2, 2), "cpu", 1, 4, 4, 8),
     ValueError, "CUDA graphs"),
    ("throughput.time_prefill batch 0", lambda: throughput.time_prefill(torch.nn.Linear(2, 2), "cpu", 0, 4, 8),
     ValueError, "batch"),
    # decide
    ("decide.Candidate unknown format", lambda: decide.Candidate("fp9", "H100 SXM", 1), KeyError, "format"),
    ("decide.Candidate fractional GPUs", lambda: decide.Candidate("fp8_w8a8", "H100 SXM", 1.5), ValueError, "whole"),
    ("decide.Candidate unknown GPU", lambda: decide.Candidate("fp8_w8a8", "H900", 1), KeyError, "unknown GPU"),
    ("decide.choose not rows", lambda: decide.choose("rows"), ValueError, "list"),
    ("evaluate.paired_interval NaN", lambda: evaluate.paired_interval(torch.tensor([1.0, NAN]), torch.ones(2)),
     validate.BadInput, "NaN"),
    ("evaluate.paired_interval None", lambda: evaluate.paired_interval(None, torch.ones(2)), validate.BadInput,
     "Scores.nll"),
    ("kquants.weighted_error shapes", lambda: kquants.weighted_error(W, W[:, :32]), validate.BadInput, "shape"),
    ("kquants.weighted_error NaN", lambda: kquants.weighted_error(W, torch.full_like(W, NAN)), validate.BadInput, "NaN"),
    ("kquants.weighted_error importance", lambda: kquants.weighted_error(W, W, torch.ones(3)), validate.BadInput,
     "per input channel"),
    ("codebooks.bnb_roundtrip 0-D", lambda: codebooks.bnb_roundtrip(torch.tensor(1.0)), validate.BadInput, "weight"),
    ("decide.kernel_efficiency dict", lambda: decide.kernel_efficiency({}), ValueError, "decode floors"),
    ("decide.assess efficiency 0", lambda: decide.assess(hardware.LLAMA3_70B, decide.Candidate("bf16", "H100 SXM", 2),
                                                         {"bf16": 0.0}, {"H100 SXM": 2.0}, {"bf16": 0.0}),
     ValueError, r"\(0, 1\]"),
    # toolkit
    ("toolkit.calibration_dataset floats", lambda: toolkit.calibration_dataset(torch.rand(2, 8)), ValueError, "token ids"),
    ("toolkit.reload missing", lambda: toolkit.reload("/nonexistent-qht-folder"), FileNotFoundError, "no saved checkpoint"),
    ("toolkit.load_on_kernels bad device", lambda: toolkit.load_on_kernels(3), ValueError, "folder path"),
    # microscaling: a code too wide for its bits would be packed silently wrong
    ("microscaling.pack_bits code 16 in 4 bits", lambda: microscaling.pack_bits(torch.tensor([16, 2]), 4), ValueError,
     "0..15"),
    ("microscaling.pack_bits odd row", lambda: microscaling.pack_bits(torch.tensor([1, 2, 3]), 4), ValueError,
     "multiple of 2"),
    ("microscaling.pack_bits floats", lambda: microscaling.pack_bits(torch.tensor([1.0, 2.0]), 4), ValueError,
     "integer tensor"),
    ("microscaling.unpack_bits ragged", lambda: microscaling.unpack_bits(torch.tensor([1, 2]), 6), ValueError,
     "multiple of 3"),
    # silent wrong answers a new user's probe found
    ("claims.check held as text", lambda: __import__("lessons_lib.claims").claims.Claims("x/y").check("a claim", "no"),
     ValueError, "True or False"),
    ("claims.check default_only text", lambda: __import__("lessons_lib.claims").claims.Claims("x/y").check(
        "a claim", True, default_only="yes"), ValueError, "default_only"),
    ("claims.compared not a comparison", lambda: __import__("lessons_lib.claims").claims.Claims("x/y").compared(
        "a claim", None, "beats"), ValueError, "evaluate.compare"),
    ("exercises.check_code no trials", lambda: __import__("lessons_lib.exercises").exercises.check_code(
        "02.quantize_per_row", lambda w, bits: w, trials=0), ValueError, "trials"),
    ("exercises.check_code unknown", lambda: __import__("lessons_lib.exercises").exercises.check_code("nope", abs),
     KeyError, "code exercises are"),
    ("models.decoder_linears skip text", lambda: models.decoder_linears(torch.nn.Sequential(torch.nn.Linear(2, 2)), skip="down_proj"),
     ValueError, "tuple of name parts"),
    ("evaluate.verdict low above high", lambda: evaluate.verdict(0.5, -0.5, 0.01), ValueError, "low <= high"),
    ("evaluate.verdict NaN", lambda: evaluate.verdict(NAN, 1.0, 0.01), ValueError, "low"),
    ("evaluate.verdict negative tolerance", lambda: evaluate.verdict(-1.0, 1.0, -0.1), ValueError, "tolerance"),
    ("quantize.quantize_rtn group_size per channel", lambda: quantize.quantize_rtn(W, 4, "channel", 16), ValueError,
     "granularity='group' only"),
    ("validate.token_ids int32", lambda: validate.token_ids(WINDOWS.int()), ValueError, "long"),
    ("validate.token_ids meta", lambda: validate.token_ids(torch.empty(2, 4, dtype=torch.long, device="meta")),
     ValueError, "meta"),
    ("validate.tensor meta", lambda: quantize.quantize_rtn(torch.empty(4, 8, device="meta")), ValueError, "meta"),
    ("kernels.unsupported_reason gpu", lambda: kernels.unsupported_reason("bf16", "gpu"), ValueError, "'cpu' or 'cuda'"),
    ("kernels.device_name gpu", lambda: kernels.device_name("gpu"), ValueError, "'cpu' or 'cuda'"),
    ("hardware.ModelShape tied text", lambda: hardware.ModelShape("m", 2, 64, 128, 4, 2, 16, 100, tied_embeddings="no"),
     ValueError, "tied_embeddings"),
    ("microscaling.element_values negative", lambda: microscaling.element_values(torch.tensor([-1]), "e2m1"), ValueError,
     "codes run from 0 to 15"),
    ("microscaling.e8m0_value 300", lambda: microscaling.e8m0_value(torch.tensor([300])), ValueError, "one byte"),
    ("throughput.random_llama no sizes", lambda: throughput.random_llama("cpu", {}), ValueError, "6.7B"),
    ("gptq.gptq_quantize asymmetric Hessian", lambda: gptq.gptq_quantize(W, torch.eye(64) + torch.triu(torch.ones(64, 64), 1)),
     ValueError, "symmetric"),
    ("quantize.absmax_scale qmax 0", lambda: quantize.absmax_scale(W, 0), ValueError, "qmax"),
    ("kquants.weighted_error zero importance", lambda: kquants.weighted_error(W, W * 0.9, torch.zeros(64)), ValueError,
     "zero for every input channel"),
    ("fp8.quantize scale of another shape", lambda: fp8.quantize(W, scale=torch.ones(3, 1)), ValueError, "broadcastable"),
    ("gptq.quantize_column scale of another shape", lambda: gptq.quantize_column(W, torch.ones(3, 1), torch.zeros(3, 1),
     -8, 7), ValueError, "broadcastable"),
    ("gemv.dequantize_int4 scale of another shape", lambda: gemv.dequantize_int4(torch.zeros(8, 32, dtype=torch.uint8),
     torch.ones(8, 3), torch.zeros(8, 2), 32), ValueError, r"shape \(8, 2\)"),
    ("gemv.default_config negative", lambda: gemv.default_config(-1, 64, 64), ValueError, "m must be"),
    ("kvcache.bits_per_value group 0", lambda: __import__("lessons_lib.kvcache").kvcache.bits_per_value("int4_kivi", 64, 0),
     ValueError, "group"),
    ("decide.choose text as a rule", lambda: decide.choose([{"fits": "False", "fast_enough": True,
     "accurate_enough": True, "$/M tokens": 1.0}]), ValueError, "True or False"),
    ("throughput.new_cache a Linear", lambda: throughput.new_cache(torch.nn.Linear(4, 4), 1, 8, "cpu"), ValueError,
     "causal LM"),
    ("gptq.gptq_quantize zero Hessian", lambda: gptq.gptq_quantize(W, torch.zeros(64, 64)), ValueError,
     "zero on its whole diagonal"),
    ("activations.input_channel_mean a Linear", lambda: activations.input_channel_mean(torch.nn.Linear(2, 2), WINDOWS),
     ValueError, "causal LM"),
    ("smoothquant.w8a8 a Linear", lambda: smoothquant.w8a8(torch.nn.Linear(2, 2)), ValueError, "causal LM"),
    ("kernels.quantize per_token text", lambda: kernels.quantize("int8_w8a8", torch.randn(64, 128), per_token="False"),
     ValueError, "True or False"),
    ("kernels.quantize act_half_range 1000", lambda: kernels.quantize("int8_w8a8", torch.randn(64, 128),
     act_half_range=1000), ValueError, "act_half_range"),
    ("kernels.quantize int8 act_dtype", lambda: kernels.quantize("fp32", torch.randn(64, 128), act_dtype=torch.int8),
     ValueError, "act_dtype"),
    ("kernels.quantize group_size 0", lambda: kernels.quantize("int4_weight_only", torch.randn(64, 128), group_size=0),
     ValueError, "group_size"),
    ("kernels.restore_linears unknown name", lambda: kernels.restore_linears(torch.nn.Sequential(torch.nn.Linear(2, 2)),
     {"nope": torch.nn.Linear(2, 2)}), ValueError, "swap_linears"),
    ("evaluate.paired_interval exp text", lambda: evaluate.paired_interval(torch.rand(8), torch.rand(8), exp="no"),
     ValueError, "True or False"),
    ("evaluate.compare ppl tolerance 5", lambda: evaluate.compare(evaluate.Scores("a", torch.rand(4, 8).double() + 2),
     evaluate.Scores("b", torch.rand(4, 8).double() + 1), tolerance=5), ValueError, "0.05 for 5%"),
    ("evaluate.record_values against absent", lambda: evaluate.record_values([evaluate.Scores("fp32", torch.rand(4, 8)
     .double() + 1)], against="fp16"), KeyError, "not among"),
    ("evaluate.record_values same label", lambda: evaluate.record_values([evaluate.Scores("a", torch.rand(4, 8).double()),
     evaluate.Scores("a", torch.rand(4, 8).double())]), ValueError, "share a label"),
    ("results.check_consistent shared text", lambda: results.check_consistent({"98": {"model": "a"}}, shared="model"),
     ValueError, "tuple of setting names"),
    ("gemv.dequantize_int4 group 48", lambda: gemv.dequantize_int4(gemv.pack_int4(torch.randint(0, 16, (8, 64))),
     torch.ones(8, 2), torch.zeros(8, 2), 48), ValueError, "must divide"),
    ("gemv.gemv_bytes batch 0", lambda: gemv.gemv_bytes("w4a16", 0, 64, 64), ValueError, "batch"),
    ("smoothquant.smoothing_factors negative", lambda: smoothquant.smoothing_factors(-torch.ones(4), torch.ones(4), 0.5),
     ValueError, ">= 0"),
    ("hardware.format_bits_per_weight fp16 group", lambda: hardware.format_bits_per_weight("fp16", 128), ValueError,
     "no scales"),
    ("data.cloze_items context 0", lambda: data.cloze_items("test", 2, context_chars=0), ValueError, "context_chars"),
    ("decide.production_efficiency 2", lambda: decide.production_efficiency({"bf16": 2.0}), ValueError, "fraction"),
    ("throughput.batch_cap unknown", lambda: throughput.batch_cap("nonsense", torch.device("cpu")), KeyError,
     "unknown format"),
    ("quantize.relative_error zero reference", lambda: quantize.relative_error(torch.ones(4), torch.zeros(4)), ValueError,
     "all zeros"),
    ("microscaling.element_codes NaN", lambda: microscaling.element_codes(torch.tensor([NAN]), "e2m1"), ValueError,
     "finite"),
    ("microscaling.bits_per_weight negative shape", lambda: microscaling.bits_per_weight("nvfp4", (-8, 64)), ValueError,
     "shape"),
    ("microscaling.scheme fractional block", lambda: microscaling.scheme("e2m1", 32.5, "e8m0"), ValueError, "whole number"),
    ("quantize.rtn_bits_per_weight channel with groups", lambda: quantize.rtn_bits_per_weight(4, "channel", (8, 64),
     group_size=32), ValueError, "granularity='group' only"),
    ("throughput.steps_that_fit negative", lambda: throughput.steps_that_fit(-1, 10, 5), ValueError, "seconds_per_step"),
    ("bench.summarize negative time", lambda: bench.summarize([1.0, 2.0, 3.0, -4.0]), ValueError, ">= 0"),
    ("evaluate.Scores.ppl_interval 95", lambda: evaluate.Scores("a", torch.rand(4, 8).double()).ppl_interval(95),
     ValueError, "0.95"),
    ("kernels.inner_k_tiles 0", lambda: kernels.inner_k_tiles(0), ValueError, "in_features"),
    ("kernels call float32 x on bf16", lambda: kernels.quantize("bf16", torch.randn(64, 128))(torch.randn(2, 128)),
     ValueError, "bfloat16"),
    ("kernels call wrong width", lambda: kernels.quantize("int8_w8a8", torch.randn(64, 128))(torch.randn(2, 64)),
     ValueError, "[batch, 128]"),
    ("kernels call 3-D x", lambda: kernels.quantize("fp32", torch.randn(64, 128))(torch.randn(1, 2, 128)), ValueError,
     "reshape(-1, 128)"),
    ("throughput.rate_iqr zero time", lambda: throughput.rate_iqr(1e9, {"q1_s": 0.0, "q3_s": 1e-3}), ValueError,
     "q1_s"),
    ("throughput.rate_iqr not a timing", lambda: throughput.rate_iqr(1e9, [1e-3]), ValueError, "bench.summarize"),
    ("throughput.set_cpu_threads -1", lambda: throughput.set_cpu_threads("cpu", -1), ValueError, "threads"),
    ("decide.choose empty", lambda: decide.choose([]), ValueError, "empty"),
    ("decide.int4_method empty", lambda: decide.int4_method({}), ValueError, "'04' and '05'"),
    ("bench.adaptive_repeats negative", lambda: bench.adaptive_repeats(-1), ValueError, ">= 0"),
    ("kvcache.bytes_per_token dict", lambda: __import__("lessons_lib.kvcache").kvcache.bytes_per_token({}, "fp16"),
     ValueError, "ModelShape"),
    ("formats int8 round NaN", lambda: formats.get("int8").round(torch.tensor([NAN])), ValueError, "no NaN"),
    ("models.load_model unknown offline model", lambda: models.load_model("offline:Nonexistent"), KeyError,
     "unknown offline model"),
    ("models.load_model config as text", lambda: models.load_model(None, quantization_config="int4"), ValueError,
     "BitsAndBytesConfig"),
    ("fp8.range_report scale of another shape", lambda: fp8.range_report(torch.randn(8, 128), scale=torch.ones(3)),
     ValueError, "broadcastable"),
    ("evaluate.recorded_scores empty", lambda: evaluate.recorded_scores({"window_nll": {"x": []}}, "x"), ValueError,
     "non-empty list"),
    ("throughput.decode_profile a Linear", lambda: throughput.decode_profile(torch.nn.Linear(4, 4)), ValueError,
     "causal LM"),
]


@pytest.mark.parametrize("call", [
    lambda m, w: activations.input_channel_absmax(m, w), lambda m, w: activations.input_channel_mean(m, w),
    lambda m, w: activations.capture_inputs(m, ["model.layers.0.mlp.down_proj"], w),
    lambda m, w: __import__("lessons_lib.architecture").architecture.layer_inputs(m, w),
    lambda m, w: evaluate.perplexity(m, w)], ids=["absmax", "mean", "capture", "layer_inputs", "perplexity"])
def test_token_ids_from_another_tokenizer_are_refused_before_the_embedding(call, tiny):
    with pytest.raises(validate.BadInput, match="vocabulary has 64"):
        call(tiny, torch.full((2, 16), 100))
    with pytest.raises(validate.BadInput, match="at most 64 positions"):  # beyond its positions: no silent numbers
        call(tiny, torch.ones(1, 100, dtype=torch.long))


def test_layer_names_beyond_the_model_and_float8_tensors(tiny):
    from lessons_lib import architecture

    with pytest.raises(validate.BadInput, match="has 2 decoder layers"):
        architecture.layer_index(tiny, "model.layers.99.mlp.up_proj")
    assert validate.all_finite(torch.ones(3).to(torch.float8_e4m3fn)) and validate.all_finite(torch.ones(0))
    assert not validate.all_finite(torch.tensor([1.0, NAN]).to(torch.float8_e4m3fn))
    assert math.isnan(microscaling.e8m0_value(torch.tensor([255])).item())  # the format's NaN, not Inf
    assert smoothquant.check_alpha(__import__("numpy").float32(0.5)) == 0.5  # a numpy number is a number


def test_model_only_functions_refuse_a_layer_and_folds_refuse_wrong_scales(tiny):
    from lessons_lib import architecture, kvcache

    with pytest.raises(validate.BadInput, match="causal LM"):
        with kvcache.cache(torch.nn.Linear(4, 4), "int8_per_token"):
            pass
    with pytest.raises(validate.BadInput, match="32 positive scales"):
        architecture.fold_into(tiny.model.norm, "norm", torch.ones(31))
    with pytest.raises(validate.BadInput, match="<= 0"):
        architecture.fold_into(tiny.model.norm, "norm", -torch.ones(32))
    with pytest.raises(validate.BadInput, match="non-empty string"):  # an empty context scored 1.0 before
        evaluate.cloze_accuracy(tiny, FakeTokenizer(), [{"context": "", "target": " word"}])
    with pytest.raises(validate.BadInput, match="no context or no target"):  # a target the tokenizer drops
        evaluate.cloze_accuracy(tiny, FakeTokenizer(), [{"context": "a b", "target": "c"}])
    assert evaluate.cloze_accuracy(tiny, FakeTokenizer(), [{"context": "a b", "target": " c"}]) in (0.0, 1.0)


def test_layer_functions_refuse_a_whole_model_a_missing_module_and_the_wrong_fold(tiny):
    from lessons_lib import architecture

    with pytest.raises(validate.BadInput, match="not the whole LlamaForCausalLM"):
        awq.layer_mappings(tiny)
    with pytest.raises(validate.BadInput, match="no module"):
        architecture.short_name(tiny, "model.layers.1.mlp.nonexistent")
    assert architecture.short_name(tiny, "model.layers.1.mlp.down_proj") == "L1.mlp.down_proj"
    with pytest.raises(validate.BadInput, match="2-D weight"):
        architecture.fold_into(tiny.model.norm, "linear", torch.ones(32))
    with pytest.raises(validate.BadInput, match="two tokens"):
        architecture.sizes(tiny, window=1)
    with pytest.raises(validate.BadInput, match="'cpu' or 'cuda'"):
        architecture.sizes(tiny, device="gpu")
    with pytest.raises(validate.BadInput, match="do not fit the model's 64"):
        throughput.time_prefill(tiny, "cpu", 1, 100, 64)
    with pytest.raises(validate.BadInput, match="vocabulary of 64"):
        throughput.time_decode_eager(tiny, "cpu", 1, 8, 4, 1000)
    with pytest.raises(validate.BadInput, match="do not fit"):
        throughput.decode_profile(tiny, prompt=63, steps=4)
    assert formats.get("int8").round(torch.tensor([-300.0, 2.5, 3.5, 200.0])).tolist() == [-128, 2, 4, 127]
    restored = tiny.model.layers[0].mlp.down_proj.weight.clone()
    with pytest.raises(validate.BadInput, match="shape"):
        with quantize.swapped_weights(tiny, lambda w: w.T):
            pass
    assert torch.equal(tiny.model.layers[0].mlp.down_proj.weight, restored)  # a refused swap leaves the model as it was


def test_a_failed_smoothing_leaves_the_model_untouched_and_whole_floats_work(tiny):
    import copy

    model = copy.deepcopy(tiny)
    stats = smoothquant.activation_absmax(model, torch.randint(0, 64, (8, 32)))
    stats.pop(sorted(stats)[-1])  # the last layer's statistics are missing
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(KeyError, match="no activation statistics"):
        smoothquant.smooth_model(model, stats, 0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    w = torch.randn(8, 128)  # a size computed with / (128 / 2 = 64.0) is taken as the int it is
    assert torch.equal(fp8.quantize(w, "e4m3", "block", 64.0), fp8.quantize(w, "e4m3", "block", 64))
    assert len(codebooks.lloyd_max(torch.randn(1000), 4.0, iters=2)) == 4
    assert microscaling.scheme("e2m1", 32.0, "e8m0") == microscaling.scheme("e2m1", 32, "e8m0")  # as validate.integer


def test_a_failed_oneshot_keeps_the_folder_it_would_replace(tiny, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("an earlier checkpoint")
    with pytest.raises(ValueError, match="tokenizer"):
        toolkit.oneshot(tiny, None, [], WINDOWS, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").is_file()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_message(case, tmp_path, monkeypatch):
    monkeypatch.setenv("QHT_CACHE", str(tmp_path))  # results cases must never touch the real cache
    _, call, error, phrase = case
    with pytest.raises(error) as caught:
        call()
    message = str(caught.value)
    assert phrase in message or __import__("re").search(phrase, message), message
    assert len(message) > 20, message  # a sentence, not a bare value


@pytest.mark.skipif(not CPU_ONLY, reason="needs a CPU-only machine")
@pytest.mark.parametrize("call", [
    lambda: bench.time_call(lambda: None, device="cuda"),
    lambda: bench.samples(lambda i: None, device="cuda"),
    lambda: bench.synchronize("cuda"),
    lambda: bench.measure_bandwidth("cuda"),
    lambda: bench.measure_matmul_peak("cuda", "bf16"),
    lambda: throughput.time_prefill(torch.nn.Linear(2, 2), "cuda", 1, 4, 8),
    lambda: throughput.time_decode_eager(torch.nn.Linear(2, 2), "cuda", 1, 4, 4, 8),
    lambda: throughput.environment("cuda"),
    lambda: models.resolve_device("cuda"),
    lambda: toolkit.reload(".", "cuda"),
    lambda: probing.probe("cuda"),
    lambda: kernels.compute_capability("cuda"),
    lambda: throughput.ceilings("cuda", 1 << 20, 64, ["fp32"]),
    lambda: throughput.gemm_sweep("cuda", [(64, 64)], [1], ["fp32"], {}, None, {}, None, 1.0, 1 << 20, 0.01),
    lambda: throughput.random_llama("cuda", {"hidden_size": 64}),
], ids=["time_call", "samples", "synchronize", "bandwidth", "matmul_peak", "prefill", "decode", "environment",
        "resolve_device", "toolkit.reload", "probe", "compute_capability", "ceilings", "gemm_sweep", "random_llama"])
def test_cuda_asked_of_a_cpu_only_torch_is_refused_up_front(call):
    with pytest.raises(RuntimeError, match="no CUDA GPU.*device='cpu'"):
        call()


@pytest.mark.parametrize("name", list(BAD_TENSORS))
def test_weight_functions_refuse_bad_tensors(name):
    bad = BAD_TENSORS[name]
    for fn in (lambda x: quantize.quantize_rtn(x, 8), lambda x: gptq.rtn(x, 4, None), lambda x: fp8.quantize(x),
               lambda x: codebooks.normalized_blocks(x, 2), lambda x: models.q4_1_grid_fraction(x, 2)):
        with pytest.raises((ValueError, TypeError)) as caught:
            fn(bad)
        assert "must be" in str(caught.value)


def test_model_functions_refuse_non_models_and_accept_the_tiny_model(tiny):
    assert models.describe(tiny)["layers"] == 2 and hardware.shape_of(tiny).layers == 2
    with pytest.raises(ValueError, match="decoder"):
        awq.quantize_model(torch.nn.Linear(2, 2), torch.randint(0, 64, (16, 16)))
    with pytest.raises(ValueError, match="vocabulary"):
        evaluate.perplexity(tiny, torch.full((1, 8), 64, dtype=torch.long))  # ids beyond the model's 64
    with pytest.raises(KeyError, match="no linear layers named"):
        with quantize.quantized_weights(tiny, 4, "channel", names=["model.layers.9.mlp.up_proj"]):
            pass
    with pytest.raises(ValueError, match="group_size"):
        gptq.quantize_model(tiny, torch.randint(0, 64, (16, 16)), 4, 48)  # 48 divides none of 32 / 64
    assert math.isfinite(evaluate.perplexity(tiny, torch.randint(0, 64, (1, 8)), progress=False))


# Every module of the library, found rather than listed, so a new module is swept too.
SWEPT = sorted(m.name for m in pkgutil.iter_modules(lessons_lib.__path__))
# Functions for which any object is a fine first argument (they report on it, or wrap it).
ANY_FIRST = {"throughput.guarded", "throughput.strict_json", "data.bos_id"}


@pytest.mark.parametrize("module", SWEPT)
def test_every_public_function_refuses_a_meaningless_first_argument(module, tmp_path, monkeypatch):
    """Called with object() as first argument, a function raises a clear error (ValueError, TypeError, LookupError,
    OSError, RuntimeError), never an AttributeError or IndexError from deep inside."""
    monkeypatch.setenv("QHT_CACHE", str(tmp_path))
    mod = importlib.import_module(f"lessons_lib.{module}")
    unclear = []
    for name, fn in inspect.getmembers(mod, inspect.isfunction):
        if fn.__module__ != mod.__name__ or name.startswith("_") or f"{module}.{name}" in ANY_FIRST:
            continue
        positional = [p for p in inspect.signature(fn).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if not positional:
            continue
        try:
            out = fn(object())
            if hasattr(out, "__enter__"):
                with out:
                    pass
            unclear.append(f"{name}: accepted object()")
        except (ValueError, TypeError, LookupError, OSError, RuntimeError):
            pass
        except Exception as err:  # noqa: BLE001 - the point is to name what leaked
            unclear.append(f"{name}: {type(err).__name__}: {err}")
    assert not unclear, unclear
