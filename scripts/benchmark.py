#!/usr/bin/env python3
"""Lesson 08, headless: device ceilings, GEMM sweep per weight format, end-to-end decode; one JSON per device.

    python scripts/benchmark.py --preset cpu --out data/bench          # 2-core CPU lane, about 3 minutes
    python scripts/benchmark.py --preset gpu --out data/bench          # H100 / H200, under 5 minutes
    python scripts/benchmark.py --preset gpu --device cpu --quick --out /tmp/b   # dry run of the GPU code paths

Every measurement runs inside its own guard: an error is written into the results and the run goes on; the
JSON file is rewritten after every section, so a run cut short still leaves what it measured. --budget-s
bounds the whole run: sections that would not fit are skipped and listed as skipped.
"""
from __future__ import annotations

import time

T_START = time.monotonic()  # the budget counts from here, before the heavy imports

import argparse  # noqa: E402
import copy  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lessons_lib import bench, hardware, kernels  # noqa: E402
from lessons_lib.throughput import (bytes_read_per_token, decode_result, gemm_point, model_weight_bytes,  # noqa: E402
                                    new_cache, rotating_copies, set_cache_length, time_decode_eager, time_decode_graph,
                                    time_prefill)

LLAMA_8B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                intermediate_size=14336, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192)
LLAMA_TINY = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=512, vocab_size=1024, rope_theta=500000.0, max_position_embeddings=512)

PRESETS = {
    "gpu": dict(budget_s=270, shapes=[(4096, 4096), (14336, 4096)], batches=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
                bw_bytes=1 << 30, matmul_n=8192, peak_dtypes=["fp32", "bf16", "fp16", "int8", "fp8"],
                point_s=0.05, gemm_share=0.30, group_size=128, decode_model="llama-8b-random",
                decode_formats=["bf16", "int4_wo", "fp8", "int8_w8a8", "nf4", "int8_wo"],
                decode_batches=[1, 8, 32], prompt=128, new_tokens=64, mode_s=6.0, compile=True, compile_min_s=60,
                compile_formats=["bf16", "int4_wo", "fp8", "int8_w8a8"]),
    "cpu": dict(budget_s=170, shapes=[(2048, 2048), (1536, 576)], batches=[1, 2, 4, 8, 16, 32, 64],
                bw_bytes=256 << 20, matmul_n=1024, peak_dtypes=["fp32", "bf16", "int8"],
                point_s=0.15, gemm_share=0.45, group_size=64, decode_model="offline",
                decode_formats=["fp32", "bf16", "int8_wo", "int4_wo", "int8_w8a8"],
                decode_batches=[1, 4], prompt=64, new_tokens=32, mode_s=8.0, compile=False, compile_min_s=0),
}
QUICK = dict(shapes=[(512, 256), (1024, 256)], batches=[1, 4, 32], bw_bytes=32 << 20, matmul_n=256,
             rotate_bytes=4 << 20, point_s=0.02, decode_batches=[1, 2], prompt=16, new_tokens=8, mode_s=2.0,
             compile_min_s=0)
# Where the GEMM sweep stops per format (naive or emulated kernels get slow at large batch).
BATCH_CAP = {("cuda", "int8_wo"): 64, ("cpu", "fp8"): 16, ("cpu", "nf4"): 32, ("cpu", "fp16"): 16}
# Decode batch sizes per format are capped where the kernel is naive or emulated.
DECODE_BATCH_CAP = {("cuda", "int8_wo"): 1, ("cpu", "nf4"): 1, ("cpu", "fp8"): 1}
# Decode targets that issue 7 sets (GPU lane).
TARGETS = {"bf16_fraction_of_floor": 0.70, "best_4bit_speedup": 2.5, "fp8_speedup": 1.6}


class BudgetExceeded(BaseException):
    """The hard deadline passed (raised from a timer signal; BaseException so `except Exception` lets it by)."""


