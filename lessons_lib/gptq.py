"""GPTQ from scratch: Hessian from calibration inputs, Cholesky of its inverse, column-wise error feedback."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import validate
from .activations import InputsSeen
from .architecture import decoder_layers, groups, layer_inputs
from .data import check_windows
from .quantize import check_bits, check_float, divisors_hint


def _weight(w, name: str = "weight") -> torch.Tensor:
    return validate.tensor(w, name, dims=2, kind="float", todo="pass a linear layer's weight [out_features, in_features]")


def _group(group_size, cols: int) -> int:
    """The group size (None: one group per row), refused unless it is a positive integer dividing cols."""
    if group_size is None:
        return cols
    g = validate.integer(group_size, "group_size", lo=1, todo="pass a positive group size such as 64, or None")
    if cols % g:
        raise validate.BadInput(f"group_size {g} does not divide the input dimension {cols}; sizes that do: "
                                f"{divisors_hint(cols)}")
    return g


def hessian(inputs: torch.Tensor) -> torch.Tensor:
    """H = 2 X^T X / n for inputs X [n_tokens, in_features]: the curvature of ||W X^T - W_q X^T||^2."""
    validate.tensor(inputs, "calibration inputs", dims=(2, 3), kind="float",
                    todo="pass layer inputs [n_tokens, in_features] (activations.capture_inputs)")
    x = inputs.reshape(-1, inputs.shape[-1]).double()
    if x.shape[0] == 0:
        raise ValueError("calibration inputs are empty: pass at least one token (data.token_windows)")
    return 2 * x.T @ x / x.shape[0]


def grid(w: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Scale and zero per row of w, compressed-tensors' convention: codes -2^(b-1)..2^(b-1)-1 or 0..2^b-1."""
    _weight(w, "w")
    check_bits(bits, symmetric)
    return _grid(w, bits, symmetric)


