"""Choosing a deployment: the rules lesson 09 applies to every candidate, and draws as a flow chart."""
from __future__ import annotations

import numbers
import textwrap
from dataclasses import dataclass

import numpy as np

from . import hardware as hw
from . import validate
from .kernels import FORMATS


# Formats planned from their bits alone (lesson 07b): FP4 checkpoints, which run on FP4 tensor cores where the GPU
# has them (compute capability >= 10) and as W4A16 elsewhere (hardware.default_compute). No kernel of the course
# (kernels.FORMATS) runs them, so no efficiency is measured for them: their expected time is their floor.
PLANNED_FORMATS = ("nvfp4", "mxfp4")


@dataclass(frozen=True)
class Candidate:
    """One way to serve the model: weight format (a kernels.FORMATS name, or one of PLANNED_FORMATS) on n GPUs of
    one kind."""

    fmt: str
    gpu: str
    n_gpus: int

    def __post_init__(self):
        validate.choice(self.fmt, "format", [*FORMATS, *PLANNED_FORMATS],
                        "use a kernels.FORMATS name such as 'fp8_w8a8', or 'nvfp4' / 'mxfp4'")
        hw.gpu(self.gpu)  # an unknown GPU is named with the table's list
        if isinstance(self.n_gpus, bool) or not isinstance(self.n_gpus, int) or self.n_gpus < 1:
            raise validate.BadInput(f"n_gpus must be a whole number >= 1 (GPUs are rented whole), got {self.n_gpus!r}")

    @property
    def storage(self) -> str:
        """What the planner counts per weight (int4, fp8, nvfp4, ...): the format's storage type."""
        return self.fmt if self.fmt in PLANNED_FORMATS else FORMATS[self.fmt].storage

    @property
    def compute(self) -> str:
        """The dtype its matmuls run in on a GPU (int4_weight_only: bf16, W4A16; nvfp4: nvfp4 on a B200, fp16 on a
        GPU without FP4 tensor cores), for the planner's compute floor."""
        if self.fmt in PLANNED_FORMATS:
            return hw.default_compute(self.fmt, hw.gpu(self.gpu))
        return FORMATS[self.fmt].computes_in[0]

    @property
    def label(self) -> str:
        return f"{self.n_gpus}x {self.gpu} {self.fmt}"


# The rules, in the order they are applied: (column that must be True, the question it answers).
RULES = (
    ("fits", "Do the weights and the KV cache of the batch fit in 90% of GPU memory?"),
    ("fast_enough", "Is the expected decode step within the latency budget?"),
    ("accurate_enough", "Is the measured quality cost within the tolerance?"),
)
FINAL = "Of the rest: the lowest cost per million tokens"


def assess(shape: hw.ModelShape, c: Candidate, quality_cost: dict[str, float], usd_per_gpu_hour: dict[str, float],
           efficiency: dict[str, float] | None = None, batch: int = 1, context: int = 4096, latency_ms: float = 50.0,
           max_quality_cost: float = 0.05, kv_fmt: str = "fp16") -> dict:
    """Everything the rules need about one candidate: memory, expected step time, quality cost, cost.

    max_quality_cost is in the units of the quality_cost given (decide.QUALITY_MEASURES): a fraction of fp32's
    perplexity for "ppl" and "ppl_upper", nats per token for "kl"."""
    if not isinstance(c, Candidate):
        raise validate.BadInput(f"c must be a decide.Candidate(fmt, gpu, n_gpus), got {c!r}")
    for name, table in (("quality_cost", quality_cost), ("usd_per_gpu_hour", usd_per_gpu_hour),
                        ("efficiency", efficiency or {})):
        if not isinstance(table, dict):
            raise validate.BadInput(f"{name} must be a dict, got {type(table).__name__}")
    validate.number(latency_ms, "latency_ms", 0, lo_open=True)
    validate.number(max_quality_cost, "max_quality_cost", 0, todo="a relative perplexity increase, e.g. 0.05 for 5%")
    if c.fmt not in quality_cost:
        raise KeyError(f"no measured quality cost for {c.fmt!r}; known: {sorted(quality_cost)}")
    if c.gpu not in usd_per_gpu_hour:
        raise KeyError(f"no price for {c.gpu!r}; give usd_per_gpu_hour[{c.gpu!r}]")
    validate.number(quality_cost[c.fmt], f"quality_cost[{c.fmt!r}]", todo="a measured quality cost")
    validate.number(usd_per_gpu_hour[c.gpu], f"usd_per_gpu_hour[{c.gpu!r}]", 0, lo_open=True)
    eff = (efficiency or {}).get(c.fmt, 1.0)
    if isinstance(eff, bool) or not isinstance(eff, (int, float)) or not 0 < eff <= 1:
        raise validate.BadInput(f"kernel efficiency for {c.fmt} must be in (0, 1], got {eff!r}")
    p = hw.plan(shape, c.storage, c.gpu, n_gpus=c.n_gpus, batch=batch, context=context, kv_fmt=kv_fmt,
                usd_per_gpu_hour=usd_per_gpu_hour[c.gpu], compute=c.compute)
    step_ms = p.step_ms / eff
    tokens_per_s = batch / step_ms * 1e3
    return {"deployment": c.label, "fmt": c.fmt, "gpu": c.gpu, "n_gpus": c.n_gpus, "weights GB": p.weights_gb,
            "floor ms": p.step_ms, "expected ms": step_ms, "tokens/s": tokens_per_s,
            "quality cost": quality_cost[c.fmt],
            "$/month": p.usd_per_month, "$/M tokens": hw.cost_per_million_tokens(c.n_gpus, usd_per_gpu_hour[c.gpu], tokens_per_s),
            "fits": p.fits, "fast_enough": step_ms <= latency_ms, "accurate_enough": quality_cost[c.fmt] <= max_quality_cost}


