#!/usr/bin/env python3
"""Lesson 08, headless: device ceilings, GEMM sweep per weight format, end-to-end decode; one JSON per device.

    python scripts/benchmark.py --preset cpu --out bench-results     # 2-core CPU lane, about 8 minutes
    python scripts/benchmark.py --preset gpu --out bench-results     # H100 / H200, under 5 minutes
    python scripts/benchmark.py --preset gpu --device cpu --quick --out /tmp/b   # dry run of the GPU code paths

Needs lessons_lib installed (`pip install .` or `make setup`). The measurements live in lessons_lib.throughput;
this script only orders them. Every section runs inside a guard: an error is written into the results and the run
goes on; the JSON is rewritten after every section, so a run cut short keeps what it measured. --budget-s bounds
the run cooperatively: the budget is checked between measurements, and what would not fit is listed as skipped.
The committed results (lessons_lib/resources/bench/<slug>.json) are files this script wrote.
"""
from __future__ import annotations

import time

T_START = time.monotonic()  # the budget counts from here, before the heavy imports

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from lessons_lib import bench, kernels, probing  # noqa: E402
from lessons_lib import throughput as tp  # noqa: E402

LLAMA_8B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                intermediate_size=14336, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192)
LLAMA_TINY = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=512, vocab_size=1024, rope_theta=500000.0, max_position_embeddings=512)
PRESETS = {
    "gpu": dict(budget_s=270, shapes=[(4096, 4096), (14336, 4096)], batches=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
                bw_bytes=1 << 30, matmul_n=8192, peak_dtypes=["fp32", "bf16", "fp16", "int8", "fp8"],
                point_s=0.05, gemm_share=0.30, group_size=128, decode_model="llama-8b-random",
                decode_formats=["bf16", "int4_weight_only", "fp8_w8a8", "int8_w8a8", "nf4", "int8_weight_only"],
                decode_batches=[1, 8, 32], prompt=128, new_tokens=64, mode_s=6.0, compile=True, compile_min_s=60,
                compile_formats=["bf16", "int4_weight_only", "fp8_w8a8", "int8_w8a8"]),
    "cpu": dict(budget_s=420, shapes=[(2048, 2048), (1536, 576)], batches=[1, 2, 4, 8, 16, 32, 64],
                bw_bytes=256 << 20, matmul_n=1024, peak_dtypes=["fp32", "bf16", "int8"],
                point_s=0.15, gemm_share=0.45, group_size=64, decode_model="offline",
                decode_formats=["fp32", "bf16", "int8_weight_only", "int4_weight_only", "int8_w8a8"],
                decode_batches=[1, 4], prompt=64, new_tokens=32, mode_s=8.0, compile=False, compile_min_s=0,
                compile_formats=[], byte_law_compile=True,
                byte_law=["fp32", "bf16", "int8_weight_only", "int4_weight_only"]),
}
QUICK = dict(shapes=[(512, 256), (1024, 256)], batches=[1, 4, 32], bw_bytes=32 << 20, matmul_n=256,
             rotate_bytes=4 << 20, point_s=0.02, decode_batches=[1, 2], prompt=16, new_tokens=8, mode_s=2.0,
             compile_min_s=0, compile_formats=["int4_weight_only"])  # one compile: the path, not every format


class Run:
    """Results, log and budget of one benchmark run; writes the JSON after every section."""

    def __init__(self, out_dir: Path, slug: str, budget_s: float):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path, self.log_path = out_dir / f"{slug}.json", out_dir / f"{slug}.log"
        self.log_file = open(self.log_path, "w")  # noqa: SIM115  (closed by close())
        self.budget = bench.Budget(budget_s, T_START, self.log)
        self.results = {"schema": 1, "finished": False, "complete": False, "errors": {},
                        "skipped": self.budget.skipped, "section_s": {}, "notes": []}

    def log(self, *parts) -> None:
        line = f"[{self.budget.elapsed():6.1f}s] " + " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def save(self) -> None:
        self.results["elapsed_s"] = round(self.budget.elapsed(), 1)
        tmp = self.path.with_suffix(".json.partial")
        tmp.write_text(json.dumps(tp.strict_json(self.results), indent=1, default=str))
        tmp.replace(self.path)

    @contextmanager
    def section(self, name: str, need_s: float = 0.0):
        """Run a block if `need_s` seconds of the budget are left; record its error, time it, save."""
        if not self.budget.allows(name, need_s):
            yield False
            return
        t0 = time.monotonic()
        self.log(f"== {name}")
        try:
            yield True
        except Exception as e:  # noqa: BLE001  (every failure is data; the run goes on)
            self.results["errors"][name] = tp.error_text(e)
            self.log(f"!! {name} failed: {type(e).__name__}: {e}".splitlines()[0][:300])
        finally:
            self.results["section_s"][name] = round(time.monotonic() - t0, 2)
            self.save()

    def close(self, text: str) -> None:
        print(text, flush=True)
        self.log_file.write(text + "\n")
        self.log_file.close()


