"""Instructor solutions for lesson 03 (tests/test_exercises.py runs them against the checkers)."""
from lessons_lib import hardware as hw
from lessons_lib.exercises import check

dq = 4 + 8 / 64 + 32 / (64 * 256)
assert check("03.bpp_dq", dq)
assert check("03.bpp_block128", 4 + 32 / 128)
assert check("03.gb_70b_nf4_dq", hw.LLAMA3_70B.parameters * dq / 8 / 1e9)
