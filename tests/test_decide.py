import pytest

from lessons_lib import decide
from lessons_lib import hardware as hw

QUALITY = {"bf16": 0.0, "int8_w8a8": 0.01, "fp8_w8a8": 0.02, "int4_weight_only": 0.2, "nf4": 0.3}
PRICES = {"A100 80GB": 1.0, "H100 SXM": 2.0, "H200": 3.0}


def rows(**kw):
    return [decide.assess(hw.LLAMA3_70B, c, QUALITY, PRICES, **kw) for c in decide.CANDIDATES_70B]


def test_assess_uses_the_planner_and_divides_by_efficiency():
    c = decide.Candidate("fp8_w8a8", "H100 SXM", 1)
    ideal = decide.assess(hw.LLAMA3_70B, c, QUALITY, PRICES)
    half = decide.assess(hw.LLAMA3_70B, c, QUALITY, PRICES, efficiency={"fp8_w8a8": 0.5})
    p = hw.plan(hw.LLAMA3_70B, "fp8", "H100 SXM", n_gpus=1)
    assert ideal["floor ms"] == pytest.approx(p.step_ms) and half["expected ms"] == pytest.approx(2 * p.step_ms)
    assert half["$/M tokens"] == pytest.approx(2 * ideal["$/M tokens"])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        decide.assess(hw.LLAMA3_70B, c, QUALITY, PRICES, efficiency={"fp8_w8a8": 1.5})
    with pytest.raises(KeyError, match="no price"):
        decide.assess(hw.LLAMA3_70B, decide.Candidate("fp8_w8a8", "L4", 1), QUALITY, PRICES)


def test_rules_and_choice():
    loose = rows(latency_ms=1000.0, max_quality_cost=1.0)
    best = decide.choose(loose)
    assert best["deployment"] == min((r for r in loose if r["fits"]), key=lambda r: r["$/M tokens"])["deployment"]
    strict = rows(max_quality_cost=0.015)  # only bf16 and int8 W8A8 pass the quality rule
    assert {r["fmt"] for r in strict if r["accurate_enough"]} == {"bf16", "int8_w8a8"}
    assert decide.rejected_by(next(r for r in strict if r["fmt"] == "int4_weight_only")) in ("fast_enough", "accurate_enough")
    assert decide.choose(rows(latency_ms=0.001)) is None  # nothing is that fast


def test_course_inputs_come_from_committed_results():
    from lessons_lib import bench, results

    q = decide.quality_costs({k: results.committed(k) for k in ("03", "04", "05", "06", "07")})
    assert q["bf16"] == 0 and 0 < q["int8_w8a8"] < q["int4_weight_only"] and set(q) == {"bf16", "int8_w8a8", "fp8_w8a8", "int4_weight_only", "nf4"}
    eff = decide.kernel_efficiency(bench.committed("nvidia-h200"))
    assert all(0 < v <= 1 for v in eff.values())
    assert decide.course_choice() in {c.label for c in decide.CANDIDATES_70B}


def test_flow_chart_draws_every_rule():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    decide.draw_flow(ax, rows())
    texts = " ".join(t.get_text() for t in ax.texts)
    assert all(question in texts for _, question in decide.RULES) and decide.FINAL in texts
    plt.close(fig)


def test_quality_costs_by_kl_or_by_the_interval():
    import copy

    from lessons_lib import results

    recorded = {k: results.committed(k) for k in ("03", "04", "05", "06", "07")}
    by_ppl, upper, by_kl = (decide.quality_costs(recorded, m) for m in ("ppl", "ppl_upper", "kl"))
    assert by_ppl == decide.quality_costs(recorded)  # the default is unchanged
    assert all(upper[f] >= by_ppl[f] for f in by_ppl) and upper["nf4"] > by_ppl["nf4"]  # a cautious cost is higher
    assert by_kl["bf16"] == upper["bf16"] == 0.0 and 0 < by_kl["int8_w8a8"] < by_kl["nf4"]
    old = copy.deepcopy(recorded)
    for r in old.values():  # records made before lessons stored evaluate.record_values
        r.pop("kl", None)
    with pytest.raises(KeyError, match="no 'kl'.*record_values"):
        decide.quality_costs(old, measure="kl")
    with pytest.raises(KeyError, match="unknown quality measure"):
        decide.quality_costs(recorded, measure="bleu")


