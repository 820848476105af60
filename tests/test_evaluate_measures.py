"""One evaluation pass, several measures: NLL, KL from a cached baseline, top-1 agreement, paired intervals."""
import copy
import math

import pytest
import torch

from lessons_lib import evaluate


@pytest.fixture(scope="module")
def tiny():
    """A tiny random LLaMA built from a transformers config (no download), and windows of its token ids."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         initializer_range=0.3)  # peaked next-token distributions, as a trained model's
    model = LlamaForCausalLM(config).eval()
    return model, torch.randint(0, 300, (6, 33), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QHT_CACHE", str(tmp_path))
    return tmp_path


def perturbed(model, scale=0.05):
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * p.std())
    return other


def test_kl_is_zero_against_itself_and_positive_for_a_perturbed_copy(tiny, cache):
    model, windows = tiny
    base = evaluate.baseline(model, windows, "tiny", progress=False)
    same = evaluate.score(model, windows, base, "same", progress=False)
    assert same.mean_kl == pytest.approx(0.0, abs=1e-9) and same.top1_agreement == 1.0
    assert same.ppl == pytest.approx(base.scores.ppl, rel=1e-9)
    worse = evaluate.score(perturbed(model), windows, base, "perturbed", progress=False)
    assert worse.mean_kl > 1e-4 and bool((worse.kl >= 0).all()) and worse.top1_agreement < 1.0


def test_top_k_kl_is_a_close_lower_bound_of_the_full_kl(tiny, cache):
    model, windows = tiny
    other = perturbed(model, 0.3)
    full = evaluate.exact_kl(other, model, windows)
    means = []
    for k in (8, 64):
        est = evaluate.score(other, windows, evaluate.baseline(model, windows, "tiny", k=k, progress=False),
                             progress=False).kl
        assert bool((est <= full + 1e-9).all())  # merging tokens into one bucket can only lose divergence
        means.append(est.mean().item())
    assert means[0] < means[1] < full.mean().item() and means[1] > 0.5 * full.mean().item()
    small = evaluate.score(other, windows, evaluate.baseline(model, windows, "tiny", k=300, progress=False), progress=False)
    assert torch.allclose(small.kl, full, atol=1e-6)  # the whole vocabulary kept: exact


def test_nll_matches_perplexity(tiny, cache):
    model, windows = tiny
    s = evaluate.score(model, windows, label="m", progress=False)
    assert s.ppl == pytest.approx(evaluate.perplexity(model, windows, progress=False), rel=1e-6)
    assert s.kl is None and "perplexity" in str(s) and "KL" not in str(s)
    with pytest.raises(ValueError, match="without a baseline"):
        s.mean_kl


def test_baseline_log_probs_are_cached_and_reused(tiny, cache):
    model, windows = tiny
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        first = evaluate.baseline(model, windows, "tiny", progress=False)
        n = len(calls)
        assert n == windows.shape[0] and len(list((cache / "baselines").glob("*.pt"))) == 1
        again = evaluate.baseline(model, windows, "tiny", progress=False)
        assert len(calls) == n  # no forward pass the second time
        assert torch.equal(again.top_logp, first.top_logp) and torch.equal(again.top_ids, first.top_ids)
        assert torch.equal(evaluate.baseline(None, windows, "tiny").rest_logp, first.rest_logp)  # no model needed
        evaluate.baseline(model, windows, "another model", progress=False)
        assert len(calls) == 2 * n  # another identity: measured again
    finally:
        hook.remove()
    with pytest.raises(ValueError, match="no cached baseline"):
        evaluate.baseline(None, windows[:2], "tiny")
    with pytest.raises(ValueError, match="same windows"):
        evaluate.score(model, windows[:2], first, progress=False)


def test_a_corrupt_cache_file_is_recomputed(tiny, cache):
    model, windows = tiny
    first = evaluate.baseline(model, windows[:2], "tiny", progress=False)
    for f in (cache / "baselines").glob("*.pt"):
        f.write_bytes(b"garbage")
    assert torch.equal(evaluate.baseline(model, windows[:2], "tiny", progress=False).top_logp, first.top_logp)


def synthetic(n, diff, seed):
    """Per-window losses of two models: window difficulty varies a lot, b is `diff` worse with small noise."""
    g = torch.Generator().manual_seed(seed)
    a = 3.0 + torch.randn(n, generator=g)
    return a, a + diff + 0.05 * torch.randn(n, generator=g)


def test_bootstrap_interval_covers_a_known_difference_and_shrinks_with_more_windows():
    widths = []
    for n in (25, 400):
        a, b = synthetic(n, 0.1, seed=n)
        d, low, high = evaluate.paired_interval(b, a)
        assert low < 0.1 < high and low < d < high
        widths.append(high - low)
        assert evaluate.paired_interval(b, a) == (d, low, high)  # fixed seed: the same interval every time
    assert widths[1] < widths[0] / 2
    covered = sum(low < 0.1 < high for low, high in (evaluate.paired_interval(*synthetic(30, 0.1, s)[::-1])[1:]
                                                   for s in range(40)))
    assert covered >= 34  # a 95% interval covers the truth in most of 40 independent data sets


def test_pairing_is_what_makes_a_small_difference_visible():
    a, b = synthetic(40, 0.1, seed=3)
    _, low, high = evaluate.paired_interval(b, a)
    assert low > 0  # paired: the difference is clear
    shuffled = b[torch.randperm(40, generator=torch.Generator().manual_seed(0))]
    _, low_u, high_u = evaluate.paired_interval(shuffled, a)  # pairs broken: window difficulty swamps it
    assert low_u < 0 < high_u and high_u - low_u > 5 * (high - low)


def test_compare_verdicts_and_blocks(tiny, cache):
    model, windows = tiny
    base = evaluate.baseline(model, windows, "tiny", progress=False)
    ref, same = base.scores, evaluate.score(model, windows, base, "copy", progress=False)
    worse = evaluate.score(perturbed(model, 0.5), windows, base, "noisy", progress=False)
    assert evaluate.compare(same, ref).verdict == "matches within tol"
    c = evaluate.compare(worse, ref, "kl", tolerance=0.0)
    assert c.verdict == "loses to" and c.low > 0 and "loses to fp32" in str(c)
    assert evaluate.compare(ref, worse, "top1", tolerance=0.0).verdict == "beats"
    blocks = evaluate.compare(worse, ref, block=8)
    assert blocks.units == 6 * 4 and "blocks of 8 tokens" in str(blocks)
    assert evaluate.verdict(-0.5, 0.5, 0.1) == "indistinguishable" and evaluate.verdict(-0.5, -0.2, 0.1) == "beats"
    rec = evaluate.record_values([ref, worse])
    assert set(rec) == {"ppl", "ppl_interval", "kl", "kl_p99", "top1", "ppl_diff", "window_nll", "window_kl", "window_top1",
                        "windows_sha"} and list(rec["ppl_diff"]) == ["noisy"]
    with pytest.raises(ValueError, match="different windows"):
        evaluate.compare(worse, evaluate.score(model, windows[:3], label="x", progress=False))
    assert math.isfinite(worse.summary()["kl_p99"])


def test_recorded_scores_compare_like_the_fresh_ones(tiny, cache):
    """A model measured in one lesson and recorded per window compares with one scored now, as if both were fresh."""
    import json

    model, windows = tiny
    base = evaluate.baseline(model, windows, "tiny", progress=False)
    worse = evaluate.score(perturbed(model, 0.5), windows, base, "noisy", progress=False)
    stored = json.loads(json.dumps(evaluate.record_values([base.scores, worse])))  # as results.record keeps it
    again = evaluate.recorded_scores(stored, "noisy")
    fresh, from_record = evaluate.compare(worse, base.scores, "ppl"), evaluate.compare(again, base.scores, "ppl")
    assert again.ppl == pytest.approx(worse.ppl) and again.mean_kl == pytest.approx(worse.mean_kl)
    assert (from_record.difference, from_record.low, from_record.high) == pytest.approx((fresh.difference, fresh.low, fresh.high))
    assert from_record.verdict == fresh.verdict
    with pytest.raises(KeyError, match="no per-window figures for 'absent'"):
        evaluate.recorded_scores(stored, "absent")


def test_block_resampling_counts_every_token_once(tiny, cache):
    """Blocks that do not divide a window still cover all of it: the difference is that of the two perplexities."""
    model, windows = tiny  # 32 predicted tokens per window: blocks of 5 leave no token out
    base = evaluate.baseline(model, windows, "tiny", progress=False)
    worse = evaluate.score(perturbed(model, 0.5), windows, base, "noisy", progress=False)
    c = evaluate.compare(worse, base.scores, block=5)
    assert c.difference == pytest.approx(worse.ppl - base.scores.ppl) and c.units == 6 * (32 // 5)
    assert c.low <= c.difference <= c.high
    by_window = evaluate.compare(worse, base.scores)
    assert by_window.difference == pytest.approx(c.difference)
