"""Instructor solutions for lesson 01 (tests/test_exercises.py runs them against the checkers)."""
import math

from lessons_lib.exercises import check

# E5M2: bias 15, top finite exponent field 30 -> 2**15; mantissa 1.11b = 1.75.
assert check("01.e5m2_max", 1.75 * 2**15)
# 256 patterns - 2 NaN patterns (sign x S.1111.111) - 1 duplicate zero.
assert check("01.e4m3_finite_values", 256 - 2 - 1)
# Exponent 1 - 15 = -14, smallest mantissa step 2**-10.
assert check("01.fp16_min_subnormal", 2.0 ** (1 - 15 - 10))


def decode_e4m3(byte: int) -> float:
    sign, e, m = byte >> 7, (byte >> 3) & 15, byte & 7
    if e == 15 and m == 7:  # E4M3FN: the only NaN pattern per sign, no Inf
        return math.nan
    value = m / 8 * 2.0**-6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
    return -value if sign else value


assert check("01.decode_e4m3", decode_e4m3)
