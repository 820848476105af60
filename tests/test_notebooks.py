"""What every stored notebook must hold: outputs that teach (no machine paths, no frozen progress bars, no known
harmless chatter) and enough cells compared by nbval to hold the lessons to what they show."""
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
MARKERS = ("NBVAL_IGNORE_OUTPUT", "NBVAL_SKIP", "NBVAL_RAISES_EXCEPTION")
MIN_COMPARED = 0.80

# An absolute path of some machine: POSIX roots where homes, checkouts and environments live, or a Windows drive.
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:home|root|work|tmp|Users|usr|opt|var|mnt|srv|private|content|scratch)/"
                          r"|\b[A-Za-z]:\\\\|site-packages")
# Known noise that a learner reads as trouble, filtered at its source in lessons_lib.
CHATTER = {
    "a progress bar": re.compile(r"\d+%\|"),
    "llm-compressor's CPU warning": re.compile(r"No accelerator available"),
    "torch.fx's tracing note": re.compile(r"is_fx_tracing will return true"),
    "transformers' offload note": re.compile(r"Attempting to save a model with offloaded modules"),
    "lm-eval's task chatter": re.compile(r"\[Task: \w+\] metric|appears to be an instruct or chat"),
}


def code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def compared(cell) -> bool:
    """As nbval reads its markers: any line that is a comment holding exactly a marker (lax mode is not used)."""
    comments = {line.strip().lstrip("#").strip() for line in cell.source.splitlines() if line.strip().startswith("#")}
    return not comments & set(MARKERS)


def output_texts(cell):
    for out in cell.get("outputs", []):
        if "text" in out:
            yield out["text"]
        for mime, value in out.get("data", {}).items():
            if mime.startswith("text/") or mime == "application/json":
                yield value if isinstance(value, str) else str(value)
        if "traceback" in out:
            yield "\n".join(out["traceback"])


def test_at_least_80_percent_of_code_cells_are_compared():
    cells = [c for p in NOTEBOOKS for c in code_cells(p)]
    share = sum(map(compared, cells)) / len(cells)
    per_notebook = {p.name: f"{sum(map(compared, code_cells(p)))}/{len(code_cells(p))}" for p in NOTEBOOKS}
    assert share >= MIN_COMPARED, f"only {share:.0%} of {len(cells)} code cells are compared by nbval: {per_notebook}"


def test_the_ratio_reads_markers_as_nbval_does():
    cell = nbformat.v4.new_code_cell
    assert not compared(cell("# NBVAL_IGNORE_OUTPUT\nprint(1)")) and compared(cell("print(1)"))
    assert not compared(cell("x = 1\n  #  NBVAL_SKIP")) and not compared(cell("# NBVAL_RAISES_EXCEPTION\n1 / 0"))
    assert compared(cell("x = 1  # a mention of NBVAL_SKIP is no marker\nprint(x)"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_machine_path_in_stored_outputs(path):
    found = [(i, m.group(0), text[max(0, m.start() - 40): m.end() + 40])
             for i, c in enumerate(code_cells(path)) for text in output_texts(c) for m in MACHINE_PATH.finditer(text)]
    assert not found, f"{path.name}: code cells print a machine's path (re-execute with `make execute`): {found[:3]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_progress_bars_or_known_chatter_in_stored_outputs(path):
    found = [(i, what) for i, c in enumerate(code_cells(path)) for text in output_texts(c)
             for what, pattern in CHATTER.items() if pattern.search(text)]
    assert not found, f"{path.name}: stored outputs hold noise (re-execute with `make execute`): {sorted(set(found))[:6]}"


def test_the_path_pattern_catches_paths_and_spares_prose():
    for text in ("/root/.cache/x", "see /home/ana/course", "/work/main/.venv/lib/python3.11/site-packages/t.py:3",
                 "C:\\\\Users\\\\ana", "/tmp/pytest-1/x"):
        assert MACHINE_PATH.search(text), text
    for text in ("8/512 windows", "tokens/s 12.5", "results/04.json in the course cache", "GB/s", "1/4 of /dev"):
        assert not MACHINE_PATH.search(text), text
