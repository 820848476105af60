"""Which lessons generalise: the key experiments of lessons 03-05 on both offline models, as a claims table.

    python scripts/cross_model.py [--models offline:SmolLM2-135M-Instruct,offline:gemma-3-270m] [--eval 8x256]
                                  [--calib 8x256] [--n-grid 10] [--no-toolkit] [--out lessons_lib/resources/results]

For each model: fp32 perplexity; NF4 vs a fitted Lloyd-Max codebook (lesson 03); RTN vs our GPTQ at damp 0.01 and 0.1
vs llm-compressor's GPTQ (lesson 04); RTN vs GPTQ on Shakespeare, a domain in no calibration set (lesson 04); our AWQ vs
llm-compressor's AWQ vs GPTQ (lesson 05); folding random AWQ scales keeps the logits (lesson 05). Each claim the lessons
make from the default model is checked on every model as the lessons check it: a paired-bootstrap interval over the
test windows and its verdict (beats, loses to, matches within a tolerance, indistinguishable), so "held" means the
interval says so. Nothing is chosen here (both dampenings are reported), so the test split is the only one read.
Writes cross_model.json and cross_model.md (command, date, settings, numbers). CPU minutes: run it alone
(`make cross-model`)."""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

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
    scores, seconds = {}, {}

    def score(label, m, ws=windows):
        start = time.perf_counter()
        scores[label] = evaluate.score(m, ws, label=label, progress=False)
        log(f"  {model_id} {scores[label]} ({time.perf_counter() - start:.0f} s)")

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
    # lesson 05: our AWQ, and folding random scales keeps the function; so does the plain rule w / s for the norms
    # (llm-compressor's AWQ divides any 1-D norm weight by s) only where a norm computes x * w, not x * (1 + w)
    probe = windows[:1, :128]
    with torch.no_grad():
        before = model(probe).logits
    fold_rel = {}
    for rule in ("the model's own fold", "plain w / s"):
        folded = copy.deepcopy(model)
        g = torch.Generator().manual_seed(0)
        for layer in architecture.decoder_layers(folded):
            for m in awq.layer_mappings(layer):
                if rule == "plain w / s" and m.fold == "offset_norm":
                    m = dataclasses.replace(m, fold="norm")
                awq.fold_scales(m, torch.rand(m.balance[0].in_features, generator=g) + 0.5)
        with torch.no_grad():
            fold_rel[rule] = ((folded(probe).logits - before).norm() / before.norm()).item()
        del folded
    q = copy.deepcopy(model)
    start = time.perf_counter()
    awq.quantize_model(q, calib, 4, group, n_grid, progress=False)
    seconds["ours AWQ W4"] = time.perf_counter() - start
    score("ours AWQ W4", q)
    del q
    # the same AWQ with llm-compressor's norm rule (w / s for every norm): where that is the model's own fold, the
    # run above is it; where a norm computes x * (1 + w) it is what llm-compressor's AWQ does, fold error and all
    layers = architecture.decoder_layers(model)
    if any(m.fold == "offset_norm" for layer in layers for m in awq.layer_mappings(layer)):
        plain = lambda layer, own=awq.layer_mappings: [dataclasses.replace(m, fold="norm") if m.fold == "offset_norm"
                                                        else m for m in own(layer)]
        q = copy.deepcopy(model)
        with mock.patch.object(awq, "layer_mappings", plain):
            awq.quantize_model(q, calib, 4, group, n_grid, progress=False)
        score("ours AWQ W4 plain norm fold", q)
        del q
    else:
        scores["ours AWQ W4 plain norm fold"] = scores["ours AWQ W4"]
    if toolkit_runs:
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
        from llmcompressor.modifiers.gptq import GPTQModifier
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from llmcompressor.modifiers.transform import AWQModifier

        scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
            num_bits=4, type="int", symmetric=True, strategy="group", group_size=group))
        recipes = {"llm-compressor GPTQ W4 damp 0.1": GPTQModifier(config_groups={"w4": scheme}, ignore=["lm_head"],
                                                                  actorder=None, dampening_frac=0.1, block_size=128),
                   "llm-compressor AWQ W4": [AWQModifier(mappings=toolkit.mappings(model, "awq"), n_grid=n_grid,
                                                         duo_scaling=True),
                                             QuantizationModifier(config_groups={"w4": scheme}, ignore=["lm_head"])]}
        for label, recipe in recipes.items():
            with tempfile.TemporaryDirectory(dir=models.cache_dir()) as out:
                seconds[label] = toolkit.oneshot(copy.deepcopy(model), tok, recipe, calib, out)
                score(label, toolkit.reload(out))
    return {"identity": models.identity(model), "family": type(model).__name__, "group": group, "group_reason": why,
            "bos_per_window": data.bos_id(tok) is not None, "scores": scores, "seconds": seconds, "fold_rel": fold_rel}