# ----------------------------------------------------------------------------------------------- the run
class Run:
    """Results, log and time budget of one benchmark run; writes the JSON after every section."""

    def __init__(self, out_dir: Path, slug: str, budget_s: float):
        self.out_dir, self.budget_s = out_dir, budget_s
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path, self.log_path = out_dir / f"{slug}.json", out_dir / f"{slug}.log"
        self.log_file = open(self.log_path, "w")  # noqa: SIM115  (closed at the end of main())
        self.model = None  # the decode model, shared with the compile section
        self.results = {"schema": 1, "finished": False, "complete": False, "errors": {}, "skipped": [],
                        "section_s": {}, "notes": []}

    def elapsed(self) -> float:
        return time.monotonic() - T_START

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def log(self, *parts) -> None:
        line = " ".join(str(p) for p in parts)
        print(f"[{self.elapsed():6.1f}s] {line}", flush=True)
        self.log_file.write(f"[{self.elapsed():6.1f}s] {line}\n")
        self.log_file.flush()

    def save(self) -> None:
        self.results["elapsed_s"] = round(self.elapsed(), 1)
        tmp = self.path.with_suffix(".json.partial")
        tmp.write_text(json.dumps(_clean(self.results), indent=1, default=_json_default))
        tmp.replace(self.path)

    @contextmanager
    def section(self, name: str, need_s: float = 0.0):
        """Run a block if `need_s` seconds are left; record its error or the deadline, time it, save."""
        if self.left() < need_s:
            self.skip(name, f"{self.left():.0f} s left of the budget, section wants {need_s:.0f} s", budget=True)
            yield False
            return
        t0 = time.monotonic()
        self.log(f"== {name}")
        try:
            yield True
        except BudgetExceeded:
            self.results["errors"][name] = "hard deadline reached (--budget-s); stopped here"
            self.log(f"!! {name}: hard deadline reached")
            raise
        except Exception as e:  # noqa: BLE001  (every failure is data; the run goes on)
            self.results["errors"][name] = _error_text(e)
            self.log(f"!! {name} failed: {type(e).__name__}: {e}".splitlines()[0][:300])
        finally:
            self.results["section_s"][name] = round(time.monotonic() - t0, 2)
            self.save()

    def skip(self, name: str, why: str, budget: bool = False) -> None:
        self.results["skipped"].append({"what": name, "why": why, "for_budget": budget})
        self.log(f"-- skipped {name}: {why}")


def _error_text(e: BaseException) -> str:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    return "".join(tb)[-3000:]


def _clean(o):
    """A copy of nested results with nan/inf floats as None (strict JSON)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def _json_default(o):
    if isinstance(o, (torch.dtype, torch.device)):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return repr(o)


def _finite(x):
    """x rounded for the JSON file, or None for nan/inf/None."""
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.6g}")


def _alarm(signum, frame):
    signal.setitimer(signal.ITIMER_REAL, 2.0)  # fire again if something below swallows this one
    raise BudgetExceeded()


def slugify(text: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def free_memory() -> None:
    """Drop garbage and cached device blocks between sections."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------- environment