def _rows(rows) -> list[dict]:
    """Rows as decide.assess returns them: each needs every rule's column and the cost."""
    if not isinstance(rows, (list, tuple)):
        raise validate.BadInput(f"rows must be a list of decide.assess(...) results, got {type(rows).__name__}")
    need = [col for col, _ in RULES] + ["$/M tokens"]
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or any(k not in r for k in need):
            raise validate.BadInput(f"rows[{i}] is not a decide.assess(...) result (it needs {need})")
        for col, _ in RULES:  # "False" or 0.0 would read as a pass or fail by accident: only real True/False
            if not isinstance(r[col], (bool, np.bool_)):
                raise validate.BadInput(f"rows[{i}][{col!r}] must be True or False, got {r[col]!r}: "
                                        f"build rows with decide.assess(...)")
        cost = r["$/M tokens"]
        if isinstance(cost, bool) or not isinstance(cost, numbers.Real) or not cost >= 0:  # inf: never chosen
            raise validate.BadInput(f"rows[{i}]['$/M tokens'] must be a number >= 0, got {cost!r}")
    return list(rows)


def choose(rows: list[dict]) -> dict | None:
    """The candidate that passes every rule at the lowest cost per million tokens (None if none passes)."""
    if not _rows(rows):
        raise validate.BadInput("rows is empty: assess at least one candidate (decide.assess) before choosing")
    passing = [r for r in rows if all(r[col] for col, _ in RULES)]
    return min(passing, key=lambda r: r["$/M tokens"]) if passing else None


def rejected_by(row: dict) -> str | None:
    """The first rule a candidate fails, as its column name (None if it passes them all)."""
    _rows([row])
    return next((col for col, _ in RULES if not row[col]), None)


def draw_flow(ax, rows: list[dict] | None = None) -> None:
    """Draw RULES as a flow chart on a matplotlib axis; with rows, list who leaves at each rule and who wins."""
    if not all(hasattr(ax, a) for a in ("set", "text", "annotate", "axis")):
        raise validate.BadInput(f"ax must be a matplotlib axis (fig, ax = plt.subplots()), got {type(ax).__name__}")
    if rows is not None:
        _rows(rows)
    n = len(RULES) + 1
    ax.set(xlim=(0, 10), ylim=(0, 2 * n), xticks=[], yticks=[])
    ax.axis("off")
    box = dict(boxstyle="round,pad=0.4", fc="#eef3fb", ec="#4a6fa5")
    for i, (col, question) in enumerate(list(RULES) + [("choice", FINAL)]):
        y = 2 * (n - i) - 1
        ax.text(3.5, y, question, ha="center", va="center", fontsize=9, bbox=box, wrap=True)
        if i < len(RULES):
            ax.annotate("", xy=(3.5, y - 1.35), xytext=(3.5, y - 0.45), arrowprops=dict(arrowstyle="->"))
            ax.text(3.7, y - 0.9, "yes", fontsize=8)
            out = [r["deployment"] for r in rows or [] if rejected_by(r) == col]
            ax.annotate("no: " + (textwrap.fill(", ".join(out), 48) if out else "(none)"), xy=(5.9, y), xytext=(6.6, y),
                        fontsize=8, ha="left", va="center", color="#a33", arrowprops=dict(arrowstyle="<-", color="#a33"))
        elif rows is not None:
            best = choose(rows)
            ax.text(3.5, y - 1.0, f"-> {best['deployment'] if best else 'nothing passes: relax a requirement'}",
                    ha="center", fontsize=10, weight="bold")


