"""GPU facts and the deployment planner: memory, KV cache, bandwidth floor, roofline, GPUs, cost."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from functools import lru_cache

from . import bench, microscaling, resource, validate
from .quantize import storage_bits

GPU_TABLE = resource("gpus.csv")  # datasheet rows, each with its source
HOURS_PER_MONTH = 730.0  # 365 * 24 / 12
# Microscaling formats (lesson 07b): element codes with one shared scale per block, defined in microscaling.FORMATS.
MICROSCALING = ("nvfp4", "mxfp4", "mxfp8")
# Bytes per weight of each storage format, before scales; 4-bit formats pack two weights per byte.
BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5, "nf4": 0.5, "fp4": 0.5,
                    **{f: microscaling.FORMATS[f].element_format.bits / 8 for f in MICROSCALING}}
# Which tensor-core rate column a matmul in each format uses: "int4" is INT4 x INT4 (W4A4), nf4 computes in fp16.
RATE_COLUMN = {"fp32": "fp32_tflops", "fp16": "fp16_tflops", "bf16": "bf16_tflops", "fp8": "fp8_tflops",
               "int8": "int8_tops", "int4": "int4_tops", "fp4": "fp4_tflops", "nf4": "fp16_tflops",
               "nvfp4": "fp4_tflops", "mxfp4": "fp4_tflops", "mxfp8": "fp8_tflops"}
# The matmul a stored format runs by default. Weight-only 4-bit (W4A16: GPTQ, AWQ, NF4 checkpoints) unpacks its
# weights to the activation dtype and multiplies on FP16/BF16 tensor cores: INT4 TOPS apply to W4A4 only
# (plan(..., compute="int4")). int8 and fp8 default to W8A8 (both operands 8-bit).
COMPUTES_IN = {"int4": "fp16", "nf4": "fp16"}
# An FP4 checkpoint (NVFP4, MXFP4) runs W4A4 on FP4 tensor cores where the GPU has them, and elsewhere as W4A16: the
# weights are dequantized to 16 bits in the kernel, as vLLM's Marlin FP4 kernel does "for GPUs that lack FP4 hardware
# support" (docs.vllm.ai, vllm.model_executor.layers.quantization.utils.marlin_utils_fp4.apply_fp4_marlin_linear).
FP4_FALLBACK = {"nvfp4": "fp16", "mxfp4": "fp16"}

# Formats whose matmuls need their own tensor cores: (the tensor_formats entry they need, least compute capability).
# Block-scaled matmuls (MX, NVFP4) are Blackwell's (10.0 data centre, 12.0 GeForce): Hopper's FP8 MMA takes no block
# scales. Planning them on a GPU without those is refused.
NEEDS_TENSOR_CORES = {"fp8": ("fp8", 8.9), "fp4": ("fp4", 10.0), "nvfp4": ("fp4", 10.0), "mxfp4": ("fp4", 10.0),
                      "mxfp8": ("fp8", 10.0)}


def _check_format(fmt: str) -> str:
    return validate.choice(fmt, "format", BYTES_PER_WEIGHT)


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise validate.BadInput(f"{name} must be a positive number, got {v!r}")


def _check_count(**values: int) -> None:
    """GPUs, sequences, tokens and matrix sizes are whole numbers: 1.5 GPUs cannot be rented."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v) or v < 1:
            raise validate.BadInput(f"{name} must be a positive number that is whole (>= 1, no fractions), got {v!r}")


def _check_gpu(gpu_) -> "GPU":
    if not isinstance(gpu_, GPU):
        raise validate.BadInput(f"expected a GPU from hardware.gpu(name), got {gpu_!r}")
    return gpu_


def _check_fraction(usable_fraction: float) -> None:
    validate.number(usable_fraction, "usable_fraction", 0, 1, lo_open=True,
                    todo="the share of GPU memory the server may use, e.g. 0.9")


def check_shape(shape) -> "ModelShape":
    """shape itself if it is a ModelShape, else an error saying where to get one."""
    if not isinstance(shape, ModelShape):
        raise validate.BadInput(f"shape must be a hardware.ModelShape (e.g. hardware.LLAMA3_70B or shape_of(model)), "
                                f"got {shape!r}")
    return shape


