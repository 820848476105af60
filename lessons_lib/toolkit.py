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


def load_on_kernels(out_dir: str | Path, device: str = "cpu"):
    """A saved 4-bit symmetric group checkpoint (llm-compressor W4A16, pack-quantized) with every quantized linear
    layer running torch's int4 kernel on the checkpoint's own codes and scales (nothing re-quantized)."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from safetensors.torch import load_file

    from . import kernels

    model = reload(out_dir, device)  # embeddings, norms and the layers left in float come from here
    group_size = _w4_group_size(model.config)
    tensors = {}
    for f in sorted(Path(out_dir).glob("*.safetensors")):
        tensors.update(load_file(f))
    for key in [k for k in tensors if k.endswith(".weight_packed")]:
        name = key[: -len(".weight_packed")]
        shape = torch.Size(tensors[f"{name}.weight_shape"].tolist())
        codes = unpack_from_int32(tensors[key], 4, shape).to(torch.int32) + 8  # signed -8..7 -> 0..15
        scale = tensors[f"{name}.weight_scale"].float()
        qw = kernels.Int4WeightOnly.from_codes(codes.to(device), scale.to(device), torch.zeros_like(scale).to(device),
                                               group_size)
        kernels._set_module(model, name, kernels.QuantLinear(qw, model.get_submodule(name).bias))
    return model


def _w4_group_size(config) -> int:
    """The group size of a symmetric 4-bit pack-quantized config; a clear error for any other scheme."""
    q = getattr(config, "quantization_config", None)
    q = q if isinstance(q, dict) else getattr(q, "to_dict", lambda: {})()
    groups = list(q.get("config_groups", {}).values())
    w = groups[0].get("weights", {}) if len(groups) == 1 else {}
    if not (q.get("format") == "pack-quantized" and w.get("num_bits") == 4 and w.get("symmetric")
            and w.get("strategy") == "group" and not w.get("actorder")):
        raise ValueError("load_on_kernels takes one scheme: 4-bit, symmetric, groups, no act-order, pack-quantized "
                         f"(llm-compressor's W4A16); this checkpoint has {q.get('format')} {w or groups}")
    return w["group_size"]
