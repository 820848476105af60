import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lessons_lib import data, resource

ROOT = Path(__file__).resolve().parent.parent


class CharTokenizer:
    """A stand-in tokenizer (one id per character) so these tests need no model."""

    def __call__(self, text, return_tensors=None):
        import torch

        ids = torch.tensor([[ord(c) % 1000 for c in text]])
        return type("Enc", (), {"input_ids": ids})()


def test_text_sets_exist_and_are_small():
    total = sum(len(resource("text", f"{n}.txt").read_bytes()) for n in data.TEXT_SETS)
    assert total < 5e6
    for name in data.TEXT_SETS:
        assert len(data.load_text(name)) > 100_000


def test_eval_and_calibration_do_not_overlap():
    ev, cal = data.load_text("eval"), data.load_text("calib")
    assert all(p not in cal for p in ev.split("\n\n")[:50] if len(p) > 200)


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
    docs = data.documents("calib", n_docs=3, min_chars=1000)
    assert len(docs) == 3 and all(len(d) >= 1000 for d in docs)


def test_text_sets_rebuild_identically():
    """scripts/build_text.py run again from the registry packages gives the committed files."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_text.py"), "--check"], check=True)