# On-demand $/GPU-hour, midpoints of the "specialty provider" ranges in Mercatus' cloud GPU pricing guide (May 2026,
# https://www.mercatus-ai.com/blog/cloud-gpu-pricing): A100 80GB $1.10-1.50, H100 SXM5 $2.50-3.50, H200 $3.50-4.50.
# Prices move: put your own in the lesson's parameters cell.
# B200: the midpoint of the $4.50-6.00 on-demand range on specialised clouds in Lyceum's B200 pricing guide (March
# 2026, https://lyceum.technology/magazine/nvidia-b200-gpu-cloud-pricing-2026/).
PRICES = {"A100 80GB": 1.30, "H100 SXM": 3.00, "H200": 4.00, "B200": 5.25}

# Course format -> the lessons' perplexity entry that measures it (the best method of each, same evaluation set).
FORMAT_RESULTS = {"int8_w8a8": ("06", "SmoothQuant W8A8"), "fp8_w8a8": ("07", "ours FP8 W8A8 (_scaled_mm)"),
                  "int4_weight_only": ("04/05", "best of GPTQ and AWQ W4"), "nf4": ("03", "NF4")}


# Formats with no recorded quality cost on the course's evaluation set, and the recorded format shown in their place
# (always labelled as a stand-in): NVFP4, like NF4, rounds each weight to the nearest of a few non-uniform 4-bit
# levels under a per-block absmax scale, weights only measured (B200 runs NVFP4 activations too: that costs more).
STAND_INS = {"nvfp4": "nf4"}


def with_stand_ins(quality: dict[str, float]) -> dict[str, float]:
    """quality_costs(...) plus each STAND_INS format at its stand-in's cost: a borrowed number, to be shown as one."""
    if not isinstance(quality, dict) or any(like not in quality for like in STAND_INS.values()):
        raise validate.BadInput(f"quality must be decide.quality_costs(...), with {sorted(set(STAND_INS.values()))}")
    return {**quality, **{fmt: quality[like] for fmt, like in STAND_INS.items() if fmt not in quality}}


QUALITY_MEASURES = {
    "ppl": "relative perplexity increase over fp32 (bf16 = 0)",
    "ppl_upper": "relative perplexity increase over fp32 at the upper end of its paired 95% interval (a cautious cost)",
    "kl": "mean KL divergence of the next-token distributions from fp32's, nats per token (bf16 = 0)",
}


COURSE_MEASURE = "ppl_upper"  # what lesson 09 and its exercises decide on: a cautious cost, not a point estimate


def quality_costs(r: dict[str, dict], measure: str = "ppl") -> dict[str, float]:
    """Quality cost per format from lessons 03-07's recorded results, by one of QUALITY_MEASURES (bf16 = 0).

    Refuses records measured with settings other than the course's (e.g. lesson 04 with another group size), and
    records that lack the measure (records made before a lesson stored evaluate.record_values)."""
    from . import results, validate

    measure = validate.choice(measure, "quality measure", QUALITY_MEASURES)
    missing = sorted({"03", "04", "05", "06", "07"} - set(r)) if isinstance(r, dict) else None
    if missing:
        raise KeyError(f"quality_costs needs the results of lessons 03-07; missing {missing}: "
                       f"read them with results.read_or_committed(lesson, ...)")
    results.check_consistent({k: r[k] for k in ("03", "04", "05", "06", "07")})

    def cost(lesson: str, key: str) -> float:
        field = {"ppl": "ppl", "ppl_upper": "ppl_diff", "kl": "kl"}[measure]
        if key not in r[lesson].get(field, {}):
            raise KeyError(f"lesson {lesson}'s results hold no {field!r} for {key!r}, which measure={measure!r} needs: "
                           f"run notebooks/{lesson}_*.ipynb again (it records them with evaluate.record_values), "
                           f"or use measure='ppl'")
        if measure == "kl":
            return r[lesson]["kl"][key]
        if measure == "ppl_upper":
            return r[lesson]["ppl_diff"][key][2] / r[lesson]["ppl"]["fp32"]
        ppl = r[lesson]["ppl"]
        return ppl[key] / ppl["fp32"] - 1

    int8_key = next(k for k in r["06"]["ppl"] if k.startswith("ours SmoothQuant"))
    return {"bf16": 0.0, "int8_w8a8": cost("06", int8_key), "fp8_w8a8": cost("07", FORMAT_RESULTS["fp8_w8a8"][1]),
            "int4_weight_only": cost(*int4_method(r)), "nf4": cost("03", "NF4")}


