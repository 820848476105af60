"""Checks every public function runs on what it is given, with one wording: what was wrong and what to do instead."""
from __future__ import annotations

import math
import numbers
import os
from typing import Iterable

import torch


class BadInput(ValueError, TypeError):
    """An argument of the wrong type, shape, dtype or range (catch it as ValueError or as TypeError)."""


class UnknownName(KeyError, ValueError):
    """A name (format, GPU, text set, exercise...) that is not among the known ones (a KeyError and a ValueError)."""

    def __str__(self) -> str:  # KeyError would print the message inside quotes
        return str(self.args[0]) if self.args else ""


class NoDevice(BadInput, RuntimeError):
    """A CUDA device asked of a machine (or a torch build) without one."""


def _fail(name: str, want: str, got, todo: str = "") -> BadInput:
    shown = f"a tensor of shape {tuple(got.shape)} and dtype {got.dtype}" if isinstance(got, torch.Tensor) else repr(got)
    if len(shown) > 120:
        shown = shown[:117] + "..."
    return BadInput(f"{name} must be {want}, got {shown}" + (f": {todo}" if todo else ""))


def number(x, name: str, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False, todo: str = "") -> float:
    """A finite real number (not a bool, not NaN) in [lo, hi] (or open ends); returned as float."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or (isinstance(x, torch.Tensor) and x.numel() != 1):
        raise _fail(name, "a number", x, todo or "pass a plain int or float")
    value = float(x)
    if not math.isfinite(value):
        raise _fail(name, "a finite number", x, todo or "NaN and Inf have no place here")
    low_bad = lo is not None and (value <= lo if lo_open else value < lo)
    high_bad = hi is not None and (value >= hi if hi_open else value > hi)
    if low_bad or high_bad:
        left = "" if lo is None else f"{'>' if lo_open else '>='} {lo:g}"
        right = "" if hi is None else f"{'<' if hi_open else '<='} {hi:g}"
        raise _fail(name, f"a number {' and '.join(s for s in (left, right) if s)}", x, todo)
    return value


def integer(x, name: str, lo: int | None = None, hi: int | None = None, todo: str = "") -> int:
    """A whole number (an int, or a float without fraction such as in_features / 2; not a bool) in [lo, hi]; returned
    as int, which callers use in place of x (torch's size arguments refuse 64.0)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or isinstance(x, torch.Tensor):
        raise _fail(name, "a whole number", x, todo or "pass a plain int")
    if not math.isfinite(float(x)) or float(x) != int(x):
        raise _fail(name, "a whole number", x, todo or "fractions make no sense here: pass an int")
    value = int(x)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = " and ".join(s for s in (f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else "") if s)
        raise _fail(name, f"a whole number {bounds}", x, todo)
    return value


def flag(x, name: str) -> bool:
    """A bool (True/False), not a string or a number that merely looks like one."""
    if not isinstance(x, bool):
        raise _fail(name, "True or False", x)
    return x


def choice(x, name: str, options: Iterable, todo: str = "") -> str:
    """One of `options` (e.g. a format or granularity name); anything else is refused, listing them."""
    options = list(options)
    if not isinstance(x, str) or x not in options:
        raise UnknownName(f"unknown {name} {x!r}; choose one of {sorted(map(str, options))}" + (f": {todo}" if todo else ""))
    return x


def text(x, name: str, todo: str = "") -> str:
    """A non-empty string."""
    if not isinstance(x, str) or not x.strip():
        raise _fail(name, "a non-empty string", x, todo)
    return x


def texts(x, name: str, todo: str = "") -> list[str]:
    """A non-empty list (or tuple) of non-empty strings."""
    if isinstance(x, str) or not isinstance(x, (list, tuple)) or not x:
        raise _fail(name, "a non-empty list of strings", x, todo)
    for i, item in enumerate(x):
        text(item, f"{name}[{i}]", todo)
    return list(x)


def all_finite(x: torch.Tensor) -> bool:
    """No NaN or Inf in a float tensor: a NaN reaches both ends of aminmax, 10x cheaper than isfinite().all()."""
    if not isinstance(x, torch.Tensor):
        raise _fail("x", "a torch.Tensor", x, "wrap it with torch.tensor(...)")
    if x.numel() == 0:
        return True
    if x.device.type == "meta":
        raise BadInput("got a tensor on the 'meta' device, which holds no values: load or create it on 'cpu' or 'cuda'")
    if x.dtype.itemsize == 1 and x.is_floating_point():  # float8 has neither aminmax nor isfinite: widen it first
        x = x.to(torch.float16)
    lo, hi = torch.aminmax(x)
    return math.isfinite(lo.item()) and math.isfinite(hi.item())


def tensor(x, name: str, *, dims: int | tuple[int, ...] | None = None, kind: str | None = None, finite: bool = True,
           nonempty: bool = True, todo: str = "") -> torch.Tensor:
    """A torch.Tensor with `dims` dimensions, of `kind` "float" or "integer", non-empty and (floats) finite."""
    if not isinstance(x, torch.Tensor):
        raise _fail(name, "a torch.Tensor", x, todo or "wrap it with torch.tensor(...)")
    allowed = (dims,) if isinstance(dims, int) else dims
    if allowed is not None and x.dim() not in allowed:
        want = " or ".join(f"{d}-D" for d in allowed)
        raise _fail(name, f"a {want} tensor", x, todo or "reshape it (e.g. .reshape(rows, -1) or x[None])")
    if kind == "float" and not x.is_floating_point():
        raise _fail(name, "a floating-point tensor", x, todo or "convert it with .float()")
    if kind == "integer" and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise _fail(name, "a tensor of integer token ids", x, todo or "use tokenizer(...).input_ids or data.token_windows")
    if nonempty and x.numel() == 0:
        raise _fail(name, "a non-empty tensor", x, todo)
    if finite and x.is_floating_point() and x.numel() and not all_finite(x):
        raise _fail(name, "finite (no NaN or Inf)", x, todo or "find where NaN/Inf came from (overflow in fp16?) first")
    return x


def broadcasts(t: torch.Tensor, shape: tuple, name: str, todo: str = "") -> torch.Tensor:
    """A tensor that broadcasts to `shape` without growing it (a scale per row, per block, or one for all)."""
    try:
        fits = torch.broadcast_shapes(t.shape, tuple(shape)) == tuple(shape)
    except RuntimeError:
        fits = False
    if not fits:
        raise _fail(name, f"broadcastable to {tuple(shape)}", t, todo or "give one value per row ([rows, 1]) or a single value")
    return t


def vocab_size(m: torch.nn.Module) -> int | None:
    """How many token ids a model's input embedding can look up (its config's count if it has no embedding)."""
    model(m)
    embed = m.get_input_embeddings() if callable(getattr(m, "get_input_embeddings", None)) else None
    return getattr(embed, "num_embeddings", None) or getattr(getattr(m, "config", None), "vocab_size", None)


def in_vocabulary(model, windows: torch.Tensor) -> torch.Tensor:
    """Token ids the model's input embedding can look up (ids from another tokenizer fail deep inside it)."""
    token_ids(windows, "windows")
    vocab = vocab_size(model)
    if vocab is not None and windows.numel() and int(windows.max()) >= vocab:
        raise BadInput(f"windows hold token id {int(windows.max())}, but the model's vocabulary has {vocab}: "
                       f"cut them with this model's own tokenizer")
    from .architecture import max_positions  # noqa: PLC0415 (architecture imports this module)

    longest = max_positions(model)
    if longest is not None and windows.shape[-1] > longest:
        raise BadInput(f"windows are {windows.shape[-1]} tokens long, but the model takes at most {longest} positions: "
                       f"cut shorter windows (data.token_windows(tokenizer, split, n, length) with length <= {longest})")
    return windows


def token_ids(x, name: str = "windows", min_length: int = 1, todo: str = "") -> torch.Tensor:
    """A non-empty 2-D LongTensor [n_windows, length] of token ids, length >= min_length, no negative ids."""
    todo = todo or "cut windows with data.token_windows(tokenizer, 'eval', n_windows, length)"
    want = f"a 2-D LongTensor [n_windows, length{f' >= {min_length}' if min_length > 1 else ''}] of token ids"
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.is_floating_point() or x.is_complex() \
            or x.dtype == torch.bool or x.numel() == 0 or x.shape[1] < min_length:
        raise _fail(name, want, x, todo)
    if x.dtype != torch.long:  # embeddings take int32 too, but the loss needs int64 targets: one dtype everywhere
        raise _fail(name, want + " (dtype torch.long)", x, "convert it with .long()")
    if x.device.type == "meta":
        raise _fail(name, want + " holding values (not on the 'meta' device)", x, todo)
    if bool((x < 0).any()):
        raise _fail(name, want + " (none negative)", x, todo)
    return x


def quiet() -> bool:
    """True where progress bars must not be drawn: TQDM_DISABLE=1, as `make test` and `make execute` set (stored notebook
    outputs then hold no frozen bars); a learner in `make lab` sees them."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() in {"1", "true", "yes", "on"}


def progress(x, name: str = "progress") -> dict:
    """tqdm's keywords for an optional progress flag: None follows quiet() (tqdm's notebook bars ignore TQDM_DISABLE
    themselves, so the course decides), True/False force it."""
    if x is None:
        return {"disable": quiet()}
    return {"disable": not flag(x, name)}


def progress_bar(iterable, desc: str, progress_flag: bool | None = None):
    """A tqdm.auto bar over iterable that closes when done and is off where quiet() (see progress)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=text(desc, "desc"), leave=False, **progress(progress_flag, "progress_flag"))


