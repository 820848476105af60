"""Perplexity the standard way (fixed non-overlapping windows, token-weighted mean negative log-likelihood), KL divergence
from a baseline model and top-1 agreement in the same pass, and paired-bootstrap intervals for comparing two models."""
from __future__ import annotations

import hashlib
import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import validate


def _model_device(model) -> torch.device:
    validate.model(model)
    if isinstance(model, (torch.nn.Linear, torch.nn.Embedding)) or hasattr(model, "get_output_embeddings") \
            and model.get_output_embeddings() is None:  # a layer, or the decoder without its head (model.model)
        validate.causal_lm(model)
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise validate.BadInput("model has no parameters: pass a loaded model (models.load_model())") from None


def _docs(docs) -> list[str]:
    return validate.texts(docs, "docs", "pass a list of documents, e.g. data.documents('eval', 4)")


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int = 1, progress: bool | None = None) -> float:
    """exp(mean NLL) over every predicted token of every window (each window predicts its tokens 2..n).

    progress: a bar per window (None: tqdm's default, off where TQDM_DISABLE=1, as `make test` and `make execute` set)."""
    validate.token_ids(windows, "windows", min_length=2)
    batch_size = validate.integer(batch_size, "batch_size", lo=1)
    device = _model_device(model)
    validate.in_vocabulary(model, windows)
    bar = validate.progress(progress)
    nll, count = 0.0, 0
    for batch in tqdm(windows.split(batch_size), desc="perplexity", leave=False, **bar):
        batch = batch.to(device)
        logits = model(batch).logits[:, :-1].float()
        targets = batch[:, 1:]
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum").item()
        count += targets.numel()
    if not math.isfinite(nll):
        raise FloatingPointError("the model produced non-finite log-likelihoods (overflow or NaN weights?)")
    return math.exp(nll / count)


@torch.no_grad()
def bits_per_byte(model, tokenizer, docs: list[str]) -> float:
    """Bits per UTF-8 byte over whole documents, each scored after one BOS token (as lm-eval's rolling loglikelihood;
    the tokenizer's own BOS, if it adds one, is not added a second time)."""
    docs = _docs(docs)
    if not callable(tokenizer) or not hasattr(tokenizer, "eos_token_id"):
        raise validate.BadInput(f"tokenizer must be a transformers tokenizer (models.load_model returns it second), "
                                f"got {type(tokenizer).__name__}")
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    device = _model_device(model)
    nll, n_bytes = 0.0, 0
    for doc in docs:
        ids = torch.tensor([[prefix] + tokenizer(doc, add_special_tokens=False).input_ids], device=device)
        if ids.shape[1] > model.config.max_position_embeddings:
            raise ValueError("a document is longer than the model's context: use shorter documents")
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
        nll -= logprobs.gather(1, ids[0, 1:, None]).sum().item()
        n_bytes += len(doc.encode("utf-8"))
    return nll / math.log(2) / n_bytes


@contextmanager
def _quiet_lm_eval():
    """lm-eval's known harmless chatter, silenced where it is logged: its notes on our local YAML task's default
    aggregations, on an instruct model scored without a chat template (it prints the model's folder), and
    transformers' note on a tokenizer option. Errors still show."""
    import logging

    from transformers.utils import logging as hf_logging

    quiet = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "lm_eval.api.task", "lm_eval.evaluator")]
    levels = [lg.level for lg in quiet]
    hf_level = hf_logging.get_verbosity()
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
        hf_logging.set_verbosity(hf_level)


def _lm_eval_local(task: str, rows: list[dict], task_yaml: str, model_dir, device: str, dtype: str,
                   batch_size: int) -> dict:
    """Run lm-eval's hf model on `rows` as a local JSON-lines task (its YAML after the data lines); its results."""
    import tempfile

    import lm_eval
    from lm_eval.tasks import TaskManager

    from .toolkit import _quiet_progress

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / f"{task}.yaml").write_text(f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                             f"    test: {folder / f'{task}.jsonl'}\ntest_split: test\n" + task_yaml)
        with _quiet_lm_eval(), _quiet_progress():
            out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype={dtype}",
                                          tasks=[task], task_manager=TaskManager(include_path=str(folder)),
                                          device=device, batch_size=batch_size)
    return out["results"][task]


