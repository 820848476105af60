"""Instructor solutions for lesson 02 (tests/test_exercises.py runs them against the checkers)."""
from lessons_lib.exercises import check

assert check("02.bpw_asym_g64", 4 + (16 + 4) / 64)
step = 6.35 / 127
assert check("02.int8_step", step)
assert check("02.int8_worst_error", step / 2)
