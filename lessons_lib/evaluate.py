"""Perplexity the standard way: fixed non-overlapping windows, token-weighted mean negative log-likelihood."""
from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import validate


def _model_device(model) -> torch.device:
    validate.model(model)
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
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and int(windows.max()) >= vocab:
        raise validate.BadInput(f"windows hold token id {int(windows.max())}, but the model's vocabulary has {vocab}: "
                                f"cut them with this model's own tokenizer")
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
    """Bits per UTF-8 byte over whole documents, each scored after a BOS token (as lm-eval's rolling loglikelihood)."""
    docs = _docs(docs)
    if not callable(tokenizer) or not hasattr(tokenizer, "eos_token_id"):
        raise validate.BadInput(f"tokenizer must be a transformers tokenizer (models.load_model returns it second), "
                                f"got {type(tokenizer).__name__}")
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    device = _model_device(model)
    nll, n_bytes = 0.0, 0
    for doc in docs:
        ids = torch.tensor([[prefix] + tokenizer(doc).input_ids], device=device)
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


def lm_eval_text(model_dir: str, docs: list[str], device: str = "cpu") -> dict:
    """Score docs with lm-eval's loglikelihood_rolling through a local YAML task; return its metrics."""
    import json
    import os
    import tempfile

    import lm_eval
    from lm_eval.tasks import TaskManager

    from .toolkit import _quiet_progress

    docs = _docs(docs)
    if not isinstance(model_dir, (str, Path)) or not (Path(model_dir) / "config.json").is_file():
        raise validate.BadInput(f"model_dir must be a saved model folder (with config.json), such as "
                                f"str(models.offline_checkpoint()); got {model_dir!r}")
    device = str(validate.device(device))
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        (folder / "qht_text.yaml").write_text(
            "task: qht_text\ndataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    test: {folder / 'docs.jsonl'}\n"
            "test_split: test\noutput_type: loglikelihood_rolling\n"
            'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
            "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
        )
        with _quiet_lm_eval(), _quiet_progress():
            out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32",
                                          tasks=["qht_text"], task_manager=TaskManager(include_path=str(folder)),
                                          device=device, batch_size=1)
    metrics = out["results"]["qht_text"]
    return {k.split(",")[0]: v for k, v in metrics.items() if k.endswith(",none") and "stderr" not in k}
