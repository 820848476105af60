"""Which lessons generalise: the key experiments of lessons 03-05 on both offline models, as a claims table.

    python scripts/cross_model.py [--models offline:SmolLM2-135M-Instruct,offline:gemma-3-270m] [--eval 4x256]
                                  [--calib 8x256] [--n-grid 10] [--no-toolkit] [--out lessons_lib/resources/results]

For each model: fp32 perplexity; NF4 vs a fitted Lloyd-Max codebook (lesson 03); RTN vs our GPTQ at damp 0.01 and 0.1
vs llm-compressor's GPTQ (lesson 04); RTN vs GPTQ on Shakespeare, a domain in no calibration set (lesson 04); our AWQ vs
llm-compressor's AWQ vs GPTQ (lesson 05); folding random AWQ scales keeps the logits (lesson 05). Each claim the lessons
make from the default model is checked on every model. Writes cross_model.json and cross_model.md (command, date,
settings, numbers). CPU minutes: run it alone (`make cross-model`)."""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lessons_lib import architecture, awq, codebooks, data, evaluate, gptq, models, toolkit  # noqa: E402
from lessons_lib import quantize as Q  # noqa: E402

BLOCK = 64  # lesson 03's codebook block


def _size(text: str) -> tuple[int, int]:
    n, length = text.lower().split("x")
    return int(n), int(length)


def measure(model_id: str, eval_size, calib_size, n_grid: int, toolkit_runs: bool, log) -> dict:
    """Every number the claims need, for one model."""
    model, tok = models.load_model(model_id)
    group, why = architecture.group_size(model)
    windows = data.token_windows(tok, "test", *eval_size)
    shakespeare = data.token_windows(tok, "shakespeare_test", *eval_size)
    calib = data.token_windows(tok, "calib", *calib_size)
    ppl, seconds = {}, {}

    def score(label, m, ws=windows):
        start = time.perf_counter()
        ppl[label] = evaluate.perplexity(m, ws, progress=False)
        log(f"  {model_id} {label}: {ppl[label]:.2f} ({time.perf_counter() - start:.0f} s)")

    score("fp32", model)
    # lesson 03: NF4 vs Lloyd-Max fitted to the model's own normalized weight blocks (a 2% sample)
    weights = [w.detach().float() for w in models.linear_weights(model).values()]
    sample = torch.cat([codebooks.normalized_blocks(w, BLOCK)[::50] for w in weights])
    books = {"NF4": codebooks.nf4_levels(), "Lloyd-Max (fitted)": codebooks.lloyd_max(sample)}
    del weights, sample
    for name, lv in books.items():
        with Q.swapped_weights(model, lambda w, lv=lv: codebooks.quantize_codebook(w, lv, BLOCK)):
            score(name, model)
    # lesson 04: RTN vs GPTQ, in and out of the calibration domain
    with Q.swapped_weights(model, lambda w: gptq.rtn(w, 4, group)):
        score("RTN W4", model)
        score("RTN W4 shakespeare", model, shakespeare)
    for damp in (0.01, 0.1):
        q = copy.deepcopy(model)
        start = time.perf_counter()
        gptq.quantize_model(q, calib, 4, group, damp=damp, progress=False)
        seconds[f"ours GPTQ W4 damp {damp}"] = time.perf_counter() - start
        score(f"ours GPTQ W4 damp {damp}", q)
        if damp == 0.1:
            score("ours GPTQ W4 damp 0.1 shakespeare", q, shakespeare)
        del q
    # lesson 05: our AWQ, and folding random scales keeps the function
    folded = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    for layer in architecture.decoder_layers(folded):
        for m in awq.layer_mappings(layer):
            awq.fold_scales(m, torch.rand(m.balance[0].in_features, generator=g) + 0.5)
    probe = windows[:1, :128]
    with torch.no_grad():
        before, after = model(probe).logits, folded(probe).logits
    fold_rel = ((after - before).norm() / before.norm()).item()
    del folded
    q = copy.deepcopy(model)
    start = time.perf_counter()
    awq.quantize_model(q, calib, 4, group, n_grid, progress=False)
    seconds["ours AWQ W4"] = time.perf_counter() - start
    score("ours AWQ W4", q)
    del q
    if toolkit_runs:
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
        from llmcompressor.modifiers.gptq import GPTQModifier
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from llmcompressor.modifiers.transform import AWQModifier

        scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
            num_bits=4, type="int", symmetric=True, strategy="group", group_size=group))
        recipes = {"llm-compressor GPTQ W4 damp 0.1": GPTQModifier(config_groups={"w4": scheme}, ignore=["lm_head"],
                                                                  actorder=None, dampening_frac=0.1, block_size=128),
                   "llm-compressor AWQ W4": [AWQModifier(n_grid=n_grid, duo_scaling=True),
                                             QuantizationModifier(config_groups={"w4": scheme}, ignore=["lm_head"])]}
        for label, recipe in recipes.items():
            with tempfile.TemporaryDirectory(dir=models.cache_dir()) as out:
                seconds[label] = toolkit.oneshot(copy.deepcopy(model), tok, recipe, calib, out)
                score(label, toolkit.reload(out))
    return {"identity": models.identity(model), "family": type(model).__name__, "group": group, "group_reason": why,
            "bos_per_window": data.bos_id(tok) is not None, "ppl": ppl, "seconds": seconds, "fold_rel": fold_rel}