def _grid(w: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """grid() without its checks, for callers that checked w already."""
    lo = w.amin(1, keepdim=True).clamp(max=0)
    hi = w.amax(1, keepdim=True).clamp(min=0)
    if symmetric:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        scale = torch.maximum(-lo, hi) / ((qmax - qmin) / 2)
        zero = torch.zeros_like(scale)
    else:
        qmin, qmax = 0, 2**bits - 1
        scale = (hi - lo) / (qmax - qmin)
        zero = torch.round(qmin - lo / scale.clamp_min(1e-12)).clamp(qmin, qmax)
    return scale.clamp_min(1e-12), zero, qmin, qmax


def quantize_column(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Round one column (or any tensor) to its grid and return the dequantized values."""
    check_float(w, "w")
    for t, n in ((scale, "scale"), (zero, "zero")):
        validate.tensor(t, n, kind="float")
        validate.broadcasts(t, w.shape, n, "one value per row of w, as gptq.grid(w, bits, symmetric) gives")
    if not bool((scale > 0).all()):
        raise validate.BadInput("scale must be positive everywhere: compute it with gptq.grid(w, bits, symmetric)")
    qmin, qmax = validate.integer(qmin, "qmin"), validate.integer(qmax, "qmax")
    if qmin >= qmax:
        raise validate.BadInput(f"qmin must be below qmax, got {qmin} and {qmax}")
    return _round(w, scale, zero, qmin, qmax)


def _round(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """quantize_column() without its checks (inside loops whose inputs were checked once), into `out` if given:
    (clamp(round(w / scale) + zero, qmin, qmax) - zero) * scale; zero=None is a symmetric grid's zero of 0."""
    q = w / scale if out is None else torch.div(w, scale, out=out)
    if zero is None:
        return q.round_().clamp_(qmin, qmax).mul_(scale)
    return q.round_().add_(zero).clamp_(qmin, qmax).sub_(zero).mul_(scale)


def _inverse_cholesky(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor U of H^-1 (U^T U = H^-1) from one factorisation: with P the reversal, P H P = K K^T
    gives H^-1 = (P K^-1 P)^T (P K^-1 P), and P K^-1 P is upper triangular."""
    k = torch.linalg.cholesky(h.flip(0, 1))
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    return torch.linalg.solve_triangular(k, eye, upper=False).flip(0, 1)


def rtn(w: torch.Tensor, bits: int = 4, group_size: int | None = 64, symmetric: bool = True) -> torch.Tensor:
    """Round-to-nearest on the same grid and groups as gptq_quantize (its error_feedback=False, vectorized)."""
    _weight(w)
    check_bits(bits, symmetric)
    g = _group(group_size, w.shape[1])
    groups = w.float().reshape(-1, g)  # one row per (output row, group)
    return _round(groups, *_grid(groups, bits, symmetric)).reshape(w.shape).to(w.dtype)  # w checked once, above


@dataclass
class GPTQResult:
    """The quantized (dequantized-to-float) weight and the GPTQ loss sum of (error^2 / Hinv_ii) / 2."""

    weight: torch.Tensor
    loss: float


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, bits: int = 4, group_size: int | None = 64,
                  symmetric: bool = True, act_order: bool = False, damp: float = 0.01, block: int = 128,
                  error_feedback: bool = True) -> GPTQResult:
    """Quantize a weight [out, in] column by column, pushing each column's error onto the columns not yet quantized.

    Group scales are computed up front from the original weight ("static groups", as llm-compressor does),
    so act_order changes the order of the columns, not which scale a column uses. error_feedback=False is RTN.
    """
    _weight(w)
    check_bits(bits, symmetric)
    rows, cols = w.shape
    validate.tensor(h, "h (the Hessian)", dims=2, kind="float", todo="compute it with gptq.hessian(inputs)")
    if h.shape != (cols, cols):
        raise validate.BadInput(f"Hessian shape {tuple(h.shape)} does not match the weight's {cols} input features")
    if not torch.allclose(h, h.T, rtol=1e-4, atol=1e-6 * float(h.abs().max())):  # Cholesky would read one triangle
        raise validate.BadInput("the Hessian must be symmetric (2 X^T X / n); compute it with gptq.hessian(inputs)")
    _check_signal(h)
    _group(group_size, cols)
    damp = validate.number(damp, "damp", 0, 1, hi_open=True, todo="damp is a fraction of the mean Hessian diagonal, "
                                                                  "in [0, 1); 0.01 is the usual choice")
    block = validate.integer(block, "block", lo=1)
    validate.flag(act_order, "act_order")
    validate.flag(error_feedback, "error_feedback")
    return _gptq(w, h, bits, group_size, symmetric, act_order, damp, block, error_feedback)


def _check_signal(h: torch.Tensor, where: str = "this layer") -> None:
    """Refuse a Hessian with no signal: zero on its whole diagonal (every column would count as dead and be zeroed)."""
    if not bool(h.diagonal().any()):
        raise validate.BadInput(f"the Hessian is zero on its whole diagonal: no calibration signal reached {where}; "
                                "check the inputs you captured (activations.capture_inputs) before gptq.hessian")


def _gptq(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int | None, symmetric: bool, act_order: bool,
          damp: float, block: int = 128, error_feedback: bool = True) -> GPTQResult:
    """gptq_quantize() without its checks, for quantize_model, which checked its settings once and built h itself."""
    rows, cols = w.shape
    W = w.detach().float().clone()
    H = h.double().clone()
    dead = torch.diag(H) == 0  # inputs that never fire: their weights cannot matter
    H[dead, dead] = 1
    W[:, dead] = 0
    g = group_size or cols
    scale, zero = torch.empty_like(W), torch.empty_like(W)
    for start in range(0, cols, g):  # static groups: scales from the original weight, one per row and group
        s, z, qmin, qmax = _grid(W[:, start:start + g], bits, symmetric)
        scale[:, start:start + g], zero[:, start:start + g] = s, z
    order = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols)
    W, H, scale, zero = W[:, order], H[order][:, order], scale[:, order], zero[:, order]
    H += damp * torch.diag(H).mean() * torch.eye(cols, dtype=H.dtype)
    try:
        hinv = _inverse_cholesky(H).float()
    except RuntimeError as err:  # torch raises LinAlgError, a RuntimeError
        raise ValueError(f"the Hessian is not positive definite even after dampening {damp}: raise damp "
                         f"(e.g. 0.1) or calibrate on more tokens than the {cols} input features") from err
    # Work on transposed copies so that each column of W is a contiguous row in memory (much faster updates).
    Wt, St, Zt = W.T.contiguous(), scale.T.contiguous(), zero.T.contiguous()
    Qt = torch.zeros_like(Wt)
    diag = hinv.diagonal().tolist()
    loss = 0.0
    for i1 in range(0, cols, block):  # lazy batches: the rest of the matrix is updated once per block
        i2 = min(i1 + block, cols)
        W1, E1, h1 = Wt[i1:i2].clone(), torch.zeros(i2 - i1, rows), hinv[i1:i2, i1:i2]
        # one row view per column (iterating a tensor unbinds it): fewer Python-level indexing steps per column
        zeros = [None] * (i2 - i1) if symmetric else Zt[i1:i2]  # a symmetric grid's zeros are 0: nothing to add
        for i, (w_i, s_i, z_i, q_i, e_i, d_i) in enumerate(zip(W1, St[i1:i2], zeros, Qt[i1:i2], E1, diag[i1:i2])):
            _round(w_i, s_i, z_i, qmin, qmax, out=q_i)  # checked once above, not per column
            torch.sub(w_i, q_i, out=e_i).div_(d_i)
            if error_feedback:  # push this column's error onto the columns of the block not yet quantized
                W1[i + 1:].addr_(h1[i, i + 1:], e_i, alpha=-1)
        loss += (E1**2).sum().item() / 2
        if error_feedback:
            Wt[i2:] -= hinv[i1:i2, i2:].T @ E1
    Q = Qt.T
    Q = Q[:, torch.argsort(order)]
    return GPTQResult(Q.to(w.dtype), loss)


def output_error(w: torch.Tensor, w_q: torch.Tensor, inputs: torch.Tensor) -> float:
    """Mean squared error of the layer's output, ||X W^T - X W_q^T||^2 / n, on inputs X [n, in]."""
    _weight(w, "w")
    _weight(w_q, "w_q")
    validate.tensor(inputs, "inputs", dims=(2, 3), kind="float")
    if w.shape != w_q.shape or inputs.shape[-1] != w.shape[1]:
        raise validate.BadInput(f"shapes do not fit: w {tuple(w.shape)}, w_q {tuple(w_q.shape)}, inputs "
                                f"{tuple(inputs.shape)} (inputs' last dimension must be w's {w.shape[1]} input features)")
    x = inputs.reshape(-1, inputs.shape[-1]).float()
    return ((x @ (w.float() - w_q.float()).T) ** 2).sum().item() / x.shape[0]


def _decoder(model):
    """A decoder-only transformers model whose decoder layers the architecture map knows (models.load_model)."""
    validate.model(model)
    groups(decoder_layers(model)[0])  # names what is missing and where to add it
    return model


@torch.no_grad()
def decoder_inputs(model, calib: torch.Tensor) -> tuple[list, list]:
    """Hidden states entering the first decoder layer for each calibration window, and every layer's own other
    arguments (kwargs[layer][window]; architecture.layer_inputs): sliding-window and global layers differ."""
    _decoder(model)
    check_windows(calib)
    return layer_inputs(model, calib)


@torch.no_grad()
def quantize_model(model, calib: torch.Tensor, bits: int = 4, group_size: int | None = 64, symmetric: bool = True,
                   act_order: bool = False, damp: float = 0.01, error_feedback: bool = True,
                   progress: bool | None = None):
    """GPTQ on every linear layer of every decoder layer, in place, each layer fed by the already-quantized ones."""
    from tqdm.auto import tqdm

    _decoder(model)
    check_windows(calib)
    check_bits(bits, symmetric)
    validate.number(damp, "damp", 0, 1, hi_open=True, todo="0.01 is the usual choice")
    validate.flag(act_order, "act_order")
    validate.flag(error_feedback, "error_feedback")
    bar = validate.progress(progress)
    for lin in (m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings()):
        _group(group_size, lin.in_features)
    hidden, layer_kwargs = decoder_inputs(model, calib)
    layers = decoder_layers(model)
    for n, (layer, kwargs) in enumerate(zip(tqdm(layers, desc=f"GPTQ W{bits}", **bar), layer_kwargs)):
        # linears that read one input (q/k/v or a fused qkv; gate/up) share one Hessian: one GPTQ call on their rows
        shared = [g.balance for g in groups(layer)]
        mapped = {id(m) for lins in shared for m in lins}
        shared += [[m] for m in layer.modules() if isinstance(m, torch.nn.Linear) and id(m) not in mapped]
        xtx: list = [0] * len(shared)
        count: list = [0] * len(shared)
        seen: set = set()

        def accumulate(i, args):
            flat = args[0].reshape(-1, args[0].shape[-1]).float().cpu()
            xtx[i] = xtx[i] + (flat.T @ flat).double()  # float32 within a window, float64 across windows
            count[i] += flat.shape[0]
            seen.add(i)
            if len(seen) == len(shared):
                raise InputsSeen  # every group has this window's input: the rest of the layer (the MLP's output) can wait

        hooks = [lins[0].register_forward_pre_hook(lambda _m, a, i=i: accumulate(i, a)) for i, lins in enumerate(shared)]
        try:
            for h, kw in zip(hidden, kwargs):  # each window with this layer's own masks and position embeddings
                seen.clear()
                try:
                    layer(h, **kw)
                except InputsSeen:
                    pass
        finally:
            for handle in hooks:
                handle.remove()
        for i, lins in enumerate(shared):
            stacked = torch.cat([lin.weight.data.float().cpu() for lin in lins])
            h = validate.tensor(2 * xtx[i] / count[i], "a layer's Hessian", todo="find where the layer's inputs "
                                "overflowed (NaN or Inf in the model's activations; try float32)")
            _check_signal(h, f"decoder layer {n} (group {i} of its linears)")
            result = _gptq(stacked, h, bits, group_size, symmetric, act_order, damp,
                           error_feedback=error_feedback)  # settings checked above; H is X^T X, symmetric
            for lin, part in zip(lins, result.weight.split([lin.out_features for lin in lins])):
                lin.weight.data = part.to(lin.weight.device, lin.weight.dtype)
        if n < len(layers) - 1:  # the next layer's inputs, from this layer quantized (the last one feeds no layer)
            hidden = [_first(layer(h, **kw)) for h, kw in zip(hidden, kwargs)]
    return model


def _first(out):
    return out[0] if isinstance(out, tuple) else out
