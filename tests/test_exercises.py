import runpy
from pathlib import Path

import pytest
import torch

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


@pytest.mark.parametrize("key", sorted(k for k, ex in exercises.CODE_EXERCISES.items() if not ex.elementwise))
def test_code_checkers_refuse_wrong_functions_and_name_the_usual_slips(key, capsys):
    ex = exercises.CODE_EXERCISES[key]
    assert exercises.check(key, ex.solution)  # the library's own function passes
    assert not exercises.check(key, lambda *a: torch.as_tensor(ex.solution(*a)) * 1.01 + 0.01)
    assert not exercises.check(key, lambda *a: 1 / 0)
    assert "raised ZeroDivisionError" in capsys.readouterr().out
    for message, slip in getattr(ex.diagnose, "slips", ()):
        assert not exercises.check(key, slip)
        assert message in capsys.readouterr().out, (key, message)


def test_the_gptq_step_reference_is_one_step_of_the_library_loop():
    from lessons_lib import gptq

    g = torch.Generator().manual_seed(5)
    x, w = torch.randn(300, 24, generator=g) * torch.rand(24, generator=g), torch.randn(6, 24, generator=g)
    h = gptq.hessian(x)
    lib = gptq.gptq_quantize(w, h, bits=4, group_size=None, block=24).weight
    s, z, qmin, qmax = gptq.grid(w, 4, True)
    u = gptq._inverse_cholesky(h.double() + 0.01 * h.diagonal().mean() * torch.eye(24, dtype=torch.float64)).float()
    step = exercises.CODE_EXERCISES["04.gptq_step"].solution
    W = w.clone()
    for i in range(24):
        W = step(W, u, i, gptq.quantize_column(W[:, i], s[:, 0], z[:, 0], qmin, qmax))
    assert torch.allclose(W, lib, atol=1e-5)


def test_elementwise_checkers_name_the_field_or_term_that_is_wrong(capsys):
    import math

    def e4m3(b):
        s, e, m = b >> 7, (b >> 3) & 15, b & 7
        v = math.nan if e == 15 and m == 7 else m / 8 * 2**-6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
        return -v if s else v

    assert exercises.check("01.decode_e4m3", e4m3)
    for wrong, words in [(lambda b: abs(e4m3(b)), "sign bit"), (lambda b: 2 * e4m3(b), "bias"),
                         (lambda b: math.inf if b & 0x7F == 0x78 else e4m3(b), "normal number in E4M3FN")]:
        assert not exercises.check("01.decode_e4m3", wrong)
        assert words in capsys.readouterr().out
    roof = lambda b, o, i, w, p, bw: max(2 * b * o * i / p, (o * i * w + 2 * b * i + 2 * b * o) / bw)  # noqa: E731
    assert exercises.check("08.gemm_time", roof)
    assert not exercises.check("08.gemm_time", lambda b, o, i, w, p, bw: 2 * b * o * i / p + (o * i * w + 2 * b * i + 2 * b * o) / bw)
    assert "not their sum" in capsys.readouterr().out
