import runpy
from pathlib import Path

import pytest

from lessons_lib import exercises

SOLUTIONS = sorted((Path(__file__).resolve().parent.parent / "solutions").glob("*.py"))


def test_checker_accepts_right_and_rejects_wrong(capsys):
    for key, ex in exercises.EXERCISES.items():
        right = ex.expected()
        assert exercises.check(key, right)
        assert not exercises.check(key, "nonsense" if isinstance(right, str) else right * 1.5)
        assert "Hint:" in capsys.readouterr().out
    assert not exercises.check("00.kv_bytes_8b", None)
    assert "not answered yet" in capsys.readouterr().out
    assert not exercises.check("00.kv_bytes_8b", "lots")
    with pytest.raises(KeyError, match="unknown exercise"):
        exercises.check("99.nothing", 1)


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_instructor_solutions_pass_the_checkers(path):
    runpy.run_path(str(path))


def test_every_exercise_has_a_solution():
    text = "".join(p.read_text() for p in SOLUTIONS)
    assert all(f'"{key}"' in text for key in exercises.EXERCISES)
