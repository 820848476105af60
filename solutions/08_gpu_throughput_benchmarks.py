"""Instructor solutions for lesson 08 (tests/test_exercises.py runs them against the checkers)."""
from lessons_lib.exercises import check

assert check("08.h200_ridge", 989.5e12 / 4.8e12)
assert check("08.int4_gemv_us", 14336 * 4096 / 2 / 4.8e12 * 1e6)


def gemm_time(batch, out_features, in_features, bytes_per_weight, peak_flops, bandwidth) -> float:
    flops = 2 * batch * out_features * in_features
    moved = out_features * in_features * bytes_per_weight + 2 * batch * in_features + 2 * batch * out_features
    return max(flops / peak_flops, moved / bandwidth)


assert check("08.gemm_time", gemm_time)