def environment(device: torch.device) -> dict:
    """Device name, compute capability, memory, versions and date."""
    env = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
           "cuda_runtime": torch.version.cuda, "device_type": device.type, "name": kernels.device_name(device)}
    for pkg in ("transformers", "numpy", "triton"):
        env[pkg] = _version(pkg)
    bnb = kernels._bnb()
    env["bitsandbytes"] = getattr(bnb, "__version__", None) if bnb else None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(compute_capability=f"{p.major}.{p.minor}", memory_bytes=p.total_memory,
                   multiprocessors=p.multi_processor_count, l2_cache_bytes=getattr(p, "L2_cache_size", None),
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    else:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        env.update(cpu_threads=torch.get_num_threads(), cpu_count=os.cpu_count(), load_average_1min=load,
                   cpu_capability=torch.backends.cpu.get_cpu_capability(), l3_cache_bytes=_cpu_llc_bytes())
        if load is not None and load > 0.5:
            env["warning"] = (f"the machine was busy (load average {load:.1f} on {os.cpu_count()} cores): CPU "
                              "timings are unreliable; with threads that wait on each other, a descheduled "
                              "thread stalls every op (try --threads 1, or a quiet machine)")
    return env


def _version(pkg: str) -> str | None:
    try:
        from importlib.metadata import version  # noqa: PLC0415
        return version(pkg)
    except Exception:  # noqa: BLE001
        return None


def _cpu_llc_bytes() -> int | None:
    """Size of the CPU's last-level cache from sysfs (None where unreadable)."""
    try:
        sizes = []
        for idx in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
            s = (idx / "size").read_text().strip()
            sizes.append(int(s[:-1]) * {"K": 1 << 10, "M": 1 << 20}.get(s[-1], 1) if s[-1] in "KM" else int(s))
        return max(sizes) if sizes else None
    except (OSError, ValueError):
        return None


def cache_bytes(env: dict) -> int:
    """The last-level cache that rotation must exceed (GPU L2, CPU L3), with a safe default."""
    return env.get("l2_cache_bytes") or env.get("l3_cache_bytes") or 64 << 20


# ----------------------------------------------------------------------------------------------- ceilings
def ceilings(run: Run, device: torch.device, cfg: dict, env: dict) -> dict:
    """Measured bandwidth and matmul peaks, beside the datasheet row when the GPU is in data/gpus.csv."""
    out = {"bandwidth": None, "matmul": {}, "datasheet": None}
    try:
        out["bandwidth"] = bench.measure_bandwidth(device, cfg["bw_bytes"])
        run.log(f"bandwidth {out['bandwidth']['gb_per_s']:.0f} GB/s (iqr {out['bandwidth']['gb_per_s_iqr']:.0f})")
    except Exception as e:  # noqa: BLE001
        out["bandwidth"] = {"error": _error_text(e)}
    for dtype in cfg["peak_dtypes"]:
        try:
            r = bench.measure_matmul_peak(device, dtype, cfg["matmul_n"])
            out["matmul"][dtype] = r
            run.log(f"matmul {dtype}: {r['tflops']:.1f} TFLOP/s (iqr {r['tflops_iqr']:.1f})")
        except Exception as e:  # noqa: BLE001
            out["matmul"][dtype] = {"error": _error_text(e)}
            run.log(f"matmul {dtype}: error {type(e).__name__}")
        free_memory()
    name = bench.match_gpu(env["name"]) if device.type == "cuda" else None
    if name:
        g = hardware.gpu(name)
        out["datasheet"] = {"table_name": g.name, "bandwidth_gbs": g.bandwidth_gbs, "rates_tflops": g.rates,
                            "source": g.source, "notes": g.notes}
        out["measured_vs_datasheet"] = _vs_datasheet(out, g)
    elif device.type == "cuda":
        out["datasheet"] = {"error": f"no row of data/gpus.csv matches {env['name']!r}"}
    return out


def _vs_datasheet(out: dict, g: hardware.GPU) -> dict:
    """Measured / datasheet for bandwidth and each matmul dtype the datasheet lists."""
    col = {"fp32": "fp32_tflops", "bf16": "bf16_tflops", "fp16": "fp16_tflops", "int8": "int8_tops",
           "fp8": "fp8_tflops"}
    ratios = {}
    bw = out.get("bandwidth") or {}
    if "gb_per_s" in bw:
        ratios["bandwidth"] = _finite(bw["gb_per_s"] / g.bandwidth_gbs)
    for dtype, r in out["matmul"].items():
        rate = g.rates.get(col[dtype])
        if "tflops" in r and rate:
            ratios[dtype] = _finite(r["tflops"] / rate)
    return ratios


def ceiling_values(ceil: dict) -> tuple[float | None, dict]:
    """(bandwidth bytes/s, {dtype: FLOP/s}) from the measured ceilings, skipping failed ones."""
    bw = (ceil.get("bandwidth") or {}).get("gb_per_s")
    peaks = {d: r["tflops"] * 1e12 for d, r in ceil.get("matmul", {}).items() if "tflops" in r}
    return (bw * 1e9 if bw else None), peaks


def gemm_sweep(run: Run, device: torch.device, cfg: dict, probe: dict, ceil: dict, env: dict) -> None:
    """y = x @ W.T for every runnable format, shape and batch: time, bytes, FLOPs, rates, roofline fraction."""
    points = run.results.setdefault("gemm", [])
    bw, peaks = ceiling_values(ceil)
    deadline = run.elapsed() + cfg["gemm_share"] * run.left()
    rotate = cfg.get("rotate_bytes") or max(4 * cache_bytes(env), 256 << 20 if device.type == "cuda" else 128 << 20)
    run.results["gemm_setup"] = {"rotate_bytes_at_least": rotate, "deadline_elapsed_s": round(deadline, 1),
                                 "bytes_model": "stored weight (values + scales) + input + output, each once",
                                 "timers": "eager: CUDA events around back-to-back calls (host clock on CPU); "
                                           "graph: one CUDA graph replaying a pass over the rotating copies"}
    formats = [f for f in kernels.FORMATS if probe.get(f, {}).get("runs")]
    for out_f, in_f in cfg["shapes"]:
        gen = torch.Generator().manual_seed(out_f * 7 + in_f)
        w = (torch.randn(out_f, in_f, generator=gen) * 0.02).to(device)
        for fmt in formats:
            if run.elapsed() > deadline:
                run.skip(f"gemm {out_f}x{in_f} {fmt} and later", "GEMM share of the budget used", budget=True)
                break
            _sweep_format(run, device, cfg, fmt, w, rotate, bw, peaks, points, probe[fmt].get("options", {}))
            run.save()
            free_memory()
        del w
        free_memory()


def _sweep_format(run, device, cfg, fmt, w, rotate, bw, peaks, points, options: dict) -> None:
    """All batch sizes of one format on one weight shape."""
    out_f, in_f = w.shape
    try:
        qw = kernels.quantize(fmt, w, group_size=cfg["group_size"] if fmt == "int4_wo" else None, **options)
        err = kernels.check(qw, torch.randn(8, in_f, device=device), w)
        copies = rotating_copies(qw, rotate)
    except Exception as e:  # noqa: BLE001
        points.append({"format": fmt, "out": out_f, "in": in_f, "error": _error_text(e)})
        run.log(f"gemm {fmt} {out_f}x{in_f}: prepare failed {type(e).__name__}")
        return
    cap = BATCH_CAP.get((device.type, fmt), 1 << 30)
    line = []
    for batch in cfg["batches"]:
        if batch > cap:
            points.append({"format": fmt, "out": out_f, "in": in_f, "batch": batch,
                           "skipped": f"batch above {cap}: {kernels.native_note(fmt, device)[1]}"})
            continue
        p = gemm_point(copies, batch, bw, peaks, device, cfg["point_s"])
        p["check"] = err
        points.append(p)
        line.append(f"{batch}:{p.get('tflops', float('nan')):.2g}")
    run.log(f"gemm {fmt:9s} {out_f}x{in_f} copies={len(copies)} err={err['kernel_error']:.1e} TFLOP/s by batch "
            + " ".join(line))
    del copies, qw


# ----------------------------------------------------------------------------------------------- decode
def build_random_llama(device: torch.device, shape: dict, dtype: torch.dtype):
    """A LlamaForCausalLM of the given shape with random weights, built directly on the device."""
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    config = LlamaConfig(**shape, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    return model.eval().requires_grad_(False)


def decode_format(run: Run, model, device, cfg: dict, fmt: str, base_fmt: str, graphs: bool,
                  probe_options: dict | None = None) -> dict:
    """Convert the model's decoder linears to `fmt`, time prefill and decode per batch, convert back."""
    res = {"format": fmt, "batches": {}, "act_dtype": str(kernels.default_act_dtype(fmt, device)).replace("torch.", "")}
    t0 = time.monotonic()
    originals, work = None, model
    act = kernels.default_act_dtype(fmt, device)
    if fmt != base_fmt and device.type == "cpu":  # small model: a copy in the format's activation dtype
        work = copy.deepcopy(model).to(act)
    if fmt not in (base_fmt, "fp32", "bf16", "fp16"):
        opts = {"group_size": cfg["group_size"], "keep_codes": False} if fmt == "int4_wo" else {}
        opts.update(probe_options or {})
        originals = kernels.swap_linears(work, fmt, **opts)
        if work is not model:
            originals = None  # the copy is thrown away; nothing to restore
    try:
        res["convert_s"] = time.monotonic() - t0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            res["kept_aside_bytes"] = sum(p.numel() * p.element_size() for lin in (originals or {}).values()
                                          for p in lin.parameters())
        res["weight_bytes"] = model_weight_bytes(work)
        res["bytes_read_per_token"] = bytes_read_per_token(work)
        vocab = work.config.vocab_size
        cap = DECODE_BATCH_CAP.get((device.type, fmt), 1 << 30)
        for batch in cfg["decode_batches"]:
            if batch > cap:
                run.skip(f"decode {fmt} batch {batch}", f"batch above {cap}: {kernels.native_note(fmt, device)[1]}")
                continue
            if run.left() < cfg.get("decode_min_s", 8):
                run.skip(f"decode {fmt} batch {batch}", "budget", budget=True)
                continue
            res["batches"][str(batch)] = _decode_batch(run, work, device, cfg, fmt, batch, vocab, graphs)
            if device.type == "cuda":
                res["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
                res["peak_note"] = "includes the bf16 linears kept aside to restore (kept_aside_bytes)"
            run.save()
    finally:
        if originals is not None:
            kernels.restore_linears(work, originals)
        del work
        free_memory()
    return res


def _decode_batch(run, model, device, cfg, fmt, batch, vocab, graphs) -> dict:
    """Prefill (batch 1 only) and decode at one batch size, eager and (CUDA) graph."""
    out = {}
    with torch.no_grad():
        if batch == 1:
            out["prefill"] = _guarded(time_prefill, model, device, batch, cfg["prompt"], vocab)
        timing = (device, batch, cfg["prompt"], cfg["new_tokens"], vocab, cfg["mode_s"])
        if batch == 1 or not graphs:
            out["eager"] = _guarded(time_decode_eager, model, *timing)
        if graphs:
            out["graph"] = _guarded(time_decode_graph, model, *timing)
            if "error" in out["graph"] and "eager" not in out:  # no graph for this format: eager instead
                out["eager"] = _guarded(time_decode_eager, model, *timing)
    eager, graph = out.get("eager", {}).get("tokens_per_s"), out.get("graph", {}).get("tokens_per_s")
    if eager and graph:
        out["graph_over_eager"] = graph / eager  # what removing launch overhead is worth at this batch
    msg = " ".join(f"{k}={v.get('tokens_per_s', float('nan')):.1f}tok/s" for k, v in out.items()
                   if isinstance(v, dict))
    run.log(f"decode {fmt:9s} batch {batch}: {msg}")
    return out


def _guarded(fn, *args) -> dict:
    """fn(*args), or {'error': ...} if it raised (device state is synchronized and cleaned either way)."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001
        return {"error": _error_text(e)[-1500:]}
    finally:
        free_memory()


def decode_section(run: Run, device: torch.device, cfg: dict, probe: dict, ceil: dict) -> None:
    """End-to-end decode per format: build the model once, convert its linears in place per format."""
    dec = run.results.setdefault("decode", {"results": []})
    model, base = _decode_model(run, device, cfg, dec)
    graphs = device.type == "cuda"
    dec["launch_overhead_removed_by"] = "CUDA graph of one decode step (manual capture)" if graphs else \
        "not on a CPU (no CUDA graphs)"
    for fmt in cfg["decode_formats"]:
        if not probe.get(fmt, {}).get("runs"):
            run.skip(f"decode {fmt}", probe.get(fmt, {}).get("reason", "not in probe"))
            continue
        if run.left() < cfg.get("decode_min_s", 8):
            run.skip(f"decode {fmt}", "budget", budget=True)
            continue
        try:
            opts = probe[fmt].get("options", {})
            dec["results"].append(decode_format(run, model, device, cfg, fmt, base, graphs, opts))
        except Exception as e:  # noqa: BLE001
            dec["results"].append({"format": fmt, "error": _error_text(e)})
            run.log(f"decode {fmt} failed: {type(e).__name__}: {str(e)[:200]}")
        run.save()
    dec["floors"] = decode_floors(dec, ceil)
    if device.type == "cuda":
        dec["targets"] = decode_targets(dec)
    run.model = model  # kept for the compile section


def _decode_model(run, device, cfg, dec):
    """The decode model and its own format: random 8B-shaped bf16 LLaMA on GPU, the offline model on CPU."""
    t0 = time.monotonic()
    if cfg["decode_model"] == "offline":
        from lessons_lib import models  # noqa: PLC0415
        model, _ = models.load_model()
        model = model.eval().requires_grad_(False)
        dec["model"] = {"name": "SmolLM2-135M-Instruct (offline, real weights)", "dtype": "float32"}
        base = "fp32"
    else:
        shape = cfg["llama_shape"]
        model = build_random_llama(device, shape, torch.bfloat16)
        dec["model"] = {"name": "LLaMA-3-8B-shaped LlamaForCausalLM" if shape == LLAMA_8B else "tiny LLaMA",
                        "shape": shape, "dtype": "bfloat16", "random_weights": True,
                        "statement": "RANDOM weights: speed only, the generated tokens mean nothing"}
        base = "bf16"
    dec["model"].update(build_s=round(time.monotonic() - t0, 1), parameters=sum(p.numel() for p in model.parameters()),
                        prompt_tokens=cfg["prompt"], new_tokens=cfg["new_tokens"],
                        quantized="decoder Linear layers (q, k, v, o, gate, up, down); embeddings, norms and "
                                  "lm_head stay in the base dtype")
    run.log(f"decode model: {dec['model']['name']} built in {dec['model']['build_s']} s")
    return model, base


def decode_floors(dec: dict, ceil: dict) -> dict:
    """Per format: weight bytes per token / measured bandwidth = least batch-1 step time; achieved fraction."""
    bw, _ = ceiling_values(ceil)
    floors = {}
    for r in dec["results"]:
        if "bytes_read_per_token" not in r or not bw:
            continue
        floor_s = r["bytes_read_per_token"] / bw
        best = best_tokens_per_s(r, 1)
        floors[r["format"]] = {"bytes_read_per_token": r["bytes_read_per_token"], "floor_step_s": floor_s,
                               "floor_tokens_per_s": 1 / floor_s, "best_batch1_tokens_per_s": best,
                               "fraction_of_floor": _finite(best * floor_s) if best else None}
    return floors


def best_tokens_per_s(r: dict, batch: int) -> float | None:
    """Best decode tokens/s of a format at a batch size over the timing modes that worked."""
    modes = r.get("batches", {}).get(str(batch), {})
    vals = [m["tokens_per_s"] for k, m in modes.items()
            if k != "prefill" and isinstance(m, dict) and "tokens_per_s" in m]
    vals += [r["compiled"]["tokens_per_s"]] if batch == 1 and "tokens_per_s" in r.get("compiled", {}) else []
    return max(vals) if vals else None


def decode_targets(dec: dict) -> dict:
    """The issue's bars, measured: bf16 >= 70% of its floor, best 4-bit >= 2.5x bf16, FP8 >= 1.6x (batch 1)."""
    by = {r["format"]: r for r in dec["results"] if "batches" in r}
    bf16 = best_tokens_per_s(by["bf16"], 1) if "bf16" in by else None
    out = {}
    frac = dec.get("floors", {}).get("bf16", {}).get("fraction_of_floor")
    out["bf16_fraction_of_floor"] = _bar(frac, TARGETS["bf16_fraction_of_floor"])
    four = {f: best_tokens_per_s(by[f], 1) for f in ("int4_wo", "nf4") if f in by}
    four = {f: v for f, v in four.items() if v}
    if bf16 and four:
        f = max(four, key=four.get)
        out["best_4bit_speedup"] = {**_bar(four[f] / bf16, TARGETS["best_4bit_speedup"]), "format": f}
    else:
        out["best_4bit_speedup"] = {"measured": None, "target": TARGETS["best_4bit_speedup"], "met": None}
    fp8 = best_tokens_per_s(by["fp8"], 1) if "fp8" in by else None
    out["fp8_speedup"] = _bar(fp8 / bf16 if fp8 and bf16 else None, TARGETS["fp8_speedup"])
    out["speedup_vs_bf16_batch1"] = {f: _finite(best_tokens_per_s(r, 1) / bf16) for f, r in by.items()
                                     if bf16 and best_tokens_per_s(r, 1)}
    out["compared"] = "best batch-1 decode tokens/s of each format over eager, CUDA graph and torch.compile"
    return out


def _bar(measured: float | None, target: float) -> dict:
    return {"measured": _finite(measured), "target": target, "met": None if measured is None else measured >= target}


# ----------------------------------------------------------------------------------------------- compile
def compile_section(run: Run, device: torch.device, cfg: dict) -> None:
    """Batch-1 decode under torch.compile(mode='reduce-overhead') per format: compile time and tokens/s.

    Compiling fuses the small kernels around each matmul (e.g. the per-token activation quantization of fp8 and
    int8 W8A8) and replays the step as one CUDA graph.
    """
    model = run.model
    out = run.results.setdefault("compile", {"mode": "reduce-overhead", "fullgraph": False, "batch": 1})
    if model is None:
        out["error"] = "no decode model (decode section did not build one)"
        return
    decoded = {r.get("format"): r for r in run.results.get("decode", {}).get("results", [])}
    for fmt in cfg.get("compile_formats", ["bf16"]):
        if fmt not in decoded or "batches" not in decoded[fmt]:
            run.skip(f"compile {fmt}", "its eager/graph decode did not run")
            continue
        if run.left() < cfg["compile_min_s"]:
            run.skip(f"compile {fmt}", "budget", budget=True)
            continue
        originals = None
        try:
            if fmt not in ("fp32", "bf16", "fp16"):
                opts = {"group_size": cfg["group_size"], "keep_codes": False} if fmt == "int4_wo" else {}
                opts.update(run.results.get("probe", {}).get(fmt, {}).get("options", {}))
                originals = kernels.swap_linears(model, fmt, **opts)
            torch._dynamo.reset()
            res = out[fmt] = _compile_one(run, model, device, cfg, fmt)
            decoded[fmt]["compiled"] = {"tokens_per_s": res["tokens_per_s"], "tokens_per_s_iqr": res["tokens_per_s_iqr"]}
        except Exception as e:  # noqa: BLE001  (a format that does not compile is a result too)
            out[fmt] = {"error": _error_text(e)[-1500:]}
            run.log(f"compile {fmt} failed: {type(e).__name__}: {str(e)[:200]}")
        finally:
            if originals is not None:
                kernels.restore_linears(model, originals)
            torch._dynamo.reset()
            free_memory()
            run.save()


def _compile_one(run: Run, model, device: torch.device, cfg: dict, fmt: str) -> dict:
    """Compile the model as it stands (linears already swapped to fmt) and time batch-1 decode steps."""
    vocab, batch = model.config.vocab_size, 1
    res = {}
    with torch.no_grad():
        compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)
        cache = new_cache(model, batch, cfg["prompt"] + cfg["new_tokens"] + 16, device)
        set_cache_length(cache, cfg["prompt"])
        tok = torch.randint(0, vocab, (batch, 1), device=device)
        t0 = time.monotonic()
        for _ in range(3):  # first calls compile and record the CUDA graph
            tok = _compiled_step(compiled, cache, tok)
        bench.synchronize(device)
        res["compile_and_warmup_s"] = time.monotonic() - t0
        run.log(f"compile {fmt}: first 3 steps took {res['compile_and_warmup_s']:.1f} s")
        state = {"tok": tok}

        def once(i):
            state["tok"] = _compiled_step(compiled, cache, state["tok"])

        secs = bench.samples(once, warmup=0, repeats=cfg["new_tokens"], device=device)
    res.update(decode_result(secs, batch, cache))
    run.log(f"compile {fmt}: batch 1 {res['tokens_per_s']:.1f} tok/s")
    return res


def _compiled_step(compiled, cache, tok):
    """One compiled decode step (cudagraph trees need the output cloned before the next replay)."""
    logits = compiled(input_ids=tok, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
    return logits[:, -1].argmax(-1, keepdim=True).clone()


# ----------------------------------------------------------------------------------------------- summary
def summary(run: Run) -> str:
    """A short plain-text table of the headline figures (what the stdout tail shows)."""
    r = run.results
    lines = [f"== summary: {r.get('environment', {}).get('name')} ({r.get('slug')}), "
             f"{r.get('elapsed_s', run.elapsed()):.0f} s, complete={r.get('complete')}"]
    ceil = r.get("ceilings", {})
    bw = (ceil.get("bandwidth") or {})
    if "gb_per_s" in bw:
        lines.append(f"bandwidth {bw['gb_per_s']:.0f} +- {bw['gb_per_s_iqr']:.0f} GB/s (read+written)")
    peaks = " ".join(f"{d}={v['tflops']:.3g}" for d, v in ceil.get("matmul", {}).items() if "tflops" in v)
    lines.append(f"matmul peak TFLOP/s: {peaks}  vs datasheet: {ceil.get('measured_vs_datasheet')}")
    probe = r.get("probe", {})
    lines.append("probe: " + " ".join(f"{f}={'native' if p.get('native') else 'runs' if p.get('runs') else 'NO'}"
                                       for f, p in probe.items()))
    lines += _gemm_summary(r.get("gemm", []))
    lines += _decode_summary(r.get("decode", {}))
    for fmt, c in r.get("compile", {}).items():
        if isinstance(c, dict):
            lines.append(f"compile {fmt}: {c['tokens_per_s']:.1f} tok/s after {c['compile_and_warmup_s']:.0f} s"
                         if "tokens_per_s" in c else f"compile {fmt}: {str(c.get('error'))[-200:]}")
    if "compile" in r.get("errors", {}):
        lines.append(f"compile: {str(r['errors']['compile'])[-200:]}")
    if r.get("errors"):
        lines.append("errors in: " + ", ".join(r["errors"]))
    if r.get("skipped"):
        lines.append(f"skipped: {len(r['skipped'])} items, first: {r['skipped'][0]}")
    return "\n".join(lines)


def _gemm_summary(points: list) -> list[str]:
    """Per shape and format: batch-1 GB/s and largest-batch TFLOP/s, with roofline fractions."""
    lines = ["gemm (format shape: batch1 GB/s frac | max batch TFLOP/s frac)"]
    groups = {}
    for p in points:
        if "tflops" in p:
            groups.setdefault((p["format"], p["out"], p["in"]), []).append(p)
    for (fmt, o, i), ps in groups.items():
        lo, hi = ps[0], ps[-1]
        lines.append(f"  {fmt:9s} {o}x{i}: b{lo['batch']} {lo['gb_per_s']:.0f} GB/s "
                     f"{lo.get('fraction_of_roofline') or 0:.2f} | b{hi['batch']} {hi['tflops']:.1f} TFLOP/s "
                     f"{hi.get('fraction_of_roofline') or 0:.2f}")
    return lines


def _decode_summary(dec: dict) -> list[str]:
    if not dec:
        return []
    lines = [f"decode: {dec.get('model', {}).get('name')} (tokens/s; eager | graph)"]
    for r in dec.get("results", []):
        if "batches" not in r:
            lines.append(f"  {r.get('format')}: error")
            continue
        cells = []
        for b, m in r["batches"].items():
            e, g = m.get("eager", {}).get("tokens_per_s"), m.get("graph", {}).get("tokens_per_s")
            cells.append(f"b{b} {_fmt(e)}|{_fmt(g)}")
        pre = r["batches"].get("1", {}).get("prefill", {}).get("tokens_per_s")
        lines.append(f"  {r['format']:9s} {r['weight_bytes'] / 1e9:.2f} GB  prefill {_fmt(pre)} tok/s  "
                     + "  ".join(cells))
    for f, fl in dec.get("floors", {}).items():
        lines.append(f"  floor {f}: {fl['floor_tokens_per_s']:.0f} tok/s, reached {fl['fraction_of_floor']}")
    for k, t in dec.get("targets", {}).items():
        if not isinstance(t, dict) or "target" not in t:  # e.g. the "compared" note, the per-format speedups
            continue
        lines.append(f"  target {k}: measured {t.get('measured')} vs {t.get('target')} -> met={t.get('met')}")
    return lines


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.1f}"


# ----------------------------------------------------------------------------------------------- main
def config(args) -> dict:
    """The preset, shrunk by --quick, with the command-line overrides."""
    cfg = dict(PRESETS[args.preset])
    cfg["llama_shape"] = LLAMA_8B
    if args.quick:
        cfg.update(QUICK, llama_shape=LLAMA_TINY)
    if args.budget_s:
        cfg["budget_s"] = args.budget_s
    if args.no_compile:
        cfg["compile"] = False
    return cfg


def choose_threads(device: torch.device, threads: int | None) -> str:
    """Set torch's CPU threads: as asked, else only the cores other processes leave free (returns a note).

    Threads that wait on each other at every op stall whenever one of them is descheduled: on a 2-core
    machine already running one busy process, two threads made decode 10-40x slower than one thread.
    """
    if threads:
        torch.set_num_threads(threads)
        return f"torch CPU threads set to {threads} (--threads)"
    if device.type != "cpu" or not hasattr(os, "getloadavg"):
        return ""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    free = max(1, int(cores - load + 0.5))
    if free < torch.get_num_threads():
        torch.set_num_threads(free)
        return (f"torch CPU threads set to {free}: load average {load:.1f} on {cores} cores leaves {free} "
                "free (pass --threads to override)")
    return ""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="gpu" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="data/bench", help="folder for <device-slug>.json and .log")
    p.add_argument("--device", default=None, help="cuda or cpu (default: the preset's)")
    p.add_argument("--quick", action="store_true", help="tiny shapes and model: a smoke test of every code path")
    p.add_argument("--budget-s", type=float, default=None, help="wall-time budget from start (default: preset's)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile section")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if args.preset == "gpu" else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here: use --device cpu (with --quick for the GPU preset)", flush=True)
        return 2
    if args.preset == "gpu" and device.type == "cpu" and not args.quick:
        print("the GPU preset on a CPU runs as --quick (an 8B model does not fit this lane)", flush=True)
        args.quick = True
    cfg = config(args)
    threads_note = choose_threads(device, args.threads)
    name = kernels.device_name(device)
    slug = slugify(name) if device.type == "cuda" else "cpu-" + slugify(name)
    if args.quick:
        slug += "-quick"
    run = Run(Path(args.out), slug, cfg["budget_s"])
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, cfg["budget_s"] + 5 - run.elapsed()))
    torch.manual_seed(0)
    code = 0
    try:
        benchmark(run, device, cfg, args, slug, threads_note)
    except BudgetExceeded:
        run.results["notes"].append("stopped by the hard deadline (--budget-s + 5 s)")
        code = 3
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        run.save()
        text = summary(run)
        print(text, flush=True)
        run.log_file.write(text + "\n")
        run.log_file.close()
        print(f"results: {run.path}", flush=True)
    return code