def int4_method(r: dict[str, dict]) -> tuple[str, str]:
    """(lesson, label) of the 4-bit weight-only method to ship: GPTQ (lesson 04, its dampening chosen on dev) or AWQ
    (lesson 05), whichever has the lower dev perplexity, so that the test set, which reports its cost, chooses nothing."""
    if not isinstance(r, dict) or not {"04", "05"} <= set(r) or not all(isinstance(r[k], dict) for k in ("04", "05")):
        raise validate.BadInput("r must map lessons '04' and '05' to their results (results.read_all_or_committed): "
                                "run notebooks/04_gptq.ipynb and notebooks/05_awq.ipynb first")
    gptq = r["04"].get("chosen", {}).get("W4")
    dev = {("04", gptq): r["04"].get("dev_ppl", {}).get(gptq), ("05", "ours AWQ W4"): r["05"].get("dev_ppl", {}).get("ours AWQ W4")}
    if None in dev.values() or r["04"].get("dev") != r["05"].get("dev"):
        raise KeyError("lessons 04 and 05 must record dev perplexities on the same dev windows (dev_ppl, dev): "
                       "run notebooks/04_gptq.ipynb and notebooks/05_awq.ipynb again")
    return min(dev, key=dev.get)


def kernel_efficiency(bench_results: dict) -> dict[str, float]:
    """Fraction of the bandwidth floor each format's batch-1 decode reached in a committed GPU benchmark."""
    floors = bench_results.get("decode", {}).get("floors") if isinstance(bench_results, dict) else None
    if not isinstance(floors, dict):
        raise validate.BadInput("bench_results must be a committed GPU benchmark with decode floors, e.g. "
                                "bench.committed('nvidia-h200')")
    return {fmt: f["fraction_of_floor"] for fmt, f in floors.items() if f.get("fraction_of_floor")}


# Published production kernels, as a fraction of the bf16 (cuBLAS) decode efficiency measured beside them:
# format -> (ratio, kernel, what the source reports, source).
PRODUCTION_KERNELS = {
    "int4_weight_only": (0.95, "Marlin (vLLM's W4A16 GEMM; Machete on Hopper)",
                         "within 5% of the ideal speed-up over FP16 (3.87x) up to batch 32 on an A10",
                         "Frantar et al. 2024, MARLIN, arXiv:2408.11743, Fig. 1; github.com/IST-DASLab/marlin"),
    "fp8_w8a8": (0.8, "CUTLASS FP8 W8A8 (vLLM)", "up to 1.6x throughput for 2x fewer weight bytes",
                 "docs.vllm.ai/en/stable/features/quantization/fp8/ (FP8 W8A8)"),
}


def production_efficiency(measured: dict[str, float]) -> dict[str, float]:
    """kernel_efficiency with each PRODUCTION_KERNELS format at its published share of bf16's measured efficiency
    (formats without a published figure keep torch's measured value)."""
    if not isinstance(measured, dict) or "bf16" not in measured:
        raise validate.BadInput("measured must be decide.kernel_efficiency(...) of a benchmark that measured bf16")
    for f, v in measured.items():
        validate.number(v, f"measured[{f!r}]", 0, 1, lo_open=True, todo="an efficiency is a fraction of the floor's speed")
    return {**measured, **{f: min(1.0, ratio * measured["bf16"]) for f, (ratio, *_) in PRODUCTION_KERNELS.items()}}

# The 70B deployments lesson 09 compares (lesson 00's scenario, 16-bit weights on two A100s, first).
CANDIDATES_70B = (Candidate("bf16", "A100 80GB", 2), Candidate("int8_w8a8", "A100 80GB", 1), Candidate("nf4", "A100 80GB", 1),
                  Candidate("int4_weight_only", "A100 80GB", 1), Candidate("bf16", "H100 SXM", 2), Candidate("fp8_w8a8", "H100 SXM", 1),
                  Candidate("int4_weight_only", "H100 SXM", 1), Candidate("fp8_w8a8", "H200", 1), Candidate("bf16", "H200", 2))


def course_choice(kernels: str = "reference", **requirements) -> str:
    """The deployment the rules pick from CANDIDATES_70B with the committed course results (exercise checker);
    kernels="production" uses production_efficiency instead of torch's reference kernels' measured efficiency."""
    from . import bench, results

    validate.choice(kernels, "kernels", ("reference", "production"))
    recorded = {lesson: results.committed(lesson) for lesson in ("03", "04", "05", "06", "07")}
    quality, eff = quality_costs(recorded, COURSE_MEASURE), kernel_efficiency(bench.committed("nvidia-h200"))
    eff = production_efficiency(eff) if kernels == "production" else eff
    best = choose([assess(hw.LLAMA3_70B, c, quality, PRICES, eff, **requirements) for c in CANDIDATES_70B])
    return best["deployment"] if best else "none"
