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
    """A saved llm-compressor checkpoint with every quantized linear layer on a real torch kernel, from the
    checkpoint's own codes and scales (nothing re-quantized): W4A16 (4-bit symmetric groups, pack-quantized) on
    torch's int4 kernel, W8A8 (int8 per-channel weights, dynamic per-token int8 activations) on torch._int_mm."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from safetensors.torch import load_file

    from . import kernels

    model = reload(out_dir, device)  # embeddings, norms and the layers left in float come from here
    scheme, group_size = _kernel_scheme(model.config)
    tensors = {}
    for f in sorted(Path(out_dir).glob("*.safetensors")):
        tensors.update(load_file(f))
    for key in [k for k in tensors if k.endswith(".weight_scale")]:
        name = key[: -len(".weight_scale")]
        scale = tensors[key].float().to(device)
        if scheme == "w4a16":
            shape = torch.Size(tensors[f"{name}.weight_shape"].tolist())
            codes = unpack_from_int32(tensors[f"{name}.weight_packed"], 4, shape).to(torch.int32) + 8  # -8..7 -> 0..15
            qw = kernels.Int4WeightOnly.from_codes(codes.to(device), scale, torch.zeros_like(scale), group_size)
        else:
            qw = kernels.Int8W8A8.from_codes(tensors[f"{name}.weight"].to(device), scale, torch.float32,
                                             act_half_range=127.5)  # compressed-tensors' activation grid
        kernels._set_module(model, name, kernels.QuantLinear(qw, model.get_submodule(name).bias))
    return model


def _kernel_scheme(config) -> tuple[str, int | None]:
    """("w4a16", group size) or ("w8a8", None) for the two schemes load_on_kernels runs; a clear error otherwise."""
    q = getattr(config, "quantization_config", None)
    q = q if isinstance(q, dict) else getattr(q, "to_dict", lambda: {})()
    groups = list(q.get("config_groups", {}).values())
    w = groups[0].get("weights") or {} if len(groups) == 1 else {}
    a = groups[0].get("input_activations") or {} if len(groups) == 1 else {}
    if (q.get("format") == "pack-quantized" and w.get("num_bits") == 4 and w.get("symmetric")
            and w.get("strategy") == "group" and not w.get("actorder") and not a):
        return "w4a16", w["group_size"]
    if (q.get("format") == "int-quantized" and w.get("num_bits") == 8 and w.get("symmetric")
            and w.get("strategy") == "channel" and a.get("num_bits") == 8 and a.get("dynamic")
            and a.get("strategy") == "token" and a.get("symmetric")):
        return "w8a8", None
    raise ValueError("load_on_kernels takes two schemes: W4A16 (4-bit symmetric groups, no act-order, pack-quantized) "
                     "and W8A8 (int8 per-channel weights, dynamic per-token int8 activations, int-quantized); "
                     f"this checkpoint has {q.get('format')} {groups}")
