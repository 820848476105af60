#!/usr/bin/env python3
"""Lesson 08b, headless: the course's Triton W4A16 and FP8 kernels beside torch's, then 8B-shaped decode with them.

    python scripts/bench_gemv.py --out lessons_lib/resources/bench     # H100 / H200: under 5 minutes
    python scripts/bench_gemv.py --quick --out /tmp/g                  # CPU smoke test: interpreter, tiny shapes

Sections, each with a share of the budget, each guarded (an error is data; the run goes on), the JSON rewritten
after each: environment, ceilings (measured bandwidth), correctness (every kernel against dequantize + matmul on
the real shapes), tune (a few tile and split-K choices per kernel, shape and batch class), gemm (Llama-3-8B's
linear shapes x batches 1-16: bf16 GEMV, torch's int4 kernel (_weight_int4pack_mm), _scaled_mm FP8, and the two
Triton kernels on the same codes, as GB/s and % of the measured bandwidth, timed in CUDA graphs), decode
(an 8B-shaped model with random weights, every decoder linear on each kernel, one CUDA graph per step) and targets.
Timing is lessons_lib's (bench.samples with CUDA events, throughput.time_point and decode_batch); the run
harness is scripts/benchmark.py's. Writes <device-slug>-gemv.json and .log.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

T0 = time.monotonic()
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the lesson 08 harness

import argparse  # noqa: E402
import os  # noqa: E402

import torch  # noqa: E402

from lessons_lib import gemv  # noqa: E402  (first: on a CPU it chooses Triton's interpreter)
from lessons_lib import bench, kernels  # noqa: E402
from lessons_lib import throughput as tp  # noqa: E402

import benchmark as harness  # noqa: E402  (Run: results, log, budgeted sections)

LLAMA3_8B_LINEARS = {"q_proj, o_proj": (4096, 4096), "k_proj, v_proj": (1024, 4096), "gate_proj, up_proj": (14336, 4096),
                     "down_proj": (4096, 14336)}
MICRO_LLAMA = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                   intermediate_size=128, vocab_size=256, rope_theta=500000.0, max_position_embeddings=64)
PRESET = dict(budget_s=280, shapes=list(LLAMA3_8B_LINEARS.values()), batches=[1, 2, 4, 8, 16], group_size=128,
              peak_dtypes=["bf16"],
              bw_bytes=1 << 30, point_s=0.03, rotate_bytes=256 << 20, tune_share=0.15, gemm_share=0.45,
              tune_candidates=[(32, 128, None), (64, 128, None), (16, 128, None), (32, 64, None), (128, 64, None)],
              llama_shape=harness.LLAMA_8B, decode_batches=[1, 8], prompt=128, new_tokens=64, mode_s=5.0,
              decode_methods=["bf16", "int4_weight_only", "w4a16", "fp8_w8a8", "fp8"])
QUICK = dict(budget_s=240, shapes=[(48, 128)], batches=[1, 16], group_size=32, bw_bytes=4 << 20, peak_dtypes=[],
             point_s=0.001, rotate_bytes=1 << 14, tune_candidates=[(16, 32, 2)],
             llama_shape=MICRO_LLAMA, decode_batches=[1], prompt=4, new_tokens=8, mode_s=0.5,
             decode_methods=["bf16", "w4a16", "fp8"])
TARGETS = {"w4a16_gemv_fraction_of_bandwidth_batch1": 0.70, "w4a16_decode_speedup": 2.5, "fp8_decode_speedup": 1.6}
TORCH = {"bf16": "bf16 GEMV (cuBLAS)", "int4_weight_only": "torch int4 (_weight_int4pack_mm, tinygemm)",
         "fp8_w8a8": "torch FP8 (_scaled_mm, per-token e4m3 activations)"}
OURS = {"w4a16": "Triton W4A16 (this course)", "fp8": "Triton FP8 weight-only (this course)"}


def methods_for(w: torch.Tensor, group: int, log) -> dict:
    """Every method on one float weight: torch's quantized formats and the Triton kernels on the same codes."""
    out = {}
    for fmt in TORCH:
        try:
            out[fmt] = kernels.quantize(fmt, w, group_size=group if fmt == "int4_weight_only" else None,
                                        **({"keep_codes": True} if fmt == "int4_weight_only" else {}))
        except Exception as e:  # noqa: BLE001  (a torch kernel this device lacks is a result)
            out[fmt] = e
            log(f"  {fmt}: {type(e).__name__}: {str(e)[:160]}")
    four, eight = out.get("int4_weight_only"), out.get("fp8_w8a8")
    out["w4a16"] = gemv.W4A16.from_int4(four) if not isinstance(four, Exception) else gemv.weight_for("w4a16", w, group)
    out["fp8"] = gemv.FP8.from_fp8(eight) if not isinstance(eight, Exception) else gemv.FP8.from_float(w)
    if not isinstance(four, Exception):
        four.codes = None  # only the Triton weight needed them; the rotation copies stay small
    return out