def slugify(text: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def decode_model(device: torch.device, cfg: dict) -> tuple:
    """(model, its own format, description): random 8B-shaped bf16 LLaMA on a GPU, the offline model on a CPU."""
    t0 = time.monotonic()
    if cfg["decode_model"] == "offline":
        from lessons_lib import models  # noqa: PLC0415

        model = models.load_model()[0].eval().requires_grad_(False)
        info, base = {"name": "SmolLM2-135M-Instruct (offline, real weights)", "dtype": "float32"}, "fp32"
    else:
        model, base = tp.random_llama(device, cfg["llama_shape"], torch.bfloat16), "bf16"
        info = {"name": "LLaMA-3-8B-shaped LlamaForCausalLM" if cfg["llama_shape"] == LLAMA_8B else "tiny LLaMA",
                "shape": cfg["llama_shape"], "dtype": "bfloat16", "random_weights": True,
                "statement": "RANDOM weights: speed only, the generated tokens mean nothing"}
    info.update(build_s=round(time.monotonic() - t0, 1), parameters=sum(p.numel() for p in model.parameters()),
                prompt_tokens=cfg["prompt"], new_tokens=cfg["new_tokens"],
                quantized="decoder Linear layers (q, k, v, o, gate, up, down); embeddings, norms and lm_head stay "
                          "in the base dtype")
    return model, base, info


def decode_section(run: Run, device: torch.device, cfg: dict, probe: dict, ceil: dict):
    """End-to-end decode per format: build the model once, convert its linears per format; returns the model."""
    dec = run.results.setdefault("decode", {"results": []})
    model, base, dec["model"] = decode_model(device, cfg)
    run.log(f"decode model: {dec['model']['name']} built in {dec['model']['build_s']} s")
    dec["launch_overhead_removed_by"] = "CUDA graph of one decode step (manual capture)" if device.type == "cuda" \
        else "not on a CPU (no CUDA graphs)"
    for fmt in cfg["decode_formats"]:
        if not probe.get(fmt, {}).get("runs"):
            run.budget.skip(f"decode {fmt}", probe.get(fmt, {}).get("reason", "not in the probe"))
        elif run.budget.allows(f"decode {fmt}", 8):
            dec["results"].append(tp.guarded(tp.decode_format, model, fmt, base, cfg["decode_batches"], cfg["prompt"],
                                             cfg["new_tokens"], cfg["mode_s"], run.budget, cfg["group_size"],
                                             probe[fmt].get("options", {})))
            dec["results"][-1].setdefault("format", fmt)
            run.save()
    dec["floors"] = tp.decode_floors(dec, ceil)
    return model, base


def compile_section(run: Run, model, base: str, cfg: dict, probe: dict) -> None:
    """Batch-1 decode under torch.compile per format: compile time and tokens/s, beside eager."""
    out = run.results.setdefault("compile", {"mode": "reduce-overhead", "fullgraph": False, "batch": 1})
    decoded = {r["format"]: r for r in run.results.get("decode", {}).get("results", [])}
    for fmt in cfg["compile_formats"]:
        if "batches" not in decoded.get(fmt, {}):
            run.budget.skip(f"compile {fmt}", "its eager/graph decode did not run")
        elif run.budget.allows(f"compile {fmt}", cfg["compile_min_s"]):
            work, originals = tp.in_format(model, fmt, base, cfg["group_size"], probe[fmt].get("options", {}))
            try:
                out[fmt] = tp.guarded(tp.compiled_decode, work, cfg["prompt"], cfg["new_tokens"], log=run.log)
                if "tokens_per_s" in out[fmt]:
                    decoded[fmt]["compiled"] = {k: out[fmt][k] for k in ("tokens_per_s", "tokens_per_s_iqr")}
                    run.log(f"compile {fmt}: batch 1 {out[fmt]['tokens_per_s']:.1f} tok/s")
            finally:
                if originals is not None:
                    kernels.restore_linears(work, originals)
                run.save()


def summary(r: dict) -> str:
    """A short plain-text table of the headline figures (what the stdout tail shows)."""
    ceil, dec = r.get("ceilings", {}), r.get("decode", {})
    lines = [f"== summary: {r.get('environment', {}).get('name')} ({r.get('slug')}), {r.get('elapsed_s', 0):.0f} s, "
             f"complete={r.get('complete')}"]
    if "gb_per_s" in (ceil.get("bandwidth") or {}):
        lines.append(f"bandwidth {ceil['bandwidth']['gb_per_s']:.0f} +- {ceil['bandwidth']['gb_per_s_iqr']:.0f} GB/s")
    peaks = " ".join(f"{d}={v['tflops']:.3g}" for d, v in ceil.get("matmul", {}).items() if "tflops" in v)
    lines.append(f"matmul peak TFLOP/s: {peaks}  vs datasheet: {ceil.get('measured_vs_datasheet')}")
    lines.append("probe: " + " ".join(f"{f}={'native' if p.get('native') else 'runs' if p.get('runs') else 'NO'}"
                                       for f, p in r.get("probe", {}).items()))
    groups = {}
    for p in r.get("gemm", []):
        if "tflops" in p:
            groups.setdefault((p["format"], p["out"], p["in"]), []).append(p)
    lines += [f"  gemm {f:16s} {o}x{i}: b{ps[0]['batch']} {ps[0]['gb_per_s']:.0f} GB/s | b{ps[-1]['batch']} "
              f"{ps[-1]['tflops']:.2f} TFLOP/s" for (f, o, i), ps in groups.items()]
    for res in dec.get("results", []):
        cells = [f"b{b} " + "|".join(f"{m.get(k, {}).get('tokens_per_s') or 0:.1f}" for k in ("eager", "graph"))
                 for b, m in res.get("batches", {}).items()]
        lines.append(f"  decode {res['format']:16s} " + ("  ".join(cells) if cells else "error") + " tok/s eager|graph")
    lines += [f"  floor {f}: {fl['floor_tokens_per_s']:.0f} tok/s, reached {fl['fraction_of_floor']}"
              for f, fl in dec.get("floors", {}).items()]
    lines += [f"  target {k}: measured {t.get('measured')} vs {t.get('target')} -> met={t.get('met')}"
              for k, t in dec.get("targets", {}).items() if isinstance(t, dict) and "target" in t]
    lines += [f"compile {f}: {c.get('tokens_per_s') or 0:.1f} tok/s" for f, c in r.get("compile", {}).items()
              if isinstance(c, dict)]
    lines += [f"  byte law {b['format']}: " + ", ".join(f"{m} {100 * b[f'{m}_fraction_of_floor']:.0f}% of floor, "
              f"{b[f'{m}_speedup']:.2f}x fp32" for m in ("eager", "compiled") if m in b) + f" (bytes {b['bytes_ratio']:.2f}x)"
              for b in dec.get("byte_law", [])]
    if r.get("errors"):
        lines.append("errors in: " + ", ".join(r["errors"]))
    if r.get("skipped"):
        lines.append(f"skipped: {len(r['skipped'])} items, first: {r['skipped'][0]}")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="gpu" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="bench-results", help="folder for <device-slug>.json and .log")
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
    quick = args.quick or (args.preset == "gpu" and device.type == "cpu")  # an 8B model does not fit the CPU lane
    cfg = {**PRESETS[args.preset], "llama_shape": LLAMA_8B, **(dict(QUICK, llama_shape=LLAMA_TINY) if quick else {})}
    cfg.update({"budget_s": args.budget_s or cfg["budget_s"]},
               **({"compile": False, "byte_law_compile": False} if args.no_compile else {}))
    threads_note = tp.set_cpu_threads(device, args.threads)
    slug = slugify(kernels.device_name(device))
    slug = (slug if device.type == "cuda" else "cpu-" + slug) + ("-quick" if quick else "")
    run = Run(Path(args.out), slug, cfg["budget_s"])
    torch.manual_seed(0)
    try:
        benchmark(run, device, cfg, dict(preset=args.preset, quick=quick, slug=slug), threads_note)
    finally:
        run.save()
        run.close(summary(run.results) + f"\nresults: {run.path}")
    return 0