def has_tensor_cores(gpu_: "GPU", fmt: str) -> bool:
    """Whether this GPU's tensor cores multiply `fmt` directly (formats outside NEEDS_TENSOR_CORES: always)."""
    _check_gpu(gpu_)
    if _check_format(fmt) not in NEEDS_TENSOR_CORES:
        return True
    needs, least_cc = NEEDS_TENSOR_CORES[fmt]
    return needs in gpu_.tensor_formats and gpu_.compute_capability >= least_cc


def check_runs_on(gpu_: "GPU", fmt: str) -> None:
    """Refuse a format whose matmuls need tensor cores this GPU does not have (FP8 before compute capability 8.9,
    FP4 and MX before 10.0)."""
    if not has_tensor_cores(gpu_, fmt):
        needs, least_cc = NEEDS_TENSOR_CORES[fmt]
        fallback = (f", or leave compute out: {fmt} weights then run as W4A16 (dequantized to 16 bits, as vLLM's "
                    f"Marlin FP4 kernel does)") if fmt in FP4_FALLBACK else ""
        raise validate.BadInput(
            f"{gpu_.name} (compute capability {gpu_.compute_capability}) has no {fmt.upper()} tensor cores (its "
            f"tensor cores run {' '.join(gpu_.tensor_formats)}): plan int8 or fp16 on it{fallback}, or pick a GPU "
            f"that lists {needs} with compute capability {least_cc} or more (hardware.gpu_names())")


def default_compute(fmt: str, gpu_: "GPU") -> str:
    """The matmul dtype a stored format runs in on this GPU: COMPUTES_IN (W4A16) for int4 and nf4; NVFP4 / MXFP4 on
    FP4 tensor cores where the GPU has them, else FP4_FALLBACK (W4A16); every other format in itself."""
    fmt = _check_format(fmt)
    if fmt in COMPUTES_IN:
        return COMPUTES_IN[fmt]
    if fmt in FP4_FALLBACK and not has_tensor_cores(gpu_, fmt):
        return FP4_FALLBACK[fmt]
    return fmt


@dataclass(frozen=True)
class GPU:
    """One row of the GPU table (resources/gpus.csv): datasheet memory, bandwidth and dense tensor-core rates."""

    name: str
    architecture: str
    compute_capability: float
    memory_gb: float
    bandwidth_gbs: float
    rates: dict  # column -> dense TFLOP/s or TOP/s; None where the datasheet lists none
    tensor_formats: tuple
    source: str
    notes: str

    def peak_flops(self, fmt: str) -> float:
        """Dense peak of the matmul that `fmt` runs on (FLOP/s); error if the datasheet lists none."""
        rate = self.rates.get(RATE_COLUMN[_check_format(fmt)])
        check_runs_on(self, fmt)
        if rate is None:
            raise ValueError(f"{self.name}: the datasheet lists no {RATE_COLUMN[fmt]} rate ({self.notes})")
        return rate * 1e12


@lru_cache(maxsize=1)
def _rows() -> tuple:
    return tuple(csv.DictReader(GPU_TABLE.read_text(encoding="utf-8").splitlines()))


def gpu(name: str) -> GPU:
    """Look up a GPU of the table (resources/gpus.csv) by name (case-insensitive)."""
    rows = {r["name"].lower(): r for r in _rows()}
    row = rows.get(" ".join(name.split()).lower()) if isinstance(name, str) else None
    if row is None:
        raise validate.UnknownName(f"unknown GPU {name!r}; the table has {[r['name'] for r in _rows()]}")
    rates = {k: (float(v) if v else None) for k, v in row.items() if k.endswith(("_tflops", "_tops"))}
    return GPU(row["name"], row["architecture"], float(row["compute_capability"]), float(row["memory_gb"]),
               float(row["bandwidth_gbs"]), rates, tuple(row["tensor_formats"].split()), row["source"], row["notes"])


def gpu_names() -> list[str]:
    """Names of every GPU in the table, in table order."""
    return [r["name"] for r in _rows()]