def _claim(lesson, text, holds, numbers):
    return {"lesson": lesson, "claim": text, "holds": holds, "numbers": numbers}


def claims(r: dict) -> list[dict]:
    """The lessons' conclusions from the default model, checked on one model's numbers (None: not measured)."""
    p = r["ppl"]
    have = lambda *ks: all(k in p for k in ks)  # noqa: E731
    out = [
        _claim("03", "a fitted Lloyd-Max codebook (least MSE) has worse perplexity than NF4",
               p["Lloyd-Max (fitted)"] > p["NF4"], f"Lloyd-Max {p['Lloyd-Max (fitted)']:.2f} vs NF4 {p['NF4']:.2f}"),
        _claim("04", "GPTQ with the default dampening 0.01 loses to RTN",
               p["ours GPTQ W4 damp 0.01"] > p["RTN W4"],
               f"GPTQ damp 0.01 {p['ours GPTQ W4 damp 0.01']:.2f} vs RTN {p['RTN W4']:.2f}"),
        _claim("04", "GPTQ at damp 0.1 beats RTN", p["ours GPTQ W4 damp 0.1"] < p["RTN W4"],
               f"GPTQ damp 0.1 {p['ours GPTQ W4 damp 0.1']:.2f} vs RTN {p['RTN W4']:.2f}"),
        _claim("04", "damp 0.1 beats damp 0.01", p["ours GPTQ W4 damp 0.1"] < p["ours GPTQ W4 damp 0.01"],
               f"{p['ours GPTQ W4 damp 0.1']:.2f} vs {p['ours GPTQ W4 damp 0.01']:.2f}"),
        _claim("04", "on a domain in no calibration set (Shakespeare), GPTQ calibrated on prose is worse than RTN",
               p["ours GPTQ W4 damp 0.1 shakespeare"] > p["RTN W4 shakespeare"],
               f"GPTQ {p['ours GPTQ W4 damp 0.1 shakespeare']:.2f} vs RTN {p['RTN W4 shakespeare']:.2f}"),
        _claim("05", "folding AWQ scales keeps the logits (relative difference < 1e-5)", r["fold_rel"] < 1e-5,
               f"{r['fold_rel']:.1e}"),
        _claim("05", "our AWQ beats RTN", p["ours AWQ W4"] < p["RTN W4"],
               f"AWQ {p['ours AWQ W4']:.2f} vs RTN {p['RTN W4']:.2f}"),
        _claim("05", "our AWQ beats GPTQ (damp 0.1)", p["ours AWQ W4"] < p["ours GPTQ W4 damp 0.1"],
               f"AWQ {p['ours AWQ W4']:.2f} vs GPTQ {p['ours GPTQ W4 damp 0.1']:.2f}"),
    ]
    if have("llm-compressor GPTQ W4 damp 0.1", "llm-compressor AWQ W4"):
        gq, aw = p["llm-compressor GPTQ W4 damp 0.1"], p["llm-compressor AWQ W4"]
        out += [
            _claim("04", "ours and llm-compressor's GPTQ (damp 0.1) agree within 5%",
                   abs(p["ours GPTQ W4 damp 0.1"] / gq - 1) < 0.05, f"{abs(p['ours GPTQ W4 damp 0.1'] / gq - 1):.1%} apart"),
            _claim("05", "ours and llm-compressor's AWQ agree within 3%", abs(p["ours AWQ W4"] / aw - 1) < 0.03,
                   f"{abs(p['ours AWQ W4'] / aw - 1):.1%} apart"),
            _claim("05", "llm-compressor's AWQ beats its GPTQ", aw < gq, f"AWQ {aw:.2f} vs GPTQ {gq:.2f}"),
        ]
    return out