def correctness(run, device, cfg) -> list:
    rows = []
    for n, k in cfg["shapes"]:
        w = (torch.randn(n, k, generator=torch.Generator().manual_seed(n + k)) * 0.02).to(device)
        for kind in OURS:
            weight = gemv.weight_for(kind, w, cfg["group_size"])
            for m in sorted({1, max(cfg["batches"])}):
                x = torch.randn(m, k, device=device).to(torch.bfloat16)
                rows.append({"kernel": kind, **gemv.check(weight, x)})
                run.log(f"check {kind:6s} {n}x{k} batch {m}: rel. error {rows[-1]['relative_error']:.1e}")
    return rows


def point(copies: list, batch: int, bw: float | None, device, point_s: float, name: str) -> dict:
    """One timed product over rotating copies: median time (graph on CUDA), bytes moved, GB/s, % of bandwidth."""
    q = copies[0]
    p = {"method": name, "out": q.out_features, "in": q.in_features, "batch": batch, "weight_bytes": q.nbytes,
         "copies": len(copies)}
    xs = [torch.randn(batch, q.in_features, device=device).to(torch.bfloat16) for _ in range(2)]
    args = [(copies[i % len(copies)], xs[i % 2]) for i in range(max(len(copies), 2))]
    p.update(tp.time_point(lambda qq, x: qq(x), args, device, point_s))
    best = p.get("graph", p["eager"])
    moved = bench.gemm_bytes(batch, q.out_features, q.in_features, q.nbytes, 2, 2)
    flops = bench.gemm_flops(batch, q.out_features, q.in_features)
    p.update(timer="graph" if "graph" in p else "eager", us=tp.finite(best["median_s"] * 1e6), bytes_moved=moved,
             flops=flops, intensity=tp.finite(flops / moved), gb_per_s=tp.finite(moved / best["median_s"] / 1e9),
             gb_per_s_iqr=tp.finite(tp.rate_iqr(moved, best) / 1e9), tflops=tp.finite(flops / best["median_s"] / 1e12))
    if bw:
        p["fraction_of_bandwidth"] = tp.finite(moved / best["median_s"] / bw)
    return p


def tune(run, device, cfg, until: float) -> dict:
    """Best Config per (kernel, shape, batch class) from a few candidates, timed on rotating copies."""
    best = {}
    for n, k in cfg["shapes"]:
        w = (torch.randn(n, k, generator=torch.Generator().manual_seed(n * 3 + k)) * 0.02).to(device)
        for kind in OURS:
            weight = gemv.weight_for(kind, w, cfg["group_size"])
            copies = tp.rotating_copies(weight, cfg["rotate_bytes"], most=64)
            for m in sorted({1, max(cfg["batches"])}):
                if run.budget.elapsed() > until:
                    run.budget.skip(f"tune {kind} {n}x{k} batch {m} and later", "tune share of the budget used", True)
                    return best
                base = gemv.default_config(m, n, k, cfg["group_size"] if kind == "w4a16" else None,
                                           gemv._programs(device))
                trials = {"default": base}
                for bn, bk, split in cfg["tune_candidates"]:
                    bk = min(bk, cfg["group_size"]) if kind == "w4a16" else bk
                    c = gemv.Config(base.block_m, bn, bk, split or base.split_k, base.num_warps)
                    trials[f"n{bn}-k{bk}-s{c.split_k}"] = c
                times = {}
                for label, c in trials.items():
                    for q in copies:
                        q.config = c
                    try:
                        times[label] = point(copies, m, None, device, cfg["point_s"] / 2, kind)["us"]
                    except Exception as e:  # noqa: BLE001
                        times[label] = None
                        run.log(f"  tune {kind} {label}: {type(e).__name__}: {str(e)[:120]}")
                ok = {lbl: t for lbl, t in times.items() if t}
                pick = min(ok, key=ok.get) if ok else "default"
                best[f"{kind} {n}x{k} m{trials[pick].block_m}"] = {"config": vars(trials[pick]), "us": times}
                run.log(f"tune {kind} {n}x{k} batch {m}: best {pick} " + " ".join(f"{a}={b}" for a, b in times.items()))
    return best


