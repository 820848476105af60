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
    "transformers' BPE clean-up warning": re.compile(r"Ignoring clean_up_tokenization_spaces"),
    "the profiler's start / stop lines": re.compile(r"SyncActivityProfilerHandler|profiler_(start|stop)"),
}


def code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def compared(cell) -> bool:
    """As nbval reads its markers (any line that is a comment holding exactly a marker; lax mode is not used); a cell
    never run is not compared, nor one whose outputs are recorded per CPU kind but not for this one (conftest)."""
    from conftest import cpu_kind

    comments = {line.strip().lstrip("#").strip() for line in cell.source.splitlines() if line.strip().startswith("#")}
    by_cpu = cell.get("metadata", {}).get("qht_outputs_by_cpu")
    return not comments & set(MARKERS) and cell.get("execution_count") is not None and (by_cpu is None or cpu_kind() in by_cpu)


def output_texts(cell):
    """Every text a cell's stored outputs hold: its outputs, and those kept per CPU kind in its metadata."""
    kept = cell.get("metadata", {}).get("qht_outputs_by_cpu", {}).values()
    for out in [*cell.get("outputs", []), *(o for outputs in kept for o in outputs)]:
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
    assert not compared(cell("# NBVAL_IGNORE_OUTPUT\nprint(1)")) and compared(cell("print(1)", execution_count=1))
    assert not compared(cell("x = 1\n  #  NBVAL_SKIP")) and not compared(cell("# NBVAL_RAISES_EXCEPTION\n1 / 0"))
    assert compared(cell("x = 1  # a mention of NBVAL_SKIP is no marker\nprint(x)", execution_count=1))
    assert not compared(cell("print(1)", execution_count=None))  # nbval compares only cells that were run
    assert not compared(cell("print(1)", execution_count=1, metadata={"qht_outputs_by_cpu": {"no such CPU": []}}))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_cell_with_outputs_has_a_number(path):
    unnumbered = [i for i, c in enumerate(code_cells(path)) if c.get("outputs") and c.get("execution_count") is None]
    assert not unnumbered, f"{path.name}: code cells {unnumbered} hold outputs but no execution_count (nbval fails them)"


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


def test_outputs_agree_lets_numbers_move_a_little_and_nothing_else():
    from conftest import outputs_agree

    assert outputs_agree("perplexity 19.95 (95% interval 18.29-21.68)", "perplexity 19.96 (95% interval 18.30-21.67)")
    assert outputs_agree("KL 0.0211", "KL 0.0212") and outputs_agree("top-1 97.9%", "top-1 97.6%")  # 0.3% of 97.9
    assert outputs_agree("a    9.99  b", "a   10.01  b")  # a table column one digit wider
    assert not outputs_agree("perplexity 19.95", "perplexity 20.95")  # 5%: a real change
    assert not outputs_agree("[held] ours beats RTN", "[NOT HELD] ours beats RTN")  # verdicts are words: exact
    assert not outputs_agree("ours beats RTN: 25.4", "ours is indistinguishable from RTN: 25.4")
    assert not outputs_agree("1 2 3", "1 2")  # a number more or less is layout
    assert not outputs_agree("difference +0.03", "difference +0.30")


def test_outputs_recorded_for_this_cpu_kind_are_the_reference_and_other_kinds_are_not_compared():
    from types import SimpleNamespace

    import nbformat as nbf
    from conftest import SKIP_FIELDS, _tolerant, cpu_kind

    def out(text):
        return nbf.v4.new_output("stream", name="stdout", text=text)

    compare = _tolerant(lambda self, test, ref, skip=None: [o["text"] for o in test] == [o["text"] for o in ref])
    item = lambda metadata: SimpleNamespace(cell=SimpleNamespace(metadata=metadata), sanitize=lambda s: s,  # noqa: E731
                                            parent=SimpleNamespace(skip_compare=SKIP_FIELDS), comparison_traceback=[])
    stored, here = [out("ppl 19.95\n")], [out("ppl 19.92, +0.00\n")]
    assert not compare(item({}), [out("ppl 19.92, -0.03\n")], stored)
    assert compare(item({"qht_outputs_by_cpu": {cpu_kind(): here}}), here, stored)
    assert not compare(item({"qht_outputs_by_cpu": {cpu_kind(): here}}), [out("ppl 19.92, +0.90\n")], stored)
    assert compare(item({"qht_outputs_by_cpu": {cpu_kind(): here}}), stored, stored)  # the stored outputs are accepted too
    assert compare(item({"qht_outputs_by_cpu": {"another CPU": stored}}), here, stored)  # recorded elsewhere only
    assert compare(item({}), [out("ppl 19.96\n")], stored)  # within tolerance


