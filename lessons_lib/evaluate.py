"""Perplexity the standard way: fixed non-overlapping windows, token-weighted mean negative log-likelihood."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int = 1, progress: bool = True) -> float:
    """exp(mean NLL) over every predicted token of every window (each window predicts its tokens 2..n)."""
    if windows.dim() != 2 or windows.shape[1] < 2 or windows.dtype != torch.long:
        raise ValueError(f"windows must be a 2-D LongTensor [n_windows, length>=2], got {tuple(windows.shape)} {windows.dtype}")
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for batch in tqdm(windows.split(batch_size), desc="perplexity", disable=not progress, leave=False):
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
    if not docs:
        raise ValueError("docs is empty: pass at least one document (see data.documents)")
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    nll, n_bytes = 0.0, 0
    for doc in docs:
        ids = torch.tensor([[prefix] + tokenizer(doc).input_ids], device=device)
        if ids.shape[1] > model.config.max_position_embeddings:
            raise ValueError("a document is longer than the model's context: use shorter documents")
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
        nll -= logprobs.gather(1, ids[0, 1:, None]).sum().item()
        n_bytes += len(doc.encode("utf-8"))
    return nll / math.log(2) / n_bytes


def lm_eval_text(model_dir: str, docs: list[str], device: str = "cpu") -> dict:
    """Score docs with lm-eval's loglikelihood_rolling through a local YAML task; return its metrics."""
    import json
    import os
    import tempfile
    from pathlib import Path

    import lm_eval
    from lm_eval.tasks import TaskManager

    if not docs:
        raise ValueError("docs is empty: pass at least one document (see data.documents)")
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
        out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32",
                                      tasks=["qht_text"], task_manager=TaskManager(include_path=str(folder)),
                                      device=device, batch_size=1)
    metrics = out["results"]["qht_text"]
    return {k.split(",")[0]: v for k, v in metrics.items() if k.endswith(",none") and "stderr" not in k}