def benchmark(run: Run, device: torch.device, cfg: dict, args, slug: str, threads_note: str = "") -> None:
    """The sections in order; each one guarded, timed and saved."""
    r = run.results
    r.update(slug=slug, preset=args.preset, quick=args.quick, config={k: v for k, v in cfg.items()})
    if threads_note:
        r["notes"].append(threads_note)
    r["notes"].append("every figure: median over timed runs after warm-up, with its interquartile range (iqr)")
    with run.section("environment") as ok:
        r["environment"] = environment(device)
        run.log(f"{r['environment']['name']} torch {torch.__version__} bnb {r['environment']['bitsandbytes']}")
        if "warning" in r["environment"]:
            run.log("WARNING " + r["environment"]["warning"])
    with run.section("probe") as ok:
        r["probe"] = kernels.probe(device)
        for row in kernels.probe_table(r["probe"]):
            run.log(f"probe {row.fmt:9s} runs={row.runs!s:5s} native={row.native!s:5s} {row.detail[:110]}")
    probe = r.get("probe", {})
    with run.section("ceilings", need_s=5) as ok:
        if ok:
            r["ceilings"] = ceilings(run, device, cfg, r.get("environment", {"name": ""}))
    ceil = r.get("ceilings", {})
    with run.section("gemm", need_s=10) as ok:
        if ok:
            gemm_sweep(run, device, cfg, probe, ceil, r.get("environment", {}))
    with run.section("decode", need_s=20) as ok:
        if ok:
            decode_section(run, device, cfg, probe, ceil)
    if cfg["compile"]:
        with run.section("compile", need_s=cfg["compile_min_s"]) as ok:
            if ok:
                compile_section(run, device, cfg)
        if "decode" in r:
            r["decode"]["floors"] = decode_floors(r["decode"], ceil)
            if device.type == "cuda":
                r["decode"]["targets"] = decode_targets(r["decode"])
    else:
        run.skip("compile", "not in this preset (CPU lane) or --no-compile")
    r["finished"] = True
    r["complete"] = not r["errors"] and not any(s["for_budget"] for s in r["skipped"])


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # do not wait on compile worker processes or CUDA teardown