def benchmark(run: Run, device: torch.device, cfg: dict, meta: dict, threads_note: str = "") -> None:
    """The sections in order; each one guarded, timed and saved."""
    r, budget = run.results, run.budget
    r.update(meta, config=cfg)
    r["notes"] += [threads_note] if threads_note else []
    r["notes"].append("every figure: median over timed runs after warm-up, with its interquartile range (iqr)")
    with run.section("environment"):
        r["environment"] = tp.environment(device)
        run.log(f"{r['environment']['name']} torch {torch.__version__} bnb {r['environment']['bitsandbytes']}")
        if "warning" in r["environment"]:
            run.log("WARNING " + r["environment"]["warning"])
    with run.section("probe"):
        r["probe"] = probing.probe(device)
        for row in probing.probe_table(r["probe"]):
            run.log(f"probe {row.fmt:16s} runs={row.runs!s:5s} native={row.native!s:5s} {row.detail[:100]}")
    probe, env = r.get("probe", {}), r.get("environment", {})
    with run.section("ceilings", need_s=5) as ok:
        if ok:
            r["ceilings"] = tp.ceilings(device, cfg["bw_bytes"], cfg["matmul_n"], cfg["peak_dtypes"], run.log)
    ceil = r.get("ceilings", {})
    with run.section("gemm", need_s=10) as ok:
        if ok:
            cache = env.get("l2_cache_bytes") or env.get("l3_cache_bytes") or 64 << 20
            rotate = cfg.get("rotate_bytes") or max(4 * cache, 256 << 20 if device.type == "cuda" else 128 << 20)
            until = budget.elapsed() + cfg["gemm_share"] * budget.left()
            r["gemm_setup"] = {"rotate_bytes_at_least": rotate, "deadline_elapsed_s": round(until, 1),
                               "bytes_model": "stored weight (values + scales) + input + output, each once",
                               "timers": "eager: CUDA events around back-to-back calls (host clock on CPU); "
                                         "graph: one CUDA graph replaying a pass over the rotating copies"}
            formats = [f for f in kernels.FORMATS if probe.get(f, {}).get("runs")]
            tp.gemm_sweep(device, cfg["shapes"], cfg["batches"], formats, probe, *tp.ceiling_values(ceil), budget,
                          until, rotate, cfg["point_s"], cfg["group_size"], points=r.setdefault("gemm", []))
    model = None
    with run.section("decode", need_s=20) as ok:
        if ok:
            model, base = decode_section(run, device, cfg, probe, ceil)
    if cfg["compile"] and model is not None:
        with run.section("compile", need_s=cfg["compile_min_s"]) as ok:
            if ok:
                compile_section(run, model, base, cfg, probe)
        r["decode"]["floors"] = tp.decode_floors(r["decode"], ceil)  # again: compiled steps may be the best
    elif not cfg["compile"]:
        budget.skip("compile", "not in this preset (CPU lane) or --no-compile")
    read_bw = (ceil.get("read_bandwidth") or {}).get("gb_per_s")
    if cfg.get("byte_law") and model is not None and read_bw:
        with run.section("byte_law", need_s=30) as ok:  # batch-1 decode vs its read floor, eager beside compiled
            if ok:
                r["decode"]["byte_law"] = tp.decode_vs_floor(model, cfg["byte_law"], read_bw * 1e9, cfg["prompt"], 16,
                                                             cfg.get("byte_law_compile", False), cfg["group_size"],
                                                             log=run.log, base=base)
    if device.type == "cuda" and "decode" in r:
        r["decode"]["targets"] = tp.decode_targets(r["decode"])
    r["finished"] = True
    r["complete"] = not r["errors"] and not any(s["for_budget"] for s in r["skipped"])


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # do not wait on compile worker processes or CUDA teardown
