"""The production toolkit, llm-compressor: run a recipe on the course's model, save it, reload it with transformers."""
from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import torch


def calibration_dataset(windows: torch.Tensor):
    """A datasets.Dataset of token windows, the form llm-compressor's oneshot takes."""
    from datasets import Dataset

    if windows.dim() != 2 or windows.numel() == 0:
        raise ValueError("calibration windows must be a non-empty [n_windows, length] tensor (data.token_windows)")
    ids = windows.tolist()
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids]})


def _cpu_only_pin_memory_fix() -> None:
    """llm-compressor pins cached activations in memory, which a CPU-only torch refuses: make that a no-op there."""
    if torch.cuda.is_available():
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    if hasattr(IntermediatesCache, "pin_memory") and not getattr(IntermediatesCache, "_qht_patched", False):
        IntermediatesCache.pin_memory = lambda self, *a, **k: None
        IntermediatesCache._qht_patched = True


@contextmanager
def _quiet_progress():
    """Silence the nested tqdm bars of llm-compressor and compressed-tensors (thousands of lines in a notebook)."""
    import tqdm.std

    original = tqdm.std.tqdm.__init__

    def quiet(self, *args, **kwargs):
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    tqdm.std.tqdm.__init__ = quiet
    try:
        yield
    finally:
        tqdm.std.tqdm.__init__ = original


def oneshot(model, tokenizer, recipe, windows: torch.Tensor, out_dir: str | Path) -> float:
    """Run llm-compressor's oneshot with `recipe` on the calibration windows, save compressed; return seconds taken."""
    import logging

    from llmcompressor import oneshot as _oneshot
    from loguru import logger

    logging.getLogger("llmcompressor").setLevel(logging.ERROR)
    logger.disable("llmcompressor")  # its per-layer progress logs would drown the notebook
    logger.disable("compressed_tensors")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _cpu_only_pin_memory_fix()
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    with _quiet_progress():
        start = time.perf_counter()
        _oneshot(model=model, processor=tokenizer, dataset=calibration_dataset(windows), recipe=recipe,
                 max_seq_length=windows.shape[1], num_calibration_samples=windows.shape[0], shuffle_calibration_samples=False)
        seconds = time.perf_counter() - start
        model.save_pretrained(out_dir, save_compressed=True)
    tokenizer.save_pretrained(out_dir)
    return seconds


def reload(out_dir: str | Path, device: str = "cpu"):
    """Load a saved compressed-tensors checkpoint with plain transformers (weights decompressed to float)."""
    from transformers import AutoModelForCausalLM

    with _quiet_progress(), torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).to(device).eval()
        model(torch.zeros(1, 1, dtype=torch.long, device=device))  # the first forward pass decompresses the weights
    return model
