"""Capture what flows into a model's linear layers, with forward hooks."""
from __future__ import annotations

from typing import Callable

import torch

from . import validate


class InputsSeen(Exception):
    """Raised inside a forward pass once every hooked module has seen its input."""


@torch.no_grad()
def run_with_input_hooks(model, windows: torch.Tensor, hooks: dict[str, Callable[[torch.Tensor], None]],
                         stop_early: bool = True) -> None:
    """Run each window through the model, calling hooks[name](input) when module `name` is entered; with stop_early
    a window's forward pass ends once every hooked module has run (decoder linears run once per pass)."""
    validate.model(model)
    validate.in_vocabulary(model, windows)
    if not isinstance(hooks, dict) or not hooks or not all(isinstance(n, str) and callable(f) for n, f in hooks.items()):
        raise validate.BadInput("hooks must be a non-empty dict {module name: function of its input}")
    modules = dict(model.named_modules())
    if "" in hooks:  # the model itself: its input is the token ids, not a layer's activations
        raise validate.BadInput("a hook on '' would see the token ids, not a layer's input: pass the whole model and "
                                "the names of layers inside it (models.linear_weights(model))")
    missing = [n for n in hooks if n not in modules]
    if missing:
        raise validate.UnknownName(f"no modules named {missing}; see models.linear_weights(model) for the names")
    seen: set[str] = set()

    def call(name: str, fn, args) -> None:
        fn(args[0].detach())
        seen.add(name)
        if stop_early and len(seen) == len(hooks):
            raise InputsSeen  # every hooked module has had this window's input: the rest of the forward is not needed

    handles = [modules[n].register_forward_pre_hook(lambda _m, args, n=n, fn=fn: call(n, fn, args)) for n, fn in hooks.items()]
    try:
        device = next(model.parameters()).device
        for window in windows.split(1):
            seen.clear()
            try:
                model(window.to(device))
            except InputsSeen:
                pass
    finally:
        for h in handles:
            h.remove()


def capture_inputs(model, names: list[str], windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run `windows` through the model; return each named module's input as [tokens, features] (float32)."""
    names = validate.texts(names, "names", "pass module names, e.g. list(models.linear_weights(model))[:1]")
    captured: dict[str, list] = {n: [] for n in names}
    run_with_input_hooks(model, windows, {n: (lambda x, n=n: captured[n].append(x.reshape(-1, x.shape[-1]).float().cpu()))
                                          for n in names})
    return {n: torch.cat(chunks) for n, chunks in captured.items()}


def channel_absmax(x: torch.Tensor) -> torch.Tensor:
    """Largest |value| of each feature channel (the last dimension) over all tokens."""
    validate.tensor(x, "x", kind="float", todo="pass activations [tokens, features], e.g. from capture_inputs")
    if x.dim() < 1:
        raise validate.BadInput("x must have a feature dimension: pass activations [tokens, features]")
    return x.abs().reshape(-1, x.shape[-1]).amax(0)


def input_channel_absmax(model, windows: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Per input channel, the largest |activation| entering each named linear layer (default: all of them)."""
    from .models import linear_weights

    names = list(linear_weights(model)) if names is None else validate.texts(names, "names")
    stats: dict[str, torch.Tensor] = {}

    def update(n: str, x: torch.Tensor) -> None:
        m = channel_absmax(x).float().cpu()
        stats[n] = m if n not in stats else torch.maximum(stats[n], m)

    run_with_input_hooks(model, windows, {n: (lambda x, n=n: update(n, x)) for n in names})
    return stats


def input_channel_mean(model, windows: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Per input channel, the mean |activation| entering each named linear layer (default: all of them)."""
    from .models import linear_weights

    names = list(linear_weights(model)) if names is None else validate.texts(names, "names")
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def update(n: str, x: torch.Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1]).abs().float().cpu()
        sums[n] = sums.get(n, 0) + flat.sum(0)
        counts[n] = counts.get(n, 0) + flat.shape[0]

    run_with_input_hooks(model, windows, {n: (lambda x, n=n: update(n, x)) for n in names})
    return {n: sums[n] / counts[n] for n in names}