def markdown(table: dict) -> str:
    ids = list(table["models"])
    lines = [f"# Which lessons generalise: lessons 03-05 on {len(ids)} offline models", "",
             f"Made by `{table['command']}` on {table['date']} ({table['minutes']:.0f} CPU-lane minutes). "
             f"Evaluation {table['settings']['eval']} tokens of the test split, calibration {table['settings']['calib']} "
             f"of the calib split, W4 symmetric, the group size each model's widths allow.", "",
             "| lesson | claim (from the default model) | " + " | ".join(ids) + " |",
             "|---|---|" + "---|" * len(ids)]
    for row in table["claims"]:
        cells = [f"{'held' if row[i]['holds'] else 'did not hold'}: {row[i]['numbers']}" if i in row else "not measured"
                 for i in ids]
        lines.append(f"| {row['lesson']} | {row['claim']} | " + " | ".join(cells) + " |")
    lines += ["", "| perplexity | " + " | ".join(ids) + " |", "|---|" + "---|" * len(ids)]
    keys = list(dict.fromkeys(k for i in ids for k in table["models"][i]["ppl"]))
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(f"{table['models'][i]['ppl'].get(k, float('nan')):.2f}" for i in ids) + " |")
    lines += ["", "| model facts | " + " | ".join(ids) + " |", "|---|" + "---|" * len(ids)]
    for k in ("identity", "family", "group", "bos_per_window"):
        lines.append(f"| {k} | " + " | ".join(str(table["models"][i][k]) for i in ids) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(models.OFFLINE_MODELS))
    ap.add_argument("--eval", default="4x256")
    ap.add_argument("--calib", default="8x256")
    ap.add_argument("--n-grid", type=int, default=10)
    ap.add_argument("--no-toolkit", action="store_true", help="skip the llm-compressor runs")
    ap.add_argument("--out", default=str(ROOT / "lessons_lib" / "resources" / "results"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    start = time.perf_counter()
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    results = {}
    for model_id in args.models.split(","):
        results[model_id] = measure(model_id, _size(args.eval), _size(args.calib), args.n_grid, not args.no_toolkit, log)
    rows = []
    for model_id, r in results.items():
        for c in claims(r):
            row = next((x for x in rows if x["claim"] == c["claim"]), None)
            if row is None:
                row = {"lesson": c["lesson"], "claim": c["claim"]}
                rows.append(row)
            row[model_id] = {"holds": bool(c["holds"]), "numbers": c["numbers"]}
    command = "python scripts/cross_model.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table = {"command": command.strip(), "date": datetime.date.today().isoformat(),
             "minutes": (time.perf_counter() - start) / 60,
             "settings": {"eval": args.eval, "calib": args.calib, "n_grid": args.n_grid, "bits": 4, "codebook_block": BLOCK,
                          "toolkit": not args.no_toolkit},
             "models": results, "claims": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cross_model.json").write_text(json.dumps(table, indent=1) + "\n")
    (out / "cross_model.md").write_text(markdown(table))
    print(markdown(table))
    return table


if __name__ == "__main__":
    main()
