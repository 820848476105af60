"""The course's offline text sets (lessons_lib/resources/text/) and fixed token windows cut from them."""
from __future__ import annotations

import torch

from . import resource

TEXT_SETS = {
    "eval": "held-out evaluation prose: State of the Union addresses 2022-2026 (public domain)",
    "calib": "calibration prose: State of the Union addresses 1990-2015 (public domain)",
    "shakespeare": "Hamlet, Macbeth, Twelfth Night, Henry V (public domain)",
    "python": "Python standard library source (PSF licence)",
}


def load_text(name: str = "eval") -> str:
    """Return one of the course's text sets by name (see TEXT_SETS)."""
    if name not in TEXT_SETS:
        raise ValueError(f"unknown text set {name!r}; choose one of {sorted(TEXT_SETS)}")
    return resource("text", f"{name}.txt").read_text(encoding="utf-8")


def token_windows(tokenizer, name: str = "eval", n_windows: int = 8, length: int = 512, skip: int = 0) -> torch.Tensor:
    """Cut the text set into n_windows consecutive, non-overlapping windows of `length` tokens, after `skip` windows."""
    if n_windows < 1 or length < 2 or skip < 0:
        raise ValueError(f"need n_windows >= 1, length >= 2 and skip >= 0, got {n_windows}, {length} and {skip}")
    ids = tokenizer(load_text(name), return_tensors="pt").input_ids[0]
    need = (skip + n_windows) * length
    if ids.numel() < need:
        raise ValueError(
            f"text set {name!r} has {ids.numel()} tokens, fewer than ({skip} + {n_windows}) x {length} = {need}: "
            f"ask for fewer or shorter windows (at most {ids.numel() // length} of length {length})"
        )
    return ids[skip * length:need].reshape(n_windows, length)


def mixed_windows(tokenizer, names: list[str], n_windows: int = 16, length: int = 256) -> torch.Tensor:
    """Calibration drawn equally from several text sets: window i comes from names[i % len(names)]."""
    parts = [token_windows(tokenizer, n, -(-n_windows // len(names)), length) for n in names]
    return torch.stack([parts[i % len(names)][i // len(names)] for i in range(n_windows)])


MIN_CALIB_TOKENS = 256


def check_windows(windows: torch.Tensor, min_tokens: int = MIN_CALIB_TOKENS) -> torch.Tensor:
    """Refuse calibration data that is not a [n_windows, length] tensor of token ids with at least min_tokens tokens."""
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.is_floating_point():
        raise ValueError("calibration data must be a [n_windows, length] tensor of token ids (data.token_windows)")
    if windows.numel() < min_tokens:
        raise ValueError(f"calibration data has {windows.numel()} tokens, too few to estimate activation statistics: "
                         f"use at least {min_tokens}, e.g. data.token_windows(tokenizer, 'calib', 16, 256)")
    return windows


def documents(name: str = "eval", n_docs: int = 4, min_chars: int = 2000) -> list[str]:
    """Split a text set at paragraph breaks into n_docs documents of at least min_chars characters."""
    docs, current = [], ""
    for paragraph in load_text(name).split("\n\n"):
        current = f"{current}\n\n{paragraph}" if current else paragraph
        if len(current) >= min_chars:
            docs.append(current)
            current = ""
            if len(docs) == n_docs:
                return docs
    raise ValueError(f"text set {name!r} holds fewer than {n_docs} documents of {min_chars} characters")
