"""scripts/claims_by_model.py pairs each printed claim of two runs of a lesson and says what the other run did not check."""
import runpy
from pathlib import Path

import nbformat

script = runpy.run_path(str(Path(__file__).resolve().parent.parent / "scripts" / "claims_by_model.py"))


def notebook(path: Path, lines: list[str], error: bool = False) -> Path:
    cell = nbformat.v4.new_code_cell("claims.check(...)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="\n".join(lines) + "\n")]
    if error:
        cell.outputs.append(nbformat.v4.new_output("error", ename="KeyError", evalue="'q_proj'", traceback=[]))
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), path)
    return path


def test_split_takes_the_last_parenthesised_group_as_the_numbers():
    assert script["_split"]("GPTQ beats RTN (21.1 vs 27.2 (interval -7 to -5))") == ("GPTQ beats RTN", "21.1 vs 27.2 (interval -7 to -5)")
    assert script["_split"]("no numbers here") == ("no numbers here", "")
    assert script["_split"]("f(x) is finite") == ("f(x) is finite", "")


def test_claims_pair_by_text_and_facts_of_the_default_model_are_named(tmp_path):
    default = notebook(tmp_path / "a.ipynb", ["[held] AWQ beats RTN (1 vs 2)", "[held] 576 is not divisible by 128 (576)",
                                              "[held] no decode beats its floor (within 20% for the timer)", "other output"])
    other = notebook(tmp_path / "b.ipynb", ["[NOT HELD] AWQ beats RTN (3 vs 2)",
                                            "[held] no decode beats its floor (within 20% for the timer)"], error=True)
    lines, counts = script["table"](default, other)
    assert "| AWQ beats RTN | held: 1 vs 2 | not held: 3 vs 2 |" in lines
    assert any(line.startswith("| 576 is not divisible by 128 | held: 576 | not checked") for line in lines)
    assert "| no decode beats its floor (within 20% for the timer) | held | held |" in lines  # same text both: the claim's
    assert any("error cell" in line and "KeyError" in line for line in lines)
    assert counts == {"held on both": 1, "held on the default model only": 1, "not checked there": 1, "other": 0, "errors": 1}
