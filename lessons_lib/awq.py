"""AWQ from scratch: scale up the input channels that carry large activations before rounding, and fold the
inverse scale into the layer before, so the full-precision model computes exactly the same function."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import validate
from .architecture import Group, decoder_layers, fold_into, groups, no_clip
from .data import check_windows
from .gptq import _decoder, _first, _group, _weight, decoder_inputs, rtn
from .quantize import check_bits


def channel_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean |activation| of each input channel over all tokens: the statistic AWQ ranks channels by."""
    validate.tensor(x, "x", dims=(2, 3), kind="float", todo="pass layer inputs [tokens, in_features]")
    return x.abs().reshape(-1, x.shape[-1]).float().mean(0)


def weight_mean(weights: list[torch.Tensor], group_size: int | None) -> torch.Tensor:
    """Mean over output rows of |w| / (max |w| of its group), per input channel (AWQ's "duo scaling" weight term)."""
    if not isinstance(weights, (list, tuple)) or not weights:
        raise validate.BadInput("weights must be a non-empty list of 2-D weights that share one input")
    for i, w in enumerate(weights):
        _weight(w, f"weights[{i}]")
        _group(group_size, w.shape[1])
    if len({w.shape[1] for w in weights}) != 1:
        raise validate.BadInput(f"the weights must share their input dimension, got {[tuple(w.shape) for w in weights]}")
    rows = [w.abs().float().reshape(-1, group_size or w.shape[1]) for w in weights]
    normed = torch.cat([(r / (r.amax(1, keepdim=True) + 1e-6)).reshape(w.shape) for r, w in zip(rows, weights)])
    return normed.mean(0)


def grid_points(n_grid: int) -> list[tuple[float, bool]]:
    """The (alpha, duo) pairs searched: no scaling at all, then alpha = 0..1 with the weight term (llm-compressor's default)."""
    if isinstance(n_grid, bool) or not isinstance(n_grid, int) or n_grid < 3:
        raise validate.BadInput(f"n_grid must be an integer at least 3 (identity plus two alphas), got {n_grid!r}")
    return [(0.0, False)] + [(i / (n_grid - 2), True) for i in range(n_grid - 1)]


def candidate_scales(x_mean: torch.Tensor, w_mean: torch.Tensor, alpha: float, duo: bool) -> torch.Tensor:
    """s = x_mean^alpha / w_mean^(1-alpha) (or x_mean^alpha), normalized so that max(s) * min(s) = 1."""
    validate.tensor(x_mean, "x_mean", dims=1, kind="float")
    validate.tensor(w_mean, "w_mean", dims=1, kind="float")
    if x_mean.shape != w_mean.shape or bool((x_mean < 0).any()) or bool((w_mean < 0).any()):
        raise validate.BadInput(f"x_mean and w_mean must be nonnegative statistics per input channel of one shape, "
                                f"got {tuple(x_mean.shape)} and {tuple(w_mean.shape)}")
    validate.number(alpha, "alpha", 0, 1)
    validate.flag(duo, "duo")
    s = x_mean.pow(alpha) / (w_mean.pow(1 - alpha) + 1e-4) if duo else x_mean.pow(alpha)
    s = s.clamp(min=1e-4)
    s = s / (s.max() * s.min()).sqrt()
    return torch.nan_to_num(s, nan=1.0, posinf=1.0)


def salient_channels(model, calib: torch.Tensor, fraction: float = 0.01, by: str = "activation",
                     seed: int = 0) -> dict[str, torch.Tensor]:
    """For each linear layer, the input channels to protect: largest mean |activation|, largest mean |weight|, or random."""
    from .activations import input_channel_mean
    from .models import linear_weights

    validate.number(fraction, "fraction", 0, 1, lo_open=True, hi_open=True,
                    todo="fraction is a share of input channels in (0, 1), e.g. 0.01")
    seed = validate.integer(seed, "seed")
    weights = linear_weights(model)
    if by == "activation":
        score = input_channel_mean(model, check_windows(calib))
    elif by == "weight":
        score = {n: w.detach().abs().float().mean(0) for n, w in weights.items()}
    elif by == "random":
        g = torch.Generator().manual_seed(seed)
        score = {n: torch.rand(w.shape[1], generator=g) for n, w in weights.items()}
    else:
        raise validate.UnknownName(f"by must be 'activation', 'weight' or 'random', got {by!r}")
    return {n: s.topk(max(1, round(fraction * s.numel()))).indices for n, s in score.items()}