def lm_eval_text(model_dir: str, docs: list[str], device: str = "cpu") -> dict:
    """Score docs with lm-eval's loglikelihood_rolling through a local YAML task; return its metrics."""
    docs = _docs(docs)
    if not isinstance(model_dir, (str, Path)) or not (Path(model_dir) / "config.json").is_file():
        raise validate.BadInput(f"model_dir must be a saved model folder (with config.json), such as "
                                f"str(models.offline_checkpoint()); got {model_dir!r}")
    device = str(validate.device(device))
    metrics = _lm_eval_local(
        "qht_text", [{"text": d} for d in docs],
        'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n",
        model_dir, device, "float32", 1)
    return {k.split(",")[0]: v for k, v in metrics.items() if k.endswith(",none") and "stderr" not in k}


# ---- One evaluation pass, several measures (as llama.cpp's --kl-divergence statistics), and paired comparisons ----

TOP_K = 128  # baseline log-probabilities kept per token: the top 128 and the rest of the mass as one bucket
RESAMPLES, SEED, LEVEL = 2000, 0, 0.95  # the paired bootstrap: fixed resampling seed, so every interval is reproducible
TOLERANCE = {"ppl": 0.01, "nll": 0.01, "kl": 0.01, "top1": 0.01}  # "matches": ppl relative, the others absolute
LOWER_IS_BETTER = {"ppl": True, "nll": True, "kl": True, "top1": False}
_MEASURE_NAMES = {"ppl": "perplexity", "nll": "NLL (nats/token)", "kl": "KL from the baseline (nats/token)",
                  "top1": "top-1 agreement"}


