"""Instructor solutions for lesson 01 (tests/test_exercises.py runs them against the checkers)."""
from lessons_lib.exercises import check

# E5M2: bias 15, top finite exponent field 30 -> 2**15; mantissa 1.11b = 1.75.
assert check("01.e5m2_max", 1.75 * 2**15)
# 256 patterns - 2 NaN patterns (sign x S.1111.111) - 1 duplicate zero.
assert check("01.e4m3_finite_values", 256 - 2 - 1)
# Exponent 1 - 15 = -14, smallest mantissa step 2**-10.
assert check("01.fp16_min_subnormal", 2.0 ** (1 - 15 - 10))