@dataclass(frozen=True)
class ModelShape:
    """The shape of a LLaMA-style decoder: enough to count parameters, KV cache and FLOPs."""

    name: str
    layers: int
    hidden: int
    mlp: int
    q_heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool = False
    gated: bool = True  # gate and up (3 MLP matrices); False: one up and one down (OPT's fc1, fc2)

    def __post_init__(self):
        _check_count(layers=self.layers, hidden=self.hidden, mlp=self.mlp, q_heads=self.q_heads, kv_heads=self.kv_heads,
                     head_dim=self.head_dim, vocab=self.vocab)
        validate.flag(self.tied_embeddings, "tied_embeddings")
        validate.flag(self.gated, "gated")
        if self.q_heads % self.kv_heads:
            raise validate.BadInput(f"q_heads ({self.q_heads}) must be a multiple of kv_heads ({self.kv_heads})")

    @property
    def parameters(self) -> int:
        """Parameter count: attention (q, k, v, o), MLP, two norms per layer, embeddings, final norm (no biases)."""
        attn = self.hidden * self.head_dim * (2 * self.q_heads + 2 * self.kv_heads)
        per_layer = attn + (3 if self.gated else 2) * self.hidden * self.mlp + 2 * self.hidden
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * per_layer + embeddings + self.hidden

    def kv_bytes_per_token(self, fmt: str = "fp16") -> float:
        """Bytes of K and V cached per token, over all layers (microscaling formats with their block scales)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * _bytes_per_value(fmt)


# Shapes from each model's published config.json on the Hugging Face hub.
LLAMA3_70B = ModelShape("Llama-3-70B", 80, 8192, 28672, 64, 8, 128, 128256)
LLAMA3_8B = ModelShape("Llama-3-8B", 32, 4096, 14336, 32, 8, 128, 128256)
SMOLLM2_135M = ModelShape("SmolLM2-135M", 30, 576, 1536, 9, 3, 64, 49152, tied_embeddings=True)


def shape_of(model) -> ModelShape:
    """The ModelShape of a loaded transformers model, read from its config."""
    validate.model(model)
    c = getattr(model, "config", None)
    if not hasattr(c, "num_hidden_layers"):
        raise validate.BadInput(f"model must be a transformers model with a config (models.load_model()), got "
                                f"{type(model).__name__}")
    from . import architecture  # noqa: PLC0415

    c = c.get_text_config() if hasattr(c, "get_text_config") else c
    layers = architecture.decoder_layers(model)
    mlp_in, mlp_out = (next(g for g in architecture.groups(layers[0]) if g.role == r) for r in ("mlp input", "mlp output"))
    mlp = mlp_out.balance[0].in_features  # the MLP width, whatever the config calls it (intermediate_size, ffn_dim)
    gated = sum(lin.out_features for lin in mlp_in.balance) == 2 * mlp
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads  # Gemma: not hidden / heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return ModelShape(getattr(c, "_name_or_path", "model") or "model", len(layers), c.hidden_size, mlp,
                      c.num_attention_heads, kv_heads, head_dim, c.vocab_size,
                      bool(getattr(c, "tie_word_embeddings", False)), gated)


def format_bits_per_weight(fmt: str, group_size: int | None = None, scale_bits: int = 16, zero_bits: int = 0) -> float:
    """Storage bits per weight of a format (quantize.storage_bits), with one scale per group of `group_size` weights.

    Microscaling formats fix their blocks and scales: microscaling.bits_per_weight counts them (NVFP4 4.5: an E4M3
    scale per 16 weights, its FP32 tensor scale amortised; MXFP4 4.25: an E8M0 scale per 32)."""
    if group_size is not None and (isinstance(group_size, bool) or not (isinstance(group_size, int) and group_size > 0)):
        raise validate.BadInput(f"group_size must be a positive integer, got {group_size!r}")
    scale_bits = validate.integer(scale_bits, "scale_bits", lo=0, hi=64)
    zero_bits = validate.integer(zero_bits, "zero_bits", lo=0, hi=64)
    if _check_format(fmt) in ("fp32", "fp16", "bf16") and group_size is not None:
        raise validate.BadInput(f"{fmt} stores each weight as itself, with no scales: leave group_size out")
    if fmt in MICROSCALING:
        block = microscaling.FORMATS[fmt].block
        if group_size not in (None, block) or (scale_bits, zero_bits) != (16, 0):
            raise validate.BadInput(f"{fmt} fixes its blocks ({block} weights) and scale format: leave group_size, "
                                    f"scale_bits and zero_bits out")
        return microscaling.bits_per_weight(fmt)
    return storage_bits(8 * BYTES_PER_WEIGHT[fmt], group_size, scale_bits, zero_bits)


def _bytes_per_value(fmt: str) -> float:
    """Bytes per stored value: BYTES_PER_WEIGHT, and for microscaling formats their block scales too."""
    return format_bits_per_weight(fmt) / 8 if _check_format(fmt) in MICROSCALING else BYTES_PER_WEIGHT[fmt]


def weight_bytes(parameters: float, fmt: str, group_size: int | None = None) -> float:
    """Bytes to store `parameters` weights in `fmt` (with per-group scales when group_size is given)."""
    _check_positive(parameters=parameters)
    return parameters * format_bits_per_weight(fmt, group_size) / 8


def decode_step_floor_s(gpu_: GPU, n_gpus: int, weight_bytes_: float, kv_bytes_read: float = 0.0) -> float:
    """Least time for one decode step: every weight and every cached K/V byte read once at full bandwidth."""
    _check_gpu(gpu_)
    _check_count(n_gpus=n_gpus)
    _check_positive(weight_bytes=weight_bytes_)
    validate.number(kv_bytes_read, "kv_bytes_read", 0)
    return (weight_bytes_ + kv_bytes_read) / (n_gpus * gpu_.bandwidth_gbs * 1e9)


def compute_floor_s(gpu_: GPU, n_gpus: int, parameters: float, tokens: int, fmt: str) -> float:
    """Least time for the matmuls of `tokens` tokens (2 FLOPs per weight per token) at the dense peak of matmul `fmt`."""
    _check_gpu(gpu_)
    _check_count(n_gpus=n_gpus, tokens=tokens)
    _check_positive(parameters=parameters)
    return 2 * parameters * tokens / (n_gpus * gpu_.peak_flops(fmt))


def gemm_intensity(m: int, n: int, k: int, weight_fmt: str = "fp16", act_bytes: float = 2.0) -> float:
    """Arithmetic intensity (FLOP per byte moved) of [m,k] @ [k,n] with `weight_fmt` weights (bench's byte model)."""
    _check_count(m=m, n=n, k=k)
    _check_positive(act_bytes=act_bytes)
    weights = k * n * _bytes_per_value(weight_fmt)
    return bench.arithmetic_intensity(bench.gemm_flops(m, n, k), bench.gemm_bytes(m, n, k, weights, act_bytes, act_bytes))


def attainable_flops(gpu_: GPU, fmt: str, intensity: float) -> float:
    """bench.attainable_flops with this GPU's datasheet peak for `fmt` and its datasheet bandwidth."""
    _check_gpu(gpu_)
    _check_positive(intensity=intensity)
    return bench.attainable_flops(intensity, gpu_.peak_flops(fmt), gpu_.bandwidth_gbs * 1e9)


def ridge_intensity(gpu_: GPU, fmt: str) -> float:
    """bench.ridge_intensity from this GPU's datasheet: the FLOP/byte above which `fmt` matmuls are compute-bound."""
    _check_gpu(gpu_)
    return bench.ridge_intensity(gpu_.peak_flops(fmt), gpu_.bandwidth_gbs * 1e9)


def valid_tensor_parallel(shape: "ModelShape", n: int) -> bool:
    """Whether vLLM accepts n as this model's tensor-parallel size: n divides the query heads, and the KV heads
    split evenly over n (n divides them) or are replicated (n is a multiple of them).

    The rule of vLLM's ModelConfig.verify_with_parallel_config ("Total number of attention heads must be divisible
    by tensor parallel size") and of its attention layers (vllm/model_executor/models/llama.py: KV heads >= tp:
    kv_heads % tp == 0, else tp % kv_heads == 0)."""
    check_shape(shape)
    _check_count(n=n)
    return shape.q_heads % n == 0 and (shape.kv_heads % n == 0 or n % shape.kv_heads == 0)


def tensor_parallel_sizes(shape: "ModelShape") -> list[int]:
    """Every tensor-parallel size vLLM accepts for this model (valid_tensor_parallel), smallest first."""
    check_shape(shape)
    return [n for n in range(1, shape.q_heads + 1) if valid_tensor_parallel(shape, n)]


def parallel_layout(shape: "ModelShape", n_gpus: int) -> tuple[int, int]:
    """(tensor-parallel size, pipeline stages) for n_gpus: the largest valid TP size that divides n_gpus, the
    rest as pipeline stages (3 GPUs for a 64-head model: TP 1 x PP 3)."""
    _check_count(n_gpus=n_gpus)
    tp = max(t for t in tensor_parallel_sizes(shape) if n_gpus % t == 0)
    return tp, n_gpus // tp


def gpus_for_tensor_parallel(shape: "ModelShape", needed: int) -> int:
    """The smallest valid tensor-parallel size >= needed GPUs (3 -> 4 for 64 query / 8 KV heads); beyond the
    largest, whole multiples of it (tensor parallel inside, pipeline stages across)."""
    _check_count(needed=needed)
    sizes = tensor_parallel_sizes(shape)
    return next((t for t in sizes if t >= needed), math.ceil(needed / sizes[-1]) * sizes[-1])


def gpus_needed(total_bytes: float, gpu_: GPU, usable_fraction: float = 0.9) -> int:
    """Smallest number of GPUs whose usable memory holds `total_bytes` (vLLM reserves 10% by default)."""
    _check_gpu(gpu_)
    _check_positive(total_bytes=total_bytes)
    _check_fraction(usable_fraction)
    return math.ceil(total_bytes / (gpu_.memory_gb * 1e9 * usable_fraction))


def kv_tokens_that_fit(gpu_: GPU, n_gpus: int, weight_bytes_: float, kv_bytes_per_token: float,
                       usable_fraction: float = 0.9) -> int:
    """How many tokens of KV cache fit beside the weights (0 if the weights alone do not fit)."""
    _check_gpu(gpu_)
    _check_count(n_gpus=n_gpus)
    _check_positive(weight_bytes=weight_bytes_, kv_bytes_per_token=kv_bytes_per_token)
    _check_fraction(usable_fraction)
    free = n_gpus * gpu_.memory_gb * 1e9 * usable_fraction - weight_bytes_
    return max(0, int(free // kv_bytes_per_token))


def cost_per_month(n_gpus: int, usd_per_gpu_hour: float) -> float:
    """Dollars per month for n_gpus running around the clock."""
    _check_count(n_gpus=n_gpus)
    _check_positive(usd_per_gpu_hour=usd_per_gpu_hour)
    return n_gpus * usd_per_gpu_hour * HOURS_PER_MONTH


def cost_per_million_tokens(n_gpus: int, usd_per_gpu_hour: float, tokens_per_s: float) -> float:
    """Dollars per million generated tokens when the deployment produces tokens_per_s all the time."""
    _check_count(n_gpus=n_gpus)
    _check_positive(usd_per_gpu_hour=usd_per_gpu_hour, tokens_per_s=tokens_per_s)
    return n_gpus * usd_per_gpu_hour / (tokens_per_s * 3600) * 1e6


@dataclass(frozen=True)
class Plan:
    """What one deployment (model, format, GPU, count, batch, context) costs and can do at best."""

    model: str
    fmt: str
    gpu: str
    n_gpus: int
    batch: int
    context: int
    weights_gb: float
    kv_gb: float
    fits: bool
    kv_tokens_free: int
    step_ms: float
    bound: str
    tokens_per_s: float
    usd_per_month: float
    usd_per_million_tokens: float
    tensor_parallel: int = 1  # GPUs that split every layer (a size vLLM accepts: valid_tensor_parallel)
    pipeline_parallel: int = 1  # stages of whole layers, run one after another for each token

    @property
    def parallelism(self) -> str:
        """How the GPUs are used: "TP 4", or "TP 1 x PP 3" where n_gpus is no valid tensor-parallel size."""
        return f"TP {self.tensor_parallel}" + (f" x PP {self.pipeline_parallel}" if self.pipeline_parallel > 1 else "")


def plan(shape: ModelShape, fmt: str, gpu_name: str, n_gpus: int | None = None, batch: int = 1,
         context: int = 4096, kv_fmt: str = "fp16", usd_per_gpu_hour: float = 2.0,
         usable_fraction: float = 0.9, group_size: int | None = None, compute: str | None = None) -> Plan:
    """Best case for one deployment: memory, fit, decode-step floor (bandwidth or compute), tokens/s, cost.

    n_gpus=None picks the fewest GPUs that hold weights plus the KV cache of `batch` sequences of `context`
    tokens, rounded up to a tensor-parallel size the model's heads allow (gpus_for_tensor_parallel). A given
    n_gpus that is no valid size runs as tensor parallel x pipeline stages (parallel_layout): stages run one
    after another for each token, so only the tensor-parallel GPUs' bandwidth shortens a step. `compute` is the
    matmul's dtype (default default_compute: W4A16 on fp16 tensor cores for int4 and nf4, and for NVFP4 / MXFP4 on
    a GPU without FP4 tensor cores; "int4" for W4A4). The floor assumes perfect
    tensor parallelism and full datasheet bandwidth: real kernels reach less.
    """
    if not isinstance(shape, ModelShape):
        raise validate.BadInput(f"shape must be a hardware.ModelShape (e.g. hardware.LLAMA3_70B or shape_of(model)), "
                                f"got {shape!r}")
    _check_format(fmt)
    _check_format(kv_fmt)
    _check_count(batch=batch, context=context)
    if n_gpus is not None:
        _check_count(n_gpus=n_gpus)
    _check_positive(usd_per_gpu_hour=usd_per_gpu_hour)
    _check_fraction(usable_fraction)
    explicit = compute is not None
    g = gpu(gpu_name)
    compute = _check_format(compute) if explicit else default_compute(fmt, g)
    if fmt not in FP4_FALLBACK:  # FP4 weights are stored on any GPU (FP4_FALLBACK computes them in 16 bits)
        check_runs_on(g, fmt)
    check_runs_on(g, compute)
    w = weight_bytes(shape.parameters, fmt, group_size)
    kv = batch * context * shape.kv_bytes_per_token(kv_fmt)
    n = n_gpus if n_gpus is not None else gpus_for_tensor_parallel(shape, gpus_needed(w + kv, g, usable_fraction))
    tp, pp = parallel_layout(shape, n)
    mem_s = decode_step_floor_s(g, tp, w, kv)
    try:
        cmp_s = compute_floor_s(g, tp, shape.parameters, batch, compute)
    except ValueError:  # no tensor-core rate listed for this format: the bandwidth floor is all we can say
        if explicit:  # but a matmul dtype asked for by name must exist on this GPU (W4A4 on a Hopper: no)
            raise
        cmp_s = 0.0
    step = max(mem_s, cmp_s)
    tps = batch / step
    return Plan(shape.name, fmt, g.name, n, batch, context, w / 1e9, kv / 1e9,
                w + kv <= n * g.memory_gb * 1e9 * usable_fraction,
                kv_tokens_that_fit(g, n, w, shape.kv_bytes_per_token(kv_fmt), usable_fraction),
                step * 1e3, "memory" if mem_s >= cmp_s else "compute", tps,
                cost_per_month(n, usd_per_gpu_hour), cost_per_million_tokens(n, usd_per_gpu_hour, tps), tp, pp)


def max_batch(shape: ModelShape, fmt: str, gpu_name: str, n_gpus: int, context: int = 4096,
              latency_ms: float = 50.0, kv_fmt: str = "fp16", limit: int = 4096, compute: str | None = None) -> int:
    """Largest batch whose KV cache fits and whose decode-step floor stays within latency_ms (0 if none)."""
    _check_positive(latency_ms=latency_ms)
    _check_count(n_gpus=n_gpus, context=context, limit=limit)
    best = 0
    for batch in range(1, limit + 1):
        p = plan(shape, fmt, gpu_name, n_gpus=n_gpus, batch=batch, context=context, kv_fmt=kv_fmt, compute=compute)
        if not p.fits or p.step_ms > latency_ms:
            break
        best = batch
    return best
