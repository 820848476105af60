"""The production toolkit, llm-compressor: run a recipe on the course's model, save it, reload it with transformers."""
from __future__ import annotations

import os
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from . import validate

# llm-compressor configures its logger when first imported, from this variable: warnings it gives on every CPU-only
# machine ("No accelerator available! Compressing model on CPU instead", also from building a recipe) are expected
# here, so only its errors are shown. Set LLM_COMPRESSOR_LOG_LEVEL=INFO before importing lessons_lib to see them.
os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")


def calibration_dataset(windows: torch.Tensor):
    """A datasets.Dataset of token windows, the form llm-compressor's oneshot takes."""
    from datasets import Dataset

    validate.token_ids(windows, "windows", todo="calibrate with data.token_windows(tokenizer, 'calib', 16, 256)")
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
    # llm-compressor re-configures its logger inside oneshot; this environment variable is what it reads there. Its
    # warnings on a CPU-only machine ("No accelerator available! Compressing model on CPU instead") are expected.
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")
    from llmcompressor import LoggerConfig, configure_logger

    configure_logger(LoggerConfig(console_log_level=os.environ["LLM_COMPRESSOR_LOG_LEVEL"]))  # errors still show
    logger.disable("llmcompressor")  # its per-layer progress logs would drown the notebook
    logger.disable("compressed_tensors")
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)  # "is_fx_tracing will return true ..."
    validate.model(model)
    validate.token_ids(windows, "windows", todo="calibrate with data.token_windows(tokenizer, 'calib', 16, 256)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _cpu_only_pin_memory_fix()
    if not isinstance(out_dir, (str, Path)) or not str(out_dir).strip():
        raise validate.BadInput(f"out_dir must be a folder path (str or Path), got {out_dir!r}")
    if not callable(getattr(tokenizer, "save_pretrained", None)):
        raise validate.BadInput(f"tokenizer must be the model's tokenizer (models.load_model() returns it), got "
                                f"{type(tokenizer).__name__}")
    out_dir = Path(out_dir)
    final, out_dir = out_dir, out_dir.with_name(f"{out_dir.name}.partial-{os.getpid()}")  # the old folder stays until done
    shutil.rmtree(out_dir, ignore_errors=True)
    with _quiet_progress():
        start = time.perf_counter()
        _oneshot(model=model, processor=tokenizer, dataset=calibration_dataset(windows), recipe=recipe,
                 max_seq_length=windows.shape[1], num_calibration_samples=windows.shape[0], shuffle_calibration_samples=False)
        seconds = time.perf_counter() - start
        with warnings.catch_warnings():  # llm-compressor leaves its CPU-offload hooks on; saving a CPU model is fine
            warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
            model.save_pretrained(out_dir, save_compressed=True)
    tokenizer.save_pretrained(out_dir)
    shutil.rmtree(final, ignore_errors=True)
    out_dir.rename(final)
    return seconds


def mappings(model, method: str) -> list:
    """llm-compressor's AWQ or SmoothQuant mappings, read from the course's architecture map (which module feeds
    which linears, by name), so its modifiers run on any family the map knows instead of guessing LLaMA's names.

    Only groups whose feeder takes a per-channel scale are mapped; a fused feeder whose output only partly feeds a
    group (Phi-3's qkv -> o) is left out, as llm-compressor's own Phi-3 mappings do. llm-compressor folds a norm's
    scale as w / s whatever the norm computes: right for x * w norms, not for Gemma's x * (1 + w)."""
    import re

    from llmcompressor.modifiers.transform.awq import AWQMapping

    from . import architecture

    method = validate.choice(method, "method", ["awq", "smoothquant"])
    layer = architecture.decoder_layers(model)[0]
    lay = architecture.layout(layer)
    feeders = {"attention input": lay.attn_norm, "attention output": lay.qkv[-1], "mlp input": lay.mlp_norm,
               "mlp output": lay.up[-1]}
    prefix = re.escape(architecture.layers_path(model)) + r"\.\d+\."  # inside a decoder layer, never the final norm
    out = []
    for g in architecture.groups(layer):
        partial = g.fold == "linear" and g.rows and g.rows != g.smooth.weight.shape[0]
        if not g.foldable or partial or (method == "smoothquant" and g.fold == "linear"):
            continue
        smooth = f"re:{prefix}{re.escape(feeders[g.role])}$"
        balance = [f"re:{prefix}{re.escape(path)}$" for path in g.paths]
        out.append(AWQMapping(smooth, balance) if method == "awq" else [balance, smooth])
    return out


def _saved_folder(out_dir) -> Path:
    """A folder that oneshot saved (it holds config.json), or a clear error."""
    if not isinstance(out_dir, (str, Path)) or not str(out_dir).strip():
        raise validate.BadInput(f"out_dir must be a folder path (str or Path), got {out_dir!r}")
    if not (Path(out_dir) / "config.json").is_file():
        raise FileNotFoundError(f"no saved checkpoint in {Path(out_dir).name!r} (no config.json): run toolkit.oneshot(..., "
                                f"out_dir) first")
    return Path(out_dir)


def reload(out_dir: str | Path, device: str = "cpu"):
    """Load a saved compressed-tensors checkpoint with plain transformers (weights decompressed to float)."""
    from transformers import AutoModelForCausalLM

    device = validate.device(device)
    out_dir = _saved_folder(out_dir)

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

    device = validate.device(device)
    out_dir = _saved_folder(out_dir)
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
