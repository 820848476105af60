"""Instructor solutions for lesson 07b (tests/test_exercises.py runs them against the checkers)."""
import torch

from lessons_lib import hardware as hw
from lessons_lib.exercises import check


def decode_mxfp4(packed, scales):
    codes = torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(packed.shape[0], -1)
    magnitude = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6])[(codes & 7).long()]
    value = torch.where(codes & 8 > 0, -magnitude, magnitude)
    return value * torch.exp2(scales.float() - 127).repeat_interleave(32, 1)


assert check("07b.decode_mxfp4", decode_mxfp4)
assert check("07b.nvfp4_70b_gb", hw.LLAMA3_70B.parameters * (4 + 8 / 16) / 8 / 1e9)
assert check("07b.q4_k_bits", (128 + 12 + 2 + 2) * 8 / 256)
