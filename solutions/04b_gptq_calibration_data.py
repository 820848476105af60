"""Instructor solutions for lesson 04b (tests/test_exercises.py runs them against the checkers)."""
import math

from lessons_lib import hardware as hw
from lessons_lib.exercises import check

assert check("04b.rank_after_3_windows", min(3 * 256, hw.SMOLLM2_135M.mlp))  # 768 tokens, 1536 inputs
assert check("04b.windows_70b_down", math.ceil(hw.LLAMA3_70B.mlp / 2048))  # 28672 inputs: 14 windows