def test_the_4_bit_method_is_chosen_on_dev_and_its_cost_read_on_test():
    import copy

    from lessons_lib import results

    recorded = {k: results.committed(k) for k in ("03", "04", "05", "06", "07")}
    gptq = recorded["04"]["chosen"]["W4"]
    lesson, label = decide.int4_method(recorded)
    dev = {("04", gptq): recorded["04"]["dev_ppl"][gptq], ("05", "ours AWQ W4"): recorded["05"]["dev_ppl"]["ours AWQ W4"]}
    assert (lesson, label) == min(dev, key=dev.get)
    flipped = copy.deepcopy(recorded)
    flipped[lesson]["dev_ppl"][label] = 1e9  # the other method wins on dev: its test cost is used, whatever test says
    other = next(k for k in dev if k != (lesson, label))
    assert decide.int4_method(flipped) == other
    ppl = flipped[other[0]]["ppl"]
    assert decide.quality_costs(flipped)["int4_weight_only"] == pytest.approx(ppl[other[1]] / ppl["fp32"] - 1)
    flipped["05"]["dev"] = "2x64"
    with pytest.raises(KeyError, match="same dev windows"):
        decide.int4_method(flipped)


def test_candidates_plan_their_compute_dtype():
    """int4_weight_only is W4A16: its compute floor is bf16's, not INT4 TOPS."""
    c = decide.Candidate("int4_weight_only", "A100 80GB", 1)
    assert c.storage == "int4" and c.compute == "bf16"
    r = decide.assess(hw.LLAMA3_70B, c, QUALITY, PRICES, batch=64)
    p = hw.plan(hw.LLAMA3_70B, "int4", "A100 80GB", n_gpus=1, batch=64, compute="bf16")
    assert r["floor ms"] == pytest.approx(p.step_ms)


def test_production_efficiency_scales_bf16_by_published_ratios():
    from lessons_lib import bench

    measured = decide.kernel_efficiency(bench.committed("nvidia-h200"))
    prod = decide.production_efficiency(measured)
    for fmt, (ratio, kernel, claim, source) in decide.PRODUCTION_KERNELS.items():
        assert prod[fmt] == pytest.approx(ratio * measured["bf16"]) and prod[fmt] > measured[fmt], fmt
        assert kernel and claim and ("arxiv" in source.lower() or "docs." in source)
    assert prod["bf16"] == measured["bf16"] and prod["nf4"] == measured["nf4"]
    assert decide.course_choice("production") in {c.label for c in decide.CANDIDATES_70B}
    with pytest.raises(ValueError, match="bf16"):
        decide.production_efficiency({"fp8_w8a8": 0.3})


def test_b200_nvfp4_candidate_plans_fp4_compute_and_w4a16_elsewhere():
    b200, h100 = decide.Candidate("nvfp4", "B200", 1), decide.Candidate("nvfp4", "H100 SXM", 1)
    assert b200.storage == h100.storage == "nvfp4" and (b200.compute, h100.compute) == ("nvfp4", "fp16")
    assert b200.label == "1x B200 nvfp4"
    with pytest.raises(ValueError, match="unknown format 'nvfp5'.*nvfp4"):
        decide.Candidate("nvfp5", "B200", 1)
    quality = decide.with_stand_ins(QUALITY)
    assert quality["nvfp4"] == QUALITY[decide.STAND_INS["nvfp4"]] and "nvfp4" not in QUALITY
    r = decide.assess(hw.LLAMA3_70B, b200, quality, {**PRICES, "B200": decide.PRICES["B200"]})
    assert r["weights GB"] == pytest.approx(hw.LLAMA3_70B.parameters * 4.5 / 8e9)
    assert r["expected ms"] == r["floor ms"]  # no FP4 kernel measured: no efficiency to divide by
    assert decide.rejected_by(r) == "accurate_enough"  # NF4's 30% here
    with pytest.raises(ValueError, match="quality must be"):
        decide.with_stand_ins({"bf16": 0.0})
