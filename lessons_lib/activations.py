"""Capture what flows into a model's linear layers, with forward hooks."""
from __future__ import annotations

import torch


@torch.no_grad()
def capture_inputs(model, names: list[str], windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run `windows` through the model; return each named module's input as [tokens, features] (float32)."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise KeyError(f"no modules named {missing}; see models.linear_weights(model) for the names")
    captured: dict[str, list] = {n: [] for n in names}
    hooks = [modules[n].register_forward_pre_hook(
        lambda _m, args, n=n: captured[n].append(args[0].detach().reshape(-1, args[0].shape[-1]).float().cpu()))
        for n in names]
    try:
        device = next(model.parameters()).device
        for window in windows.split(1):
            model(window.to(device))
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(chunks) for n, chunks in captured.items()}


def channel_absmax(x: torch.Tensor) -> torch.Tensor:
    """Largest |value| of each feature channel (the last dimension) over all tokens."""
    return x.abs().reshape(-1, x.shape[-1]).amax(0)


@torch.no_grad()
def input_channel_absmax(model, windows: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Per input channel, the largest |activation| entering each named linear layer (default: all of them)."""
    from .models import linear_weights

    modules = dict(model.named_modules())
    names = list(linear_weights(model)) if names is None else names
    stats: dict[str, torch.Tensor] = {}

    def hook(_m, args, n):
        m = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float().cpu()
        stats[n] = m if n not in stats else torch.maximum(stats[n], m)

    handles = [modules[n].register_forward_pre_hook(lambda m, a, n=n: hook(m, a, n)) for n in names]
    try:
        device = next(model.parameters()).device
        for window in windows.split(1):
            model(window.to(device))
    finally:
        for h in handles:
            h.remove()
    return stats
