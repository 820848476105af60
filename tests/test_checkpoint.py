"""The offline checkpoint cache heals: broken files are named and rebuilt, and concurrent conversions both succeed.

Most tests replace the 30-second GGUF conversion by a stub that writes a tiny folder; one test (marked `conversion`)
runs two real conversions at once."""
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lessons_lib import models


def _stub_convert(source: Path, dest: Path) -> None:
    """Write a tiny checkpoint-shaped folder, slowly enough for two processes to overlap; count the calls."""
    time.sleep(float(os.environ.get("QHT_STUB_SECONDS", "0")))
    save_file({"a": torch.zeros(3), "b": torch.ones(2, 2)}, str(dest / "model.safetensors"))
    (dest / "config.json").write_text('{"model_type": "llama"}')
    (dest / "tokenizer.json").write_text('{"model": {}}')
    (dest / "tokenizer_config.json").write_text("{}")
    with open(dest.parent / "conversions.log", "a") as log:
        log.write(f"{os.getpid()}\n")


@pytest.fixture
def stub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QHT_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_convert", _stub_convert)
    monkeypatch.setattr(models, "gguf_path", lambda: tmp_path / "stub.gguf")
    return tmp_path


def conversions(cache: Path) -> int:
    log = cache / "conversions.log"
    return len(log.read_text().split()) if log.exists() else 0


def test_fresh_cache_is_built_once_with_a_manifest(stub_cache):
    folder = models.offline_checkpoint()
    assert folder == stub_cache / models.CHECKPOINT_NAME and models.checkpoint_problem(folder) is None
    assert json.loads((folder / models.MANIFEST).read_text())["tensors"] == 2
    assert models.offline_checkpoint() == folder and conversions(stub_cache) == 1
    assert not list(stub_cache.glob("*.tmp-*"))


def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _garble_same_size(p: Path):
    data = bytearray(p.read_bytes())
    data[2:6] = b"\xff\xfe!!"
    p.write_bytes(bytes(data))


DAMAGE = {
    "truncated weights": ("model.safetensors", _truncate),
    "empty weights": ("model.safetensors", lambda p: p.write_bytes(b"")),
    "garbled weights header": ("model.safetensors", _garble_same_size),
    "empty config": ("config.json", lambda p: p.write_text("")),
    "garbled config": ("config.json", _garble_same_size),
    "missing tokenizer": ("tokenizer.json", lambda p: p.unlink()),
    "garbled manifest": (models.MANIFEST, lambda p: p.write_text("{not json")),
    "missing manifest, truncated weights": (models.MANIFEST, lambda p: (p.unlink(), _truncate(p.parent / "model.safetensors"))),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_cache_is_named_and_rebuilt(stub_cache, damage):
    folder = models.offline_checkpoint()
    name, harm = DAMAGE[damage]
    harm(folder / name)
    assert models.checkpoint_problem(folder) is not None
    with pytest.warns(UserWarning, match="unusable") as caught:
        assert models.offline_checkpoint() == folder
    assert str(folder) in str(caught[0].message)
    assert models.checkpoint_problem(folder) is None and conversions(stub_cache) == 2


def test_an_older_complete_cache_is_adopted_without_converting(stub_cache):
    folder = models.offline_checkpoint()
    (folder / models.MANIFEST).unlink()
    assert "missing" in models.checkpoint_problem(folder)
    assert models.offline_checkpoint() == folder and conversions(stub_cache) == 1
    assert models.checkpoint_problem(folder) is None


def test_full_verify_hashes_the_weights(stub_cache, monkeypatch):
    monkeypatch.setattr(models, "_HASHED_UP_TO", 100)  # the stub's weights are tiny: treat them as large
    folder = models.offline_checkpoint()
    _garble_same_size_tail = bytearray((folder / "model.safetensors").read_bytes())
    _garble_same_size_tail[-1] ^= 0xFF  # a flipped bit in the tensor data: same size, header intact
    (folder / "model.safetensors").write_bytes(bytes(_garble_same_size_tail))
    assert models.checkpoint_problem(folder) is None  # the cheap check cannot see it ...
    assert "hash" in models.checkpoint_problem(folder, full=True)  # ... `python -m lessons_lib.models --verify` does


def test_a_failed_conversion_leaves_no_folder_behind(stub_cache, monkeypatch):
    def broken(source, dest):
        (dest / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(models, "_convert", broken)
    (stub_cache / f"{models.CHECKPOINT_NAME}.tmp-stale").mkdir()  # left by a killed conversion
    with pytest.raises(RuntimeError, match="disk full"):
        models.offline_checkpoint()
    assert not (stub_cache / models.CHECKPOINT_NAME).exists() and not list(stub_cache.glob("*.tmp-*"))


def test_unloadable_offline_cache_names_the_folder_not_the_hub(stub_cache):
    folder = models.offline_checkpoint()  # passes the file checks, but it is no real model
    with pytest.raises(models.BrokenCheckpoint) as err:
        models.load_model()
    assert str(folder) in str(err.value) and models.REBUILD_COMMAND in str(err.value)
    assert "hub" not in str(err.value)


def test_a_gguf_file_is_parsed_once_within_a_conversion(tmp_path):
    import gguf
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("w", torch.arange(8, dtype=torch.float32).numpy())
    for step in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file, writer.close):
        step()
    original = gguf.GGUFReader, gguf.get_tensor_name_map
    with models._each_gguf_parsed_once():
        first, names = gguf.GGUFReader(path), gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
        assert gguf.GGUFReader(str(path)) is first and first.tensors[0].name == "w"
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is names
        assert names.get_name("model.layers.1.self_attn.q_proj") == "blk.1.attn_q"
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == original and gguf.GGUFReader(path) is not first


def _convert_in_child(queue):
    try:
        queue.put(str(models.offline_checkpoint()))
    except Exception as err:  # reported to the parent
        queue.put(f"error: {err!r}")


def test_two_processes_converting_at_once_both_succeed(stub_cache, monkeypatch):
    monkeypatch.setenv("QHT_STUB_SECONDS", "1.0")
    ctx = multiprocessing.get_context("fork")  # children inherit the stub converter
    queue = ctx.Queue()
    procs = [ctx.Process(target=_convert_in_child, args=(queue,)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    answers = [queue.get(timeout=5) for _ in procs]
    assert answers == [str(stub_cache / models.CHECKPOINT_NAME)] * 2
    assert conversions(stub_cache) == 1  # the second waited on the lock and used the first one's folder
    assert models.checkpoint_problem(stub_cache / models.CHECKPOINT_NAME) is None


@pytest.mark.conversion
def test_two_real_conversions_at_once_both_succeed(tmp_path):
    """Slow (about 30 s on 2 cores): two real `python -m lessons_lib.models` into one fresh cache at the same time."""
    env = {**os.environ, "QHT_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-m", "lessons_lib.models"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    folder = tmp_path / models.CHECKPOINT_NAME
    assert models.checkpoint_problem(folder, full=True) is None
    assert json.loads((folder / models.MANIFEST).read_text())["tensors"] == 272
    assert not list(tmp_path.glob("*.tmp-*"))