def test_the_recorder_keeps_both_kinds_where_outputs_differ(tmp_path):
    import runpy

    import nbformat as nbf
    from conftest import cpu_kind

    record = runpy.run_path(str(Path(__file__).resolve().parent.parent / "scripts" / "record_cpu_outputs.py"))["record"]
    (tmp_path / "stored").mkdir(), (tmp_path / "run").mkdir()
    for folder, texts in (("stored", ["ppl 19.95\n", "ok 1\n"]), ("run", ["ppl 25.31\n", "ok 1\n"])):
        nb = nbf.v4.new_notebook(metadata={"qht_cpu": "ANOTHER CPU"})
        for i, t in enumerate(texts):
            nb.cells.append(nbf.v4.new_code_cell(f"print({i})", execution_count=i + 1,
                                                 outputs=[nbf.v4.new_output("stream", name="stdout", text=t)]))
        nbf.write(nb, tmp_path / folder / "x.ipynb")
    record(tmp_path / "run", notebooks=tmp_path / "stored")
    differs, agrees = nbf.read(tmp_path / "stored" / "x.ipynb", 4).cells
    by_cpu = differs.metadata["qht_outputs_by_cpu"]
    assert by_cpu["ANOTHER CPU"][0]["text"] == "ppl 19.95\n" and by_cpu[cpu_kind()][0]["text"] == "ppl 25.31\n"
    assert differs.outputs[0]["text"] == "ppl 19.95\n" and "qht_outputs_by_cpu" not in agrees.metadata
    record(tmp_path / "run", notebooks=tmp_path / "stored", primary=True)  # now the notebook shows this machine's run
    shown = nbf.read(tmp_path / "stored" / "x.ipynb", 4)
    differs = shown.cells[0]
    assert shown.metadata["qht_cpu"] == cpu_kind() and differs.outputs[0]["text"] == "ppl 25.31\n"
    assert differs.metadata["qht_outputs_by_cpu"]["ANOTHER CPU"][0]["text"] == "ppl 19.95\n"  # still compared there
    # this kind's copy is its own: writing the outputs (split into lines on disk) leaves the metadata's text one string
    assert differs.metadata["qht_outputs_by_cpu"][cpu_kind()][0]["text"] == "ppl 25.31\n"


README = NOTEBOOKS[0].parent.parent / "README.md"


def _seconds(figure: str) -> float:
    """'2.5 min' or '18 s' as seconds."""
    value, unit = figure.split()
    return float(value) * (60 if unit.startswith("min") else 1)


def readme_times() -> dict[str, list[float]]:
    """Each lesson's CPU times in the README's table (one per kind of host), in seconds, by lesson number."""
    rows = re.findall(r"^\| (\d\db?) \| .* \| ([\d.]+ (?:min|s)(?: / [\d.]+ (?:min|s))*) \| [^|]* \|$", README.read_text(),
                      re.M)
    return {number: [_seconds(f) for f in figures.split(" / ")] for number, figures in rows}


def header_range(path) -> tuple[float, float]:
    """The time range a notebook's first cell states: '**Time:** 2 to 4 minutes' or 'under 10 s', in seconds."""
    text = nbformat.read(path, as_version=4).cells[0].source
    m = re.search(r"\*\*Time:\*\* (?:under |([\d.]+) to )([\d.]+) (minutes|s)\b", text)
    assert m, f"{path.name}: no '**Time:** A to B minutes' (or 'under B s') in its header"
    scale = 60 if m.group(3) == "minutes" else 1
    return float(m.group(1) or 0) * scale, float(m.group(2)) * scale


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_header_time_covers_every_time_the_readme_measured(path):
    """A notebook's stated time holds every measured time of its README row (the table is the one record)."""
    measured = readme_times()[path.name.split("_")[0]]
    low, high = header_range(path)
    assert all(low - 3 <= t <= high + 3 for t in measured), (path.name, (low, high), measured)


def test_the_time_parsers_read_what_they_should():
    assert _seconds("2.5 min") == 150 and _seconds("18 s") == 18
    assert header_range(NOTEBOOKS[0]) == (120, 240)  # lesson 00: "2 to 4 minutes"
    assert len(readme_times()) == len(NOTEBOOKS)
