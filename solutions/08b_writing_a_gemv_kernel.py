"""Instructor solutions for lesson 08b (tests/test_exercises.py runs them against the checkers)."""
import torch

from lessons_lib.exercises import check


def dequantize(packed, scale, zero, group_size):
    q = torch.stack([packed >> 4, packed & 0xF], dim=-1).reshape(packed.shape[0], -1).float()
    return (q - 8) * scale.float().repeat_interleave(group_size, 1) + zero.float().repeat_interleave(group_size, 1)


assert check("08b.dequantize_int4", dequantize)
assert check("08b.w4a16_gemv_bytes", 14336 * 4096 / 2 + 14336 * (4096 / 128) * 2 * 2 + 4096 * 2 + 14336 * 2)
