"""SmoothQuant: move activation outliers into the weights with per-channel factors folded into the layer before,
then run W8A8 (int8 weights per output channel, int8 activations per token) on a real integer kernel."""
from __future__ import annotations

import numbers

import torch

from . import kernels, validate
from .activations import input_channel_absmax
from .architecture import decoder_layers
from .awq import Mapping, fold_scales, layer_mappings
from .data import check_windows
from .quantize import check_float


def check_alpha(alpha: float) -> float:
    """The migration strength must lie in [0, 1]: 0 leaves activations alone, 1 moves all their range into weights."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
        raise validate.BadInput(f"alpha (migration strength) must be in [0, 1], got {alpha!r}; SmoothQuant's default is 0.5, "
                         "llm-compressor's 0.8 for LLaMA-style models")
    return float(alpha)


def weight_absmax(linears: list[torch.nn.Linear]) -> torch.Tensor:
    """Per input channel, the largest |weight| over all the linear layers that share that input."""
    if not isinstance(linears, (list, tuple)) or not linears or not all(isinstance(m, torch.nn.Linear) for m in linears):
        raise validate.BadInput("linears must be a non-empty list of torch.nn.Linear layers that share one input")
    if len({m.in_features for m in linears}) != 1:
        raise validate.BadInput(f"the linears must share their input, got in_features {[m.in_features for m in linears]}")
    return torch.stack([lin.weight.detach().abs().float().amax(0) for lin in linears]).amax(0)


def smoothing_factors(act_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max|W_j|^(1 - alpha): divide activations by s, multiply weights by s."""
    check_alpha(alpha)
    check_float(act_absmax, "act_absmax")
    check_float(w_absmax, "w_absmax")
    if act_absmax.shape != w_absmax.shape or act_absmax.dim() != 1:
        raise validate.BadInput(f"one statistic per input channel: act_absmax {tuple(act_absmax.shape)} vs "
                         f"w_absmax {tuple(w_absmax.shape)}")
    if bool((act_absmax < 0).any()) or bool((w_absmax < 0).any()):
        raise validate.BadInput("absmax statistics are >= 0: pass smoothquant.activation_absmax(...) and weight_absmax(...)")
    s = act_absmax.clamp(min=1e-5).pow(alpha) / w_absmax.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


def mappings(layer, include_down: bool = False) -> list[Mapping]:
    """SmoothQuant's pairs in a decoder layer: the attention's input norm -> q/k/v, the MLP's input norm -> gate/up
    (llm-compressor's defaults), and optionally up -> down (architecture.groups names them for each family)."""
    validate.flag(include_down, "include_down")
    keep = {"attention input", "mlp input"} | ({"mlp output"} if include_down else set())
    return [m for m in layer_mappings(layer) if m.role in keep]


def _named_mappings(model, include_down: bool) -> list[tuple[str, Mapping]]:
    """Every decoder layer's mappings, each with the module name of its first balance layer."""
    from .gptq import _decoder

    _decoder(model)
    validate.flag(include_down, "include_down")
    names = {id(m): n for n, m in model.named_modules()}
    return [(names[id(m.balance[0])], m) for layer in decoder_layers(model) for m in mappings(layer, include_down)]


def activation_absmax(model, calib: torch.Tensor, include_down: bool = False) -> dict[str, torch.Tensor]:
    """Per input channel, the largest |activation| entering each mapping's first balance layer, from calibration."""
    check_windows(calib)
    return input_channel_absmax(model, calib, [name for name, _ in _named_mappings(model, include_down)])


@torch.no_grad()
def smooth_model(model, stats: dict[str, torch.Tensor], alpha: float, include_down: bool = False) -> dict[str, torch.Tensor]:
    """Fold SmoothQuant factors into every decoder layer of `model` in place (stats from activation_absmax on the
    unsmoothed model); return the factors by balance layer."""
    check_alpha(alpha)
    if not isinstance(stats, dict) or not stats:
        raise validate.BadInput("stats must be the dict that smoothquant.activation_absmax(model, calib) returns")
    mappings, factors = list(_named_mappings(model, include_down)), {}
    for name, m in mappings:  # every factor first: a missing or wrong statistic then leaves the model untouched
        if name not in stats:
            raise KeyError(f"no activation statistics for {name}: compute them with activation_absmax(model, calib, "
                           f"include_down={include_down})")
        factors[name] = smoothing_factors(stats[name], weight_absmax(m.balance), alpha)
    for name, m in mappings:
        fold_scales(m, factors[name])
    return factors


def w8a8(model, per_token: bool = True, act_dtype: torch.dtype = torch.float32) -> dict:
    """Put every decoder linear layer on torch._int_mm (int8 x int8 -> int32) in place; return the originals.

    Weights get one int8 scale per output channel; activations are quantized on the fly, one scale per token
    (per_token=True) or one for the whole input (per_token=False). Undo with kernels.restore_linears."""
    validate.model(model)
    validate.flag(per_token, "per_token")
    return kernels.swap_linears(model, "int8_w8a8", act_dtype=act_dtype, per_token=per_token)  # kernels checks act_dtype