def model(x, name: str = "model") -> torch.nn.Module:
    """A torch.nn.Module (e.g. what models.load_model returns first)."""
    if not isinstance(x, torch.nn.Module):
        hint = "load_model returns (model, tokenizer): unpack it" if isinstance(x, tuple) else "load one with models.load_model()"
        raise _fail(name, "a torch.nn.Module", x, hint)
    return x


def causal_lm(x, name: str = "model") -> torch.nn.Module:
    """A transformers causal LM (a .config and input embeddings), not a bare module such as a Linear or a layer."""
    model(x, name)
    head = x.get_output_embeddings() if callable(getattr(x, "get_output_embeddings", None)) else None
    if getattr(x, "config", None) is None or not callable(getattr(x, "get_input_embeddings", None)) or head is None:
        raise _fail(name, "a transformers causal LM (a .config, input embeddings and an output head)", type(x).__name__,
                    "pass the model that models.load_model() returns first, not one of its layers or its .model")
    return x


def device(x, name: str = "device") -> torch.device:
    """A device torch can use here: 'cpu', or 'cuda' only where a CUDA GPU is visible."""
    try:
        dev = torch.device(x)
    except (RuntimeError, TypeError):
        raise BadInput(f"{name} must be 'cpu' or 'cuda', got {x!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NoDevice(f"{name}={x!r} was asked for, but this machine has no CUDA GPU "
                       f"(torch {torch.__version__}): use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise BadInput(f"{name} must be 'cpu' or 'cuda', got {x!r}")
    return dev
