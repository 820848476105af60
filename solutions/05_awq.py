"""Instructor solutions for lesson 05 (tests/test_exercises.py runs them against the checkers)."""
from lessons_lib.exercises import check

assert check("05.folded_norm_weight", 0.8 / 2.5)
plain = 4 + 16 / 128
assert check("05.keep_1pct_fp16_overhead", (0.01 * 16 + 0.99 * plain) / plain - 1)
