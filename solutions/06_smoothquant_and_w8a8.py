"""Instructor solutions for lesson 06 (tests/test_exercises.py runs them against the checkers)."""
from lessons_lib.exercises import check

assert check("06.smoothing_factor", 40**0.5 / 0.5**0.5)
step = 1200 / 127
assert check("06.codes_left", len({round(x / 1000 / step) for x in range(0, 6001)}))  # codes 0 and 1
