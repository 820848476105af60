"""Instructor solutions for lesson 04 (tests/test_exercises.py runs them against the checkers)."""
from lessons_lib import hardware as hw
from lessons_lib.exercises import check

assert check("04.min_tokens_full_rank", hw.SMOLLM2_135M.mlp)  # rank(X^T X) <= tokens; it needs 1536
assert check("04.bpw_g128_act_order", 4 + 16 / 128 + 32 / 4096)
