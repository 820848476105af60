"""What runs here: try every weight format of lessons_lib.kernels on a device, on a small case, and tabulate it."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import kernels, validate


def probe(device: str | torch.device = "cpu", out_features: int = 256, in_features: int = 512,
          batch: int = 4, seed: int = 0) -> dict:
    """Try every format on a small case: does it run, natively or not, and does it agree with float32?"""
    device, gen = validate.device(device), torch.Generator().manual_seed(validate.integer(seed, "seed"))
    for v, n in ((out_features, "out_features"), (in_features, "in_features"), (batch, "batch")):
        validate.integer(v, n, lo=1)
    w = torch.randn(out_features, in_features, generator=gen).to(device)
    x = torch.randn(batch, in_features, generator=gen).to(device)
    reasons = {fmt: kernels.unsupported_reason(fmt, device, out_features, in_features) for fmt in kernels.FORMATS}
    return {fmt: {"runs": False, "native": False, "reason": r} if r else _try(fmt, w, x) for fmt, r in reasons.items()}


def _try(fmt: str, w: torch.Tensor, x: torch.Tensor) -> dict:
    """Quantize, run and check one format, trying its variants in order; the probe's entry for it."""
    failures = []
    for options in kernels.FORMATS[fmt].variants:
        try:
            qw = kernels.quantize(fmt, w, **options)
            native, note = kernels.native_note(fmt, w.device)
            entry = {"runs": True, "native": native, "kernel": note, "options": options, **kernels.check(qw, x, w)}
            return {**entry, "failed_variants": failures} if failures else entry
        except Exception as e:  # noqa: BLE001  (whatever torch raises, the probe reports it)
            failures.append(f"{options or 'default'}: raised {type(e).__name__}: {first_line(e)}")
    return {"runs": False, "native": False, "reason": "; ".join(failures)}


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, at most `limit` characters."""
    if not isinstance(e, BaseException):
        raise validate.BadInput(f"e must be an exception, got {type(e).__name__}")
    limit = validate.integer(limit, "limit", lo=1)
    return (str(e).strip().splitlines() or [""])[0][:limit]


@dataclass(frozen=True)
class ProbeRow:
    """One line of the probe table, for printing."""

    fmt: str
    runs: bool
    native: bool
    detail: str


def probe_table(results: dict) -> list[ProbeRow]:
    """The probe's results as rows: format, runs, native, and the kernel or the reason it does not run."""
    if not isinstance(results, dict) or not all(isinstance(r, dict) and "runs" in r for r in results.values()):
        raise validate.BadInput("results must be what probing.probe(...) returns: {format: {'runs': ..., ...}}")
    return [ProbeRow(f, r["runs"], r.get("native", False), r.get("kernel") or r.get("reason", ""))
            for f, r in results.items()]