def tuned_config(tuned: dict, kind: str, n: int, k: int, m: int):
    """The tuned Config for this kernel and shape at this batch's tile height, or None (default_config)."""
    block_m = gemv.default_config(m, n, k).block_m
    hit = tuned.get(f"{kind} {n}x{k} m{block_m}")
    return gemv.Config(**hit["config"]) if hit else None


def gemm(run, device, cfg, bw, tuned: dict, until: float) -> list:
    points = []
    for n, k in cfg["shapes"]:
        w = (torch.randn(n, k, generator=torch.Generator().manual_seed(n * 7 + k)) * 0.02).to(device)
        for name, q in methods_for(w, cfg["group_size"], run.log).items():
            if isinstance(q, Exception):
                points.append({"method": name, "out": n, "in": k, "error": tp.error_text(q)[-800:]})
                continue
            copies = tp.rotating_copies(q, cfg["rotate_bytes"])
            for m in cfg["batches"]:
                if run.budget.elapsed() > until:
                    run.budget.skip(f"gemm {name} {n}x{k} batch {m} and later", "gemm share of the budget used", True)
                    return points
                for c in copies if name in OURS else ():
                    c.config = tuned_config(tuned, name, n, k, m)
                points.append(tp.guarded(point, copies, m, bw, device, cfg["point_s"], name))
                points[-1].setdefault("method", name)
            run.log(f"gemm {name:16s} {n}x{k}: GB/s by batch " + " ".join(
                f"{p['batch']}:{p.get('gb_per_s') or float('nan'):.0f}" for p in points[-len(cfg['batches']):]))
            del copies
            tp.free_memory()
    return points


def decode(run, device, cfg, tuned: dict) -> dict:
    """Decode tokens/s with every decoder linear on each method (random weights: speed only)."""
    out = {"model": {"shape": cfg["llama_shape"], "random_weights": True,
                     "statement": "RANDOM weights: speed only, the generated tokens mean nothing"}, "results": {}}
    model = tp.random_llama(device, cfg["llama_shape"], torch.bfloat16)
    for name in cfg["decode_methods"]:
        if not run.budget.allows(f"decode {name}", 10):
            continue
        originals = None
        try:
            if name in OURS:
                originals = gemv.swap_linears(model, name, cfg["group_size"])
                for mod in model.modules():
                    if isinstance(mod, kernels.QuantLinear):
                        mod.qw.config = None  # the default tiles: tuned ones are per shape and batch class
            elif name != "bf16":
                originals = kernels.swap_linears(model, name, **({"group_size": cfg["group_size"], "keep_codes": False}
                                                                 if name == "int4_weight_only" else {}))
            res = {"bytes_read_per_token": tp.bytes_read_per_token(model), "batches": {}}
            for b in cfg["decode_batches"]:
                res["batches"][str(b)] = tp.decode_batch(model, b, cfg["prompt"], cfg["new_tokens"], cfg["mode_s"])
            out["results"][name] = res
            run.log(f"decode {name:16s} " + " ".join(
                f"b{b}:{m.get('graph', m.get('eager', {})).get('tokens_per_s') or float('nan'):.1f}tok/s"
                for b, m in res["batches"].items()))
        except Exception as e:  # noqa: BLE001
            out["results"][name] = {"error": tp.error_text(e)[-1500:]}
            run.log(f"decode {name} failed: {type(e).__name__}: {str(e)[:200]}")
        finally:
            if originals is not None:
                kernels.restore_linears(model, originals)
            run.save()
    return out


