"""4-bit codebooks: NF4 built from normal quantiles, as QLoRA describes it."""
from __future__ import annotations

import torch


def nf4_levels() -> torch.Tensor:
    """NF4's 16 levels, ascending: 8 positive and 7 negative normal quantiles plus an exact zero, in [-1, 1]."""
    # The outermost quantile: midway between those of 15 and 16 equal-probability bins (QLoRA, appendix E).
    offset = (1 - 1 / (2 * 15) + 1 - 1 / (2 * 16)) / 2
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([positive, negative, torch.zeros(1, dtype=torch.float64)])
    return torch.sort(levels / levels.max()).values