def keep_channels(w: torch.Tensor, channels: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    """Round w to nearest, except the input channels (columns) listed, which keep their full-precision values."""
    _weight(w)
    validate.tensor(channels, "channels", dims=1, kind="integer", nonempty=False,
                    todo="pass column indices, e.g. from awq.salient_channels")
    if channels.numel() and (int(channels.min()) < 0 or int(channels.max()) >= w.shape[1]):
        raise validate.BadInput(f"channels must be column indices in [0, {w.shape[1]}), got {channels.min()}..{channels.max()}")
    q = rtn(w, bits, group_size)
    q[:, channels] = w[:, channels]
    return q


Mapping = Group  # layers whose shared input AWQ rescales: `smooth` divides, `balance` linears multiply


def layer_mappings(layer) -> list[Mapping]:
    """The groups of a decoder layer whose feeding module can take a scale (architecture.groups): norm -> q/k/v,
    v -> o (only if shapes allow), norm -> gate/up, up -> down, whatever the family calls them."""
    return [g for g in groups(layer) if g.foldable]


def _run(module, calls: list) -> list[torch.Tensor]:
    outs = [module(*args, **kwargs) for args, kwargs in calls]
    return [o[0] if isinstance(o, tuple) else o for o in outs]


def _inputs(calls: list) -> torch.Tensor:
    """The first input (positional or hidden_states=) of every recorded call, as [tokens, features]."""
    xs = [args[0] if args else kwargs["hidden_states"] for args, kwargs in calls]
    return torch.cat([x.reshape(-1, x.shape[-1]) for x in xs])


@torch.no_grad()
def search_scales(m: Mapping, calls: list, bits: int, group_size: int | None, n_grid: int = 20) -> tuple[torch.Tensor, list]:
    """Grid-search the per-channel scale that minimizes the MSE of m.parent's output with Q(W*s)/s in place of W."""
    if not isinstance(m, Mapping):
        raise validate.BadInput(f"m must be an awq.Mapping (awq.layer_mappings(layer)), got {type(m).__name__}")
    if not isinstance(calls, list) or not calls:
        raise validate.BadInput("calls must be the non-empty list of (args, kwargs) recorded into m.parent")
    check_bits(bits, True)
    grid_points(n_grid)
    for lin in m.balance:
        _group(group_size, lin.in_features)
    x_mean = channel_mean(_inputs(calls))
    original = [lin.weight.data.clone() for lin in m.balance]
    w_mean = weight_mean(original, group_size)
    reference = _run(m.parent, calls)
    best, history = None, []
    try:
        for alpha, duo in grid_points(n_grid):
            s = candidate_scales(x_mean, w_mean, alpha, duo)
            for lin, w in zip(m.balance, original):
                lin.weight.data = rtn(w * s, bits, group_size) / s
            err = sum(((o - r) ** 2).sum().item() for o, r in zip(_run(m.parent, calls), reference))
            err /= sum(r.numel() for r in reference)
            history.append((alpha, duo, err))
            if best is None or err < best[0]:
                best = (err, s)
    finally:
        for lin, w in zip(m.balance, original):
            lin.weight.data = w
    return best[1], history


@torch.no_grad()
def fold_scales(m: Mapping, s: torch.Tensor) -> None:
    """Multiply the balance layers' input columns by s and divide the smooth layer's output by s: same function."""
    if not isinstance(m, Mapping):
        raise validate.BadInput(f"m must be an awq.Mapping (awq.layer_mappings(layer)), got {type(m).__name__}")
    validate.tensor(s, "s", dims=1, kind="float")
    if not bool((s > 0).all()) or any(lin.in_features != s.numel() for lin in m.balance):
        raise validate.BadInput(f"s must hold one positive scale per input channel of the balance layers "
                                f"({[lin.in_features for lin in m.balance]}), got {s.numel()}")
    if not m.foldable:
        raise validate.BadInput(f"no scale folds into the module feeding {m.role or m.name}: {m.why}")
    for lin in m.balance:
        lin.weight.data *= s.to(lin.weight.dtype)
    fold_into(m.smooth, m.fold, s, m.rows)  # norm w / s, (1 + w) / s - 1, LayerNorm w and b / s, or linear rows / s


@torch.no_grad()
def clip_ratios(w: torch.Tensor, x: torch.Tensor, bits: int, group_size: int, n_grid: int = 20,
                max_shrink: float = 0.5, n_tokens: int = 512) -> torch.Tensor:
    """Per (row, group), the fraction of max|w| to clip to that minimizes that group's share of the output error."""
    _weight(w)
    validate.tensor(x, "x", dims=(2, 3), kind="float")
    if x.shape[-1] != w.shape[1]:
        raise validate.BadInput(f"x's last dimension {x.shape[-1]} must be w's input dimension {w.shape[1]}")
    group_size = _group(group_size, w.shape[1])
    check_bits(bits, True)
    n_grid = validate.integer(n_grid, "n_grid", lo=2)
    validate.number(max_shrink, "max_shrink", 0, 1, lo_open=True, hi_open=True)
    n_tokens = validate.integer(n_tokens, "n_tokens", lo=1)
    x = x.reshape(-1, x.shape[-1])[:: max(1, x.numel() // x.shape[-1] // n_tokens)].float()
    rows, cols = w.shape
    xg = x.reshape(x.shape[0], cols // group_size, group_size)  # [tokens, groups, g]
    wg = w.float().reshape(rows, cols // group_size, group_size)  # [rows, groups, g]
    absmax = wg.abs().amax(-1, keepdim=True)
    best_err, best = None, torch.ones(rows, cols // group_size, 1)
    for i in range(int(max_shrink * n_grid)):
        r = 1 - i / n_grid
        q = rtn(torch.maximum(torch.minimum(wg, r * absmax), -r * absmax).reshape(rows, cols), bits, group_size)
        err = torch.einsum("tgi,rgi->trg", xg, wg - q.reshape(wg.shape)).pow(2).mean(0).unsqueeze(-1)  # [rows, groups, 1]
        if best_err is None:
            best_err = err
        else:
            better = err < best_err
            best_err, best = torch.where(better, err, best_err), torch.where(better, torch.full_like(best, r), best)
    return best


def clip(w: torch.Tensor, ratios: torch.Tensor, group_size: int) -> torch.Tensor:
    """Clamp each (row, group) of w to +-ratio * its max |w|."""
    _weight(w)
    group_size = _group(group_size, w.shape[1])
    validate.tensor(ratios, "ratios", kind="float")
    if ratios.numel() != w.numel() // group_size or not bool(((ratios > 0) & (ratios <= 1)).all()):
        raise validate.BadInput(f"ratios must hold one value in (0, 1] per (row, group): {w.numel() // group_size}, "
                                f"got {ratios.numel()} (use awq.clip_ratios)")
    ratios = ratios.reshape(w.shape[0], -1, 1)
    wg = w.reshape(w.shape[0], -1, group_size)
    limit = ratios * wg.abs().amax(-1, keepdim=True)
    return torch.maximum(torch.minimum(wg, limit), -limit).reshape(w.shape)


def _record_calls(layer, modules: list[torch.nn.Module], hidden: list, kwargs: list) -> dict:
    """Run the decoder layer on each hidden state with that window's own arguments (kwargs[i] for hidden[i]);
    return every call (args, kwargs) made into each module."""
    calls = {m: [] for m in modules}
    hooks = [m.register_forward_pre_hook(lambda mod, a, k: calls[mod].append((a, k)), with_kwargs=True) for m in modules]
    try:
        for h, kw in zip(hidden, kwargs):
            layer(h, **kw)
    finally:
        for handle in hooks:
            handle.remove()
    return calls


@torch.no_grad()
def quantize_model(model, calib: torch.Tensor, bits: int = 4, group_size: int | None = 64, n_grid: int = 20,
                   apply_clip: bool = False, progress: bool | None = None) -> dict:
    """AWQ on every decoder layer in turn, in place: search and fold scales, optionally clip, then round to nearest.

    Each layer is calibrated on the outputs of the layers already quantized. Returns each mapping's search history.
    """
    from tqdm.auto import tqdm

    _decoder(model)
    check_windows(calib)
    check_bits(bits, True)
    grid_points(n_grid)
    validate.flag(apply_clip, "apply_clip")
    bar = validate.progress(progress)
    layers = decoder_layers(model)
    for lin in (m for m in layers[0].modules() if isinstance(m, torch.nn.Linear)):
        _group(group_size, lin.in_features)
    hidden, layer_kwargs = decoder_inputs(model, calib)
    histories = {}
    for index, layer in enumerate(tqdm(layers, desc=f"AWQ W{bits}", **bar)):
        kwargs = layer_kwargs[index]  # this layer's own masks and position embeddings, one dict per window
        maps = layer_mappings(layer)
        calls = _record_calls(layer, [m.parent for m in maps], hidden, kwargs)
        for m in maps:
            s, histories[f"layers.{index}.{m.name}"] = search_scales(m, calls[m.parent], bits, group_size, n_grid)
            fold_scales(m, s)
        linears = {n: lin for n, lin in layer.named_modules() if isinstance(lin, torch.nn.Linear)}
        if apply_clip:  # AutoAWQ's clipping search; it skips q and k, whose errors the attention softmax reshapes
            skip = no_clip(layer)
            targets = [lin for lin in linears.values() if not any(lin is q for q in skip)]
            seen = _record_calls(layer, targets, hidden[:2], kwargs)
            for lin in targets:
                x = _inputs(seen[lin])
                lin.weight.data = clip(lin.weight.data, clip_ratios(lin.weight.data, x, bits, group_size or lin.in_features),
                                       group_size or lin.in_features)
        for lin in linears.values():
            lin.weight.data = rtn(lin.weight.data, bits, group_size)
        hidden = [_first(layer(h, **kw)) for h, kw in zip(hidden, kwargs)]
    return histories
