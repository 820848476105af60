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


def test_labels_are_compared_without_case_or_spacing(capsys):
    label = exercises.EXERCISES["09.scenario_chat"].expected()
    assert exercises.check("09.scenario_chat", "  " + label.upper().replace(" ", "   ") + "\n")
    assert exercises.check("09.scenario_chat", label.replace(" ", ""))
    assert not exercises.check("09.scenario_chat", 1.0)  # a number is not a label
    assert "expected a label" in capsys.readouterr().out


def test_numbers_within_the_stated_tolerance_or_equal_after_rounding(capsys):
    expected = exercises.EXERCISES["00.h100_int4_floor_ms"].expected()  # rel_tol 1%
    assert exercises.check("00.h100_int4_floor_ms", expected * 1.009)
    assert "within 1%" in capsys.readouterr().out
    assert not exercises.check("00.h100_int4_floor_ms", expected * 1.02)
    out = capsys.readouterr().out
    assert "too high" in out and "within 1%" in out
    bpw = exercises.EXERCISES["02.bpw_asym_g64"].expected()  # 4.3125, rel_tol 1e-9
    assert exercises.check("02.bpw_asym_g64", round(bpw, 2))  # 4.31: the expected value rounded to the digits given
    assert exercises.check("02.bpw_asym_g64", round(bpw, 3)) and exercises.check("02.bpw_asym_g64", 4.313)  # half even or up
    assert not exercises.check("02.bpw_asym_g64", 4.3)  # two digits are too few to count as a rounding
    assert not exercises.check("02.bpw_asym_g64", 4.32)
    n = exercises.EXERCISES["01.e4m3_finite_values"].expected()  # a count: exact only
    assert exercises.check("01.e4m3_finite_values", n) and not exercises.check("01.e4m3_finite_values", n + 1)
    assert "exactly" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), True, False, "12", [1.0], {"a": 1}, 1j])
def test_non_numbers_are_refused_not_judged(capsys, bad):
    assert not exercises.check("00.h100_int4_floor_ms", bad)
    out = capsys.readouterr().out
    assert "expected a finite number" in out and "too" not in out


def test_numeric_scalars_of_other_libraries_are_accepted():
    import numpy as np
    import torch

    n = exercises.EXERCISES["01.e4m3_finite_values"].expected()
    assert exercises.check("01.e4m3_finite_values", np.int64(n)) and exercises.check("01.e4m3_finite_values", torch.tensor(n))
    assert not exercises.check("01.e4m3_finite_values", np.bool_(True))


@pytest.mark.parametrize("key", [None, 4, "", "00.KV_BYTES_8B "])
def test_unknown_keys_are_refused(key):
    with pytest.raises(KeyError, match="unknown exercise"):
        exercises.check(key, 1)