def best_tps(res: dict, batch: int = 1) -> float | None:
    modes = res.get("batches", {}).get(str(batch), {})
    vals = [m["tokens_per_s"] for k, m in modes.items() if k in ("eager", "graph") and "tokens_per_s" in m]
    return max(vals) if vals else None


def targets(r: dict) -> dict:
    """The lesson's goals, measured: W4A16 GEMV >= 70% of bandwidth at batch 1; decode >= 2.5x (4-bit), 1.6x (FP8)."""
    gemv1 = [p.get("fraction_of_bandwidth") for p in r.get("gemm", []) if p.get("method") == "w4a16"
             and p.get("batch") == 1 and p.get("fraction_of_bandwidth")]
    dec = r.get("decode", {}).get("results", {})
    bf16 = best_tps(dec.get("bf16", {}))
    measured = {"w4a16_gemv_fraction_of_bandwidth_batch1": min(gemv1) if gemv1 else None,
                "w4a16_decode_speedup": (best_tps(dec.get("w4a16", {})) or 0) / bf16 if bf16 else None,
                "fp8_decode_speedup": (best_tps(dec.get("fp8", {})) or 0) / bf16 if bf16 else None}
    return {k: {"measured": tp.finite(v) if v else None, "target": TARGETS[k], "met": None if not v else v >= TARGETS[k]}
            for k, v in measured.items()} | {"note": "GEMV fraction: the worst of the four 8B shapes at batch 1; decode: "
                                                      "best of eager and CUDA graph at batch 1, vs bf16 in the same run"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench-results", help="folder for <device-slug>-gemv.json and .log")
    p.add_argument("--quick", action="store_true", help="tiny shapes and model: every code path, on a CPU too")
    p.add_argument("--budget-s", type=float, default=None)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    quick = args.quick or device.type == "cpu"  # the interpreter cannot run 8B shapes
    cfg = {**PRESET, **(QUICK if quick else {})}
    cfg["budget_s"] = args.budget_s or cfg["budget_s"]
    slug = harness.slugify(kernels.device_name(device))
    slug = (slug if device.type == "cuda" else "cpu-" + slug) + ("-quick" if quick else "") + "-gemv"
    harness.T_START = T0
    run = harness.Run(Path(args.out), slug, cfg["budget_s"])
    run.budget.start = T0
    r, budget = run.results, run.budget
    r.update(slug=slug, quick=quick, config={k: v for k, v in cfg.items()}, interpreter=gemv.INTERPRET,
             methods={**TORCH, **OURS}, notes=["every time: median over timed runs (CUDA graph replays on a GPU), "
                                                "with its interquartile range; bytes = stored weight + x + y, once"])
    r["notes"] += [n for n in [tp.set_cpu_threads(device)] if n]
    torch.manual_seed(0)
    try:
        with run.section("environment"):
            r["environment"] = tp.environment(device)
            r["environment"]["triton_interpreter"] = gemv.INTERPRET
        with run.section("ceilings", need_s=5) as ok:
            if ok:
                r["ceilings"] = tp.ceilings(device, cfg["bw_bytes"], 8192, cfg["peak_dtypes"], run.log)
        bw = tp.ceiling_values(r.get("ceilings", {}))[0]
        with run.section("correctness", need_s=5) as ok:
            if ok:
                r["correctness"] = correctness(run, device, cfg)
        with run.section("tune", need_s=10) as ok:
            if ok:
                r["tuned"] = tune(run, device, cfg, budget.elapsed() + cfg["tune_share"] * budget.left())
        with run.section("gemm", need_s=10) as ok:
            if ok:
                r["gemm"] = gemm(run, device, cfg, bw, r.get("tuned", {}),
                                 budget.elapsed() + cfg["gemm_share"] * budget.left())
        with run.section("decode", need_s=20) as ok:
            if ok:
                r["decode"] = decode(run, device, cfg, r.get("tuned", {}))
        r["targets"] = targets(r)
        r["finished"] = True
        r["complete"] = not r["errors"] and not any(s["for_budget"] for s in r["skipped"])
    finally:
        run.save()
        run.close(f"targets: {r.get('targets')}\nerrors in: {list(r['errors'])}\nresults: {run.path}")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # do not wait on compile workers or CUDA teardown
