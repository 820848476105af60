"""Instructor solutions for lesson 04 (tests/test_exercises.py runs them against the checkers)."""
import torch

from lessons_lib import hardware as hw
from lessons_lib.exercises import check

assert check("04.min_tokens_full_rank", hw.SMOLLM2_135M.mlp)  # rank(X^T X) <= tokens; it needs 1536
assert check("04.bpw_g128_act_order", 4 + 16 / 128 + 32 / 4096)


def gptq_step(w: torch.Tensor, u: torch.Tensor, i: int, q: torch.Tensor) -> torch.Tensor:
    err = (w[:, i] - q) / u[i, i]
    new = w.clone()
    new[:, i + 1:] -= torch.outer(err, u[i, i + 1:])
    new[:, i] = q
    return new


assert check("04.gptq_step", gptq_step)
