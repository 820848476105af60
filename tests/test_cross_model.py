"""scripts/cross_model.py states a claim as held only where its paired interval gives the claimed verdict."""
import runpy
from pathlib import Path

import torch

from lessons_lib import evaluate

cross = runpy.run_path(str(Path(__file__).resolve().parent.parent / "scripts" / "cross_model.py"))


def scores(nll_by_label: dict) -> dict:
    torch.manual_seed(0)
    noise = torch.rand(8, 63) * 0.5  # per-token NLL of 8 windows, the same noise for every model (paired)
    return {label: evaluate.Scores(label, (noise + base).double(), windows_sha="same") for label, base in nll_by_label.items()}


def test_a_claim_holds_only_where_the_interval_gives_its_verdict():
    s = scores({"NF4": 3.0, "Lloyd-Max (fitted)": 3.1, "RTN W4": 3.0, "ours GPTQ W4 damp 0.01": 3.0,
                "ours GPTQ W4 damp 0.1": 2.9, "ours AWQ W4": 2.9})
    s["ours GPTQ W4 damp 0.01"].nll[::2] += 0.2  # worse on half the windows, better on none: loses, but widely
    s["ours GPTQ W4 damp 0.01"].nll[1::2] -= 0.15
    table = {c["claim"]: c for c in cross["claims"]({"scores": s, "fold_rel": {"the model's own fold": 3e-7, "plain w / s": 0.4}})}
    assert table["a fitted Lloyd-Max codebook (least MSE) has worse perplexity than NF4"]["holds"]
    assert table["GPTQ at damp 0.1 beats RTN"]["verdict"] == "beats"
    gptq_default = table["GPTQ with the default dampening 0.01 loses to RTN"]
    assert gptq_default["verdict"] == "indistinguishable" and not gptq_default["holds"]  # a point estimate would say held
    assert gptq_default["low"] < 0 < gptq_default["high"]
    assert not table["our AWQ beats GPTQ (damp 0.1)"]["holds"]  # equal: matches, not beats
    assert table["folding AWQ scales keeps the logits (relative difference < 1e-5)"]["holds"]
    assert not table["the plain fold w / s into the norms keeps the logits (what llm-compressor's AWQ does to a norm "
                     "weight)"]["holds"]
    assert not any(claim.startswith(("ours and", "llm-compressor's")) for claim in table)  # toolkit runs missing: those claims are left out