# (lesson, claim, a, b, the verdict the claim states, tolerance): each checked by evaluate.compare(a, b) on the test windows
COMPARISONS = [
    ("03", "a fitted Lloyd-Max codebook (least MSE) has worse perplexity than NF4", "Lloyd-Max (fitted)", "NF4",
     "loses to", None),
    ("04", "GPTQ with the default dampening 0.01 loses to RTN", "ours GPTQ W4 damp 0.01", "RTN W4", "loses to", None),
    ("04", "GPTQ at damp 0.1 beats RTN", "ours GPTQ W4 damp 0.1", "RTN W4", "beats", None),
    ("04", "damp 0.1 beats damp 0.01", "ours GPTQ W4 damp 0.1", "ours GPTQ W4 damp 0.01", "beats", None),
    ("04", "on a domain in no calibration set (Shakespeare), GPTQ calibrated on prose loses to RTN",
     "ours GPTQ W4 damp 0.1 shakespeare", "RTN W4 shakespeare", "loses to", None),
    ("05", "our AWQ beats RTN", "ours AWQ W4", "RTN W4", "beats", None),
    ("05", "our AWQ beats GPTQ (damp 0.1)", "ours AWQ W4", "ours GPTQ W4 damp 0.1", "beats", None),
    ("04", "ours and llm-compressor's GPTQ (damp 0.1) match within 5%", "ours GPTQ W4 damp 0.1",
     "llm-compressor GPTQ W4 damp 0.1", "matches within tol", 0.05),
    ("05", "ours and llm-compressor's AWQ match within 3%", "ours AWQ W4", "llm-compressor AWQ W4", "matches within tol",
     0.03),
    ("05", "with llm-compressor's norm rule (w / s), our AWQ and llm-compressor's match within 3%",
     "ours AWQ W4 plain norm fold", "llm-compressor AWQ W4", "matches within tol", 0.03),
    ("05", "llm-compressor's AWQ beats its GPTQ", "llm-compressor AWQ W4", "llm-compressor GPTQ W4 damp 0.1", "beats", None),
]


def _claim(lesson, text, holds, numbers, **figures):
    return {"lesson": lesson, "claim": text, "holds": holds, "numbers": numbers} | figures


def claims(r: dict) -> list[dict]:
    """The lessons' conclusions from the default model, checked on one model's scores (a claim whose runs are
    missing, e.g. --no-toolkit, is left out)."""
    s = r["scores"]
    own, plain = r["fold_rel"]["the model's own fold"], r["fold_rel"]["plain w / s"]
    out = [_claim("05", "folding AWQ scales keeps the logits (relative difference < 1e-5)", own < 1e-5, f"{own:.1e}"),
           _claim("05", "the plain fold w / s into the norms keeps the logits (what llm-compressor's AWQ does to a "
                  "norm weight)", plain < 1e-5, f"{plain:.1e}")]
    for lesson, text, a, b, stated, tol in COMPARISONS:
        if a in s and b in s:
            c = evaluate.compare(s[a], s[b], tolerance=tol)
            out.append(_claim(lesson, text, c.verdict == stated, f"{a} {c.verdict.replace(' tol', '')} {b}: "
                              f"{c.value_a:.2f} vs {c.value_b:.2f}, difference {c.difference:+.2f} "
                              f"({c.low:+.2f} to {c.high:+.2f})", **c.summary()))
    return out


def _ppl_cell(p: dict | None) -> str:
    return "not measured" if p is None else f"{p['ppl']:.2f} ({p['ppl_low']:.2f}-{p['ppl_high']:.2f})"


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
    lines += ["", "Each comparison: a minus b in perplexity, with its 95% paired-bootstrap interval over the test windows.",
              "", "| perplexity (95% interval) | " + " | ".join(ids) + " |", "|---|" + "---|" * len(ids)]
    keys = list(dict.fromkeys(k for i in ids for k in table["models"][i]["ppl"]))
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_ppl_cell(table["models"][i]["ppl"].get(k)) for i in ids) + " |")
    lines += ["", "| model facts | " + " | ".join(ids) + " |", "|---|" + "---|" * len(ids)]
    for k in ("identity", "family", "group", "bos_per_window"):
        lines.append(f"| {k} | " + " | ".join(str(table["models"][i][k]) for i in ids) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(models.OFFLINE_MODELS))
    ap.add_argument("--eval", default="8x256")
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
            row[model_id] = {k: v for k, v in c.items() if k not in ("lesson", "claim")} | {"holds": bool(c["holds"])}
        r["ppl"] = {label: sc.summary() for label, sc in r.pop("scores").items()}  # JSON: figures, not tensors
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