def _units(x: torch.Tensor, block: int | None) -> torch.Tensor:
    """Per-token values [n_windows, tokens] as resampling units: windows (block=None), or each window cut into
    tokens // block blocks of about `block` tokens (every token in one; NaN pads the shorter ones)."""
    x = x.double().reshape(x.shape[0], -1)
    if block is None:
        return x
    block = validate.integer(block, "block", lo=1, hi=x.shape[1])
    parts = [part for row in x for part in row.tensor_split(x.shape[1] // block)]
    return torch.nn.utils.rnn.pad_sequence(parts, batch_first=True, padding_value=float("nan"))


def _bootstrap_means(units: list[torch.Tensor], resamples: int, seed: int) -> list[torch.Tensor]:
    """Token-weighted means of resampled units of each [n_units, k] tensor, the same resampled units for all (so
    differences are paired)."""
    n = units[0].shape[0]
    picks = torch.randint(0, n, (resamples, n), generator=torch.Generator().manual_seed(seed))
    means = []
    for u in units:
        sums, counts = torch.nan_to_num(u).sum(1), (~u.isnan()).sum(1).double()
        means.append(sums[picks].sum(1) / counts[picks].sum(1))
    return means


def _interval(samples: torch.Tensor, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2
    low, high = torch.quantile(samples, torch.tensor([tail, 1 - tail], dtype=samples.dtype))
    return float(low), float(high)


def paired_interval(a: torch.Tensor, b: torch.Tensor, exp: bool = False, level: float = LEVEL,
                    resamples: int = RESAMPLES, seed: int = SEED, block: int | None = None) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its percentile bootstrap interval, resampling the same windows (rows) of both.

    a, b: per-window values [n] or per-token values [n_windows, tokens] of two models on the same windows;
    exp=True compares exp(mean) (perplexity from NLL); block: resample blocks of that many tokens instead of windows."""
    try:
        a, b = (torch.as_tensor(v).double() for v in (a, b))
    except (TypeError, RuntimeError, ValueError) as err:
        raise validate.BadInput(f"a and b must be numbers per window or per token (tensors or lists), got "
                                f"{type(a).__name__} and {type(b).__name__}: pass Scores.nll of two models") from err
    for v, n in ((a, "a"), (b, "b")):
        validate.tensor(v, n, nonempty=False, todo="a NaN or Inf per-token value means a model overflowed: find it first")
    if a.shape != b.shape or a.numel() == 0 or a.dim() not in (1, 2):
        raise validate.BadInput(f"a and b must be per-window [n] or per-token [n, tokens] values of the same windows, "
                                f"got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    level = validate.number(level, "level", 0, 1, lo_open=True, hi_open=True)
    resamples = validate.integer(resamples, "resamples", lo=100)
    validate.flag(exp, "exp")
    ua, ub = _units(a, block), _units(b, block)
    if ua.shape[0] < 2:
        raise validate.BadInput("a paired interval needs at least 2 windows (or blocks): evaluate more windows")
    f = torch.exp if exp else (lambda t: t)
    ma, mb = _bootstrap_means([ua, ub], resamples, seed)
    point = float(f(ua.nanmean()) - f(ub.nanmean()))  # every token once, as the models' own perplexities
    return (point, *_interval(f(ma) - f(mb), level))


@dataclass
class Scores:
    """One model's measures on fixed windows: per-token NLL, and with a baseline per-token KL and top-1 agreement."""

    label: str
    nll: torch.Tensor  # [n_windows, length - 1] negative log-likelihood of each predicted token (nats)
    kl: torch.Tensor | None = None  # [n_windows, length - 1] KL(baseline || model) of each next-token distribution
    top1: torch.Tensor | None = None  # [n_windows, length - 1] True where the model's top token is the baseline's
    windows_sha: str = ""

    @property
    def tokens(self) -> int:
        return self.nll.numel()

    @property
    def ppl(self) -> float:
        """Perplexity: exp of the token-weighted mean NLL."""
        return math.exp(self.nll.double().mean().item())

    def ppl_interval(self, level: float = LEVEL) -> tuple[float, float]:
        """Bootstrap interval of this model's perplexity alone, resampling windows (wide: window difficulty varies)."""
        level = validate.number(level, "level", 0, 1, lo_open=True, hi_open=True, todo="a fraction such as 0.95")
        (m,) = _bootstrap_means([_units(self.nll, None)], RESAMPLES, SEED)
        return _interval(torch.exp(m), level)

    def window_ppl(self) -> list[float]:
        return torch.exp(self.nll.double().mean(1)).tolist()

    def _need_kl(self) -> torch.Tensor:
        if self.kl is None:
            raise ValueError(f"{self.label} was scored without a baseline: use evaluate.score(model, windows, baseline)")
        return self.kl

    @property
    def mean_kl(self) -> float:
        return self._need_kl().double().mean().item()

    def kl_quantile(self, q: float = 0.99) -> float:
        """A quantile of the per-token KL (llama.cpp prints 99% and 99.9%): the tokens perplexity averages away."""
        return torch.quantile(self._need_kl().double().flatten(), validate.number(q, "q", 0, 1)).item()

    @property
    def top1_agreement(self) -> float:
        self._need_kl()
        return self.top1.double().mean().item()

    def summary(self) -> dict:
        """JSON-safe figures for results.record: ppl, its interval, tokens, and KL / top-1 figures when measured."""
        low, high = self.ppl_interval()
        out = {"ppl": self.ppl, "ppl_low": low, "ppl_high": high, "tokens": self.tokens}
        if self.kl is not None:
            out |= {"kl": self.mean_kl, "kl_p99": self.kl_quantile(0.99), "top1": self.top1_agreement}
        return out

    def __str__(self) -> str:
        low, high = self.ppl_interval()
        text = f"{self.label}: perplexity {self.ppl:.2f} (95% interval {low:.2f}-{high:.2f})"
        if self.kl is not None:
            text += (f", KL {self.mean_kl:.4f} nats/token (99th percentile {self.kl_quantile(0.99):.3f}), "
                     f"top-1 agreement {self.top1_agreement:.1%}")
        return text + f" [{self.nll.shape[0]} windows x {self.nll.shape[1] + 1} tokens]"

    __repr__ = __str__


@dataclass
class Baseline:
    """The unquantized model's next-token distributions on fixed windows (top TOP_K log-probs, the rest as one bucket)."""

    identity: str
    windows_sha: str
    top_ids: torch.Tensor  # [n_windows, length - 1, k] token ids, most probable first
    top_logp: torch.Tensor  # [n_windows, length - 1, k] their log-probabilities (float32)
    rest_logp: torch.Tensor  # [n_windows, length - 1] log of the probability of every other token
    scores: Scores  # the baseline model's own measures (KL 0, top-1 agreement 100%)


def _windows_sha(windows: torch.Tensor) -> str:
    return hashlib.sha256(f"{tuple(windows.shape)}".encode() + windows.long().cpu().numpy().tobytes()).hexdigest()


def _log_probs(model, windows: torch.Tensor, batch_size: int, progress, desc: str):
    """Yield (batch windows, log-softmax of the logits predicting tokens 2..n) per batch, in float32."""
    validate.token_ids(windows, "windows", min_length=2)
    batch_size = validate.integer(batch_size, "batch_size", lo=1)
    device = _model_device(model)
    validate.in_vocabulary(model, windows)
    bar = validate.progress(progress)
    for batch in tqdm(windows.split(batch_size), desc=desc, leave=False, **bar):
        batch = batch.to(device)
        logp = torch.log_softmax(model(batch).logits[:, :-1].float(), dim=-1)
        if not validate.all_finite(logp):
            raise FloatingPointError("the model produced non-finite log-likelihoods (overflow or NaN weights?)")
        yield batch.cpu(), logp.cpu()


def _rest(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log of the probability mass outside `ids` (exact: a log-sum-exp over the other tokens)."""
    return torch.logsumexp(logp.scatter(-1, ids, float("-inf")), dim=-1)


@torch.no_grad()
def baseline(model, windows: torch.Tensor, identity: str, k: int = TOP_K, label: str = "fp32", batch_size: int = 1,
             progress: bool | None = None) -> Baseline:
    """The baseline (unquantized) model's log-probabilities on these windows, cached per model identity and windows
    in models.cache_dir()/baselines (about 4 MB for 8 x 512 tokens); model may be None once they are cached."""
    from .models import cache_dir

    validate.token_ids(windows, "windows", min_length=2)
    identity = validate.text(identity, "identity", "pass models.identity(MODEL_ID)")
    k = validate.integer(k, "k", lo=1)
    sha = _windows_sha(windows)
    key = hashlib.sha256(json.dumps([identity, sha, k, label]).encode()).hexdigest()[:24]
    file = cache_dir() / "baselines" / f"{key}.pt"
    if file.is_file():
        try:
            d = torch.load(file, weights_only=True)
            if [d["identity"], d["windows_sha"], d["k"]] == [identity, sha, k]:
                own = Scores(label, d["nll"], torch.zeros_like(d["nll"]), torch.ones_like(d["nll"], dtype=torch.bool), sha)
                return Baseline(identity, sha, d["top_ids"].long(), d["top_logp"], d["rest_logp"], own)
        except Exception:  # noqa: BLE001 - a corrupt cache file is recomputed below
            pass
    if model is None:
        raise validate.BadInput("no cached baseline for these windows and identity: pass the unquantized model")
    parts = {"nll": [], "top_ids": [], "top_logp": [], "rest_logp": []}
    for batch, logp in _log_probs(model, windows, batch_size, progress, f"baseline {label}"):
        top_logp, top_ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
        parts["nll"].append(-logp.gather(-1, batch[:, 1:, None])[..., 0].double())
        parts["top_ids"].append(top_ids.int())
        parts["top_logp"].append(top_logp)
        parts["rest_logp"].append(_rest(logp, top_ids))
    d = {name: torch.cat(p) for name, p in parts.items()} | {"identity": identity, "windows_sha": sha, "k": k}
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(f".{os.getpid()}.tmp")
    torch.save(d, tmp)
    os.replace(tmp, file)
    own = Scores(label, d["nll"], torch.zeros_like(d["nll"]), torch.ones_like(d["nll"], dtype=torch.bool), sha)
    return Baseline(identity, sha, d["top_ids"].long(), d["top_logp"], d["rest_logp"], own)


def _kl_top_k(logq: torch.Tensor, top_ids: torch.Tensor, top_logp: torch.Tensor, rest_logp: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the baseline's top-k tokens plus one bucket for the rest: a lower bound of the full KL."""
    q_top, q_rest = logq.gather(-1, top_ids).double(), _rest(logq, top_ids).double()
    p_top, p_rest = top_logp.double(), rest_logp.double()
    rest = torch.where(torch.isneginf(p_rest), 0.0, p_rest.exp() * (p_rest - q_rest))  # no rest: k >= vocabulary
    kl = (p_top.exp() * (p_top - q_top)).sum(-1) + rest
    return kl.clamp_min(0.0)  # rounding can leave -1e-12 where the two distributions are identical


@torch.no_grad()
def score(model, windows: torch.Tensor, baseline: Baseline | None = None, label: str = "model", batch_size: int = 1,
          progress: bool | None = None) -> Scores:
    """One pass over fixed windows: per-token NLL; with a baseline also per-token KL from it and top-1 agreement."""
    validate.token_ids(windows, "windows", min_length=2)
    sha = _windows_sha(windows)
    if baseline is not None and (not isinstance(baseline, Baseline) or baseline.windows_sha != sha):
        raise validate.BadInput("baseline must come from evaluate.baseline(...) on these same windows")
    nll, kl, top1, row = [], [], [], 0
    for batch, logp in _log_probs(model, windows, batch_size, progress, label):
        nll.append(-logp.gather(-1, batch[:, 1:, None])[..., 0].double())
        if baseline is not None:
            rows = slice(row, row + batch.shape[0])
            ids = baseline.top_ids[rows]
            kl.append(_kl_top_k(logp, ids, baseline.top_logp[rows], baseline.rest_logp[rows]))
            top1.append(logp.argmax(-1) == ids[..., 0])
        row += batch.shape[0]
    return Scores(label, torch.cat(nll), torch.cat(kl) if kl else None, torch.cat(top1) if top1 else None, sha)


@torch.no_grad()
def exact_kl(model, baseline_model, windows: torch.Tensor) -> torch.Tensor:
    """Per-token KL(baseline_model || model) over the whole vocabulary (to check the top-k estimate on a few windows)."""
    out = []
    for (_, logq), (_, logp) in zip(_log_probs(model, windows, 1, False, "KL"),
                                    _log_probs(baseline_model, windows, 1, False, "KL")):
        out.append((logp.double().exp() * (logp.double() - logq.double())).sum(-1))
    return torch.cat(out)


@dataclass(frozen=True)
class Comparison:
    """a against b on the same windows: the paired difference of a measure, its 95% interval, and a verdict."""

    a: str
    b: str
    measure: str
    value_a: float
    value_b: float
    difference: float
    low: float
    high: float
    tolerance: float  # in the measure's units (for ppl: the given fraction of b's perplexity)
    units: int
    verdict: str  # "beats", "loses to", "matches within tol" or "indistinguishable"
    unit: str = "windows"  # what the bootstrap resampled: windows, or blocks of tokens

    def __str__(self) -> str:
        name = _MEASURE_NAMES[self.measure]
        pct = self.measure == "top1"
        fmt = (lambda v: f"{v:.1%}") if pct else (lambda v: f"{v:.2f}") if self.measure == "ppl" else (lambda v: f"{v:.4f}")
        sfmt = (lambda v: f"{v:+.1%}") if pct else (lambda v: f"{v:+.2f}") if self.measure == "ppl" else (lambda v: f"{v:+.4f}")
        verdict = f"matches {self.b} within {sfmt(self.tolerance)[1:]}" if self.verdict == "matches within tol" \
            else f"is indistinguishable from {self.b} on this data" if self.verdict == "indistinguishable" \
            else f"{self.verdict} {self.b}"
        return (f"{self.a} {verdict}: {name} {fmt(self.value_a)} vs {fmt(self.value_b)}, difference "
                f"{sfmt(self.difference)} (95% interval {sfmt(self.low)} to {sfmt(self.high)}, paired over {self.units} "
                f"{self.unit})")

    __repr__ = __str__

    def summary(self) -> dict:
        """JSON-safe figures for results.record."""
        return {"measure": self.measure, "difference": self.difference, "low": self.low, "high": self.high,
                "tolerance": self.tolerance, "verdict": self.verdict}


def verdict(low: float, high: float, tolerance: float, lower_is_better: bool = True) -> str:
    """"matches within tol" if the whole interval of a - b lies within +-tolerance, else "beats" / "loses to" if it
    excludes zero (a better / worse), else "indistinguishable"."""
    low, high = validate.number(low, "low"), validate.number(high, "high")
    tolerance = validate.number(tolerance, "tolerance", lo=0)
    validate.flag(lower_is_better, "lower_is_better")
    if low > high:
        raise validate.BadInput(f"an interval has low <= high, got low={low:g}, high={high:g}: pass them in that order")
    if -tolerance <= low and high <= tolerance:
        return "matches within tol"
    if high < 0 or low > 0:
        return "beats" if (high < 0) == lower_is_better else "loses to"
    return "indistinguishable"


def compare(a: Scores, b: Scores, measure: str = "ppl", tolerance: float | None = None, block: int | None = None,
            level: float = LEVEL) -> Comparison:
    """a minus b on the same windows with its paired-bootstrap interval and verdict; measure: ppl, nll, kl or top1.

    tolerance (default TOLERANCE[measure]): for ppl a fraction of b's perplexity, else in the measure's own units."""
    if not isinstance(a, Scores) or not isinstance(b, Scores):
        raise validate.BadInput("compare takes two evaluate.score(...) results")
    measure = validate.choice(measure, "measure", TOLERANCE)
    if a.windows_sha != b.windows_sha:
        raise validate.BadInput(f"{a.label} and {b.label} were scored on different windows: a paired comparison needs "
                                f"the same windows")
    if measure == "kl":
        xa, xb = a._need_kl(), b._need_kl()
    elif measure == "top1":
        a._need_kl(), b._need_kl()
        xa, xb = a.top1.double(), b.top1.double()
    else:
        xa, xb = a.nll, b.nll
    if xa.shape != xb.shape and block is None and xa.shape[0] == xb.shape[0]:  # one side recorded as window means
        xa, xb = xa.double().mean(1, keepdim=True), xb.double().mean(1, keepdim=True)
    diff, low, high = paired_interval(xa, xb, exp=measure == "ppl", level=level, block=block)
    value = {"ppl": lambda s: s.ppl, "nll": lambda s: s.nll.double().mean().item(), "kl": lambda s: s.mean_kl,
             "top1": lambda s: s.top1_agreement}[measure]
    tol = TOLERANCE[measure] if tolerance is None else validate.number(
        tolerance, "tolerance", 0, 1 if measure == "ppl" else None, hi_open=measure == "ppl",
        todo="for ppl a fraction of the reference's perplexity (0.05 for 5%)" if measure == "ppl" else "")
    tol_units = tol * b.ppl if measure == "ppl" else tol
    units = _units(xa, block).shape[0]
    return Comparison(a.label, b.label, measure, value(a), value(b), diff, low, high, tol_units, units,
                      verdict(low, high, tol_units, LOWER_IS_BETTER[measure]),
                      "windows" if block is None else f"blocks of {block} tokens")


def record_values(scores: dict[str, Scores] | list[Scores], against: str | None = None) -> dict:
    """What results.record stores for a set of scored models: ppl, its interval, KL and top-1 (when measured), and
    each one's paired perplexity difference from `against` (default: "fp32" when it is among them) with its interval:
    results.record(l, s, **record_values(x))."""
    if isinstance(scores, (list, tuple)):
        labels = [getattr(s, "label", None) for s in scores]
        if len(set(labels)) != len(labels):
            raise validate.BadInput(f"two scores share a label ({labels}): give each model its own label")
        scores = dict(zip(labels, scores))
    if not isinstance(scores, dict) or not scores or not all(isinstance(s, Scores) for s in scores.values()):
        raise validate.BadInput("scores must be a dict {label: evaluate.score(...)} or a list of them")
    if against is None:
        against = "fp32"
    elif not isinstance(against, str) or against not in scores:
        raise validate.UnknownName(f"against={against!r} is not among the scores' labels {list(scores)}: name one")
    out = {"ppl": {k: s.ppl for k, s in scores.items()}, "ppl_interval": {k: list(s.ppl_interval()) for k, s in scores.items()}}
    if all(s.kl is not None for s in scores.values()):
        out |= {"kl": {k: s.mean_kl for k, s in scores.items()}, "kl_p99": {k: s.kl_quantile(0.99) for k, s in scores.items()},
                "top1": {k: s.top1_agreement for k, s in scores.items()}}
    out["window_nll"] = {k: s.nll.double().mean(1).tolist() for k, s in scores.items()}  # for paired comparisons later
    if "kl" in out:
        out["window_kl"] = {k: s.kl.double().mean(1).tolist() for k, s in scores.items()}
        out["window_top1"] = {k: s.top1.double().mean(1).tolist() for k, s in scores.items()}
    out["windows_sha"] = next(iter(scores.values())).windows_sha
    if against in scores:
        out["ppl_diff"] = {k: list(paired_interval(s.nll, scores[against].nll, exp=True)) for k, s in scores.items()
                           if k != against}
    return out


def recorded_scores(record: dict, label: str, name: str | None = None) -> Scores:
    """A model's scores as results.record stored them (record_values): per-window means, enough for compare() with
    another model scored on the same windows (not for token quantiles or block resampling); name relabels it."""
    if not isinstance(record, dict) or label not in record.get("window_nll", {}):
        raise validate.UnknownName(f"no per-window figures for {label!r} in this record: re-run the lesson that "
                                   f"measures it (its record has {sorted(record.get('window_nll', {})) if isinstance(record, dict) else 'nothing'})")
    values = record["window_nll"][label]
    if not isinstance(values, list) or not values or not all(isinstance(v, (int, float)) and math.isfinite(v)
                                                             for v in values):
        raise validate.BadInput(f"the record's window_nll for {label!r} must be a non-empty list of finite numbers: "
                                f"re-run the lesson that measures it (results.record rewrites it)")

    def column(key: str) -> torch.Tensor | None:  # [n_windows, 1]: one mean per window
        return torch.tensor(record[key][label], dtype=torch.float64)[:, None] if label in record.get(key, {}) else None

    return Scores(name or label, column("window_nll"), column("window_kl"), column("window_top1"), record.get("windows_sha", ""))


def lm_eval_cloze(model_dir: str, items: list[dict], device: str = "cpu", dtype: str = "float32",
                  batch_size: int = 8) -> dict:
    """Accuracy on a last-word task (data.cloze_items) through lm-eval, as its LAMBADA task scores it: an item counts
    when greedy decoding after the context gives exactly the target; returns acc, its standard error, perplexity, n."""
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) and {"context", "target"} <= set(i)
                                                           for i in items):
        raise validate.BadInput("items must be a non-empty list of {'context', 'target'} dicts: data.cloze_items('test')")
    if not isinstance(model_dir, (str, Path)) or not (Path(model_dir) / "config.json").is_file():
        raise validate.BadInput(f"model_dir must be a saved model folder (with config.json), such as "
                                f"str(models.offline_checkpoint()); got {model_dir!r}")
    device = str(validate.device(device))
    dtype = validate.choice(dtype, "dtype", ("float32", "bfloat16", "float16"))
    m = _lm_eval_local(
        "qht_cloze", [{"context": i["context"], "target": i["target"]} for i in items],
        'output_type: loglikelihood\ndoc_to_text: "{{context}}"\ndoc_to_target: "{{target}}"\n'
        "metric_list:\n  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n",
        model_dir, device, dtype, batch_size)
    return {"acc": m["acc,none"], "acc_stderr": m["acc_stderr,none"], "perplexity": m["perplexity,none"], "n": len(items)}


@torch.no_grad()
def cloze_accuracy(model, tokenizer, items: list[dict], progress: bool | None = None) -> float:
    """Our own scoring of a last-word task, as lm-eval's: the target's tokens (whole text minus the context's tokens)
    must all be the greedy choice after the context."""
    if not isinstance(items, list) or not items:
        raise validate.BadInput("items must be a non-empty list of {'context', 'target'} dicts: data.cloze_items('test')")
    device, hits = _model_device(model), 0
    for item in tqdm(items, desc="cloze", leave=False, **validate.progress(progress)):
        if not isinstance(item, dict) or not {"context", "target"} <= item.keys():
            raise validate.BadInput(f"each item must be a dict with 'context' and 'target', got {item!r:.80}")
        context = tokenizer(validate.text(item["context"], "item['context']")).input_ids
        whole = tokenizer(item["context"] + validate.text(item["target"], "item['target']")).input_ids
        if not context or len(whole) <= len(context):
            raise validate.BadInput(f"the item {item!r:.80} leaves no context or no target token to score: "
                                    f"give each item a non-empty context and target")
        ids = torch.tensor([whole], device=device)
        greedy = model(ids).logits[0, len(context) - 1:-1].argmax(-1)
        hits += bool((greedy == ids[0, len(context):]).all())
    return hits / len(items)
