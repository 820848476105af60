"""A lesson's claims, each checked by the cell that computes it: asserted on the course's default model (so a
library upgrade that breaks a lesson fails CI), recorded as held / not held on any other model, listed at the end."""
from __future__ import annotations

import os

import numpy as np
import torch

from . import validate
from .models import OFFLINE_MODEL, is_default, model_id_of


class ClaimFailed(AssertionError):
    """A claim the lesson makes about the default model did not hold there."""


class Claims:
    """The claims of one lesson on one loaded model: claims = Claims(model); claims.check("...", a < b, f"{a} vs {b}")."""

    def __init__(self, model) -> None:
        """model: the loaded model, or (before one is loaded) MODEL_ID as the lesson's parameters set it."""
        if model is None or isinstance(model, str):  # an id: the default model unless one was chosen
            chosen = model or os.environ.get("QHT_MODEL") or OFFLINE_MODEL
            self.model, self.default = chosen, chosen == OFFLINE_MODEL
        else:
            self.model, self.default = model_id_of(model), is_default(model)
        # QHT_CLAIMS=report: an author re-checking a lesson after an upgrade sees every outcome before any assert fails
        self.strict = self.default and os.environ.get("QHT_CLAIMS", "") != "report"
        self.rows: list[dict] = []

    def check(self, claim: str, held: bool, numbers: str = "", default_only: bool = False) -> bool:
        """Record whether `claim` held (with the numbers that decide it); on the default model a failure raises.

        default_only=True: a fact about the default model itself (a count, a named channel), not checked elsewhere."""
        claim = validate.text(claim, "claim", "say in words what the lesson claims")
        validate.flag(default_only, "default_only")
        if isinstance(held, torch.Tensor) and held.numel() == 1 and held.dtype == torch.bool:
            held = bool(held)
        if not isinstance(held, (bool, np.bool_)):  # a string or a number would always read as "held"
            raise validate.BadInput(f"held must be the claim's condition, True or False, got {held!r}: pass the "
                                    f"comparison itself (a < b), not its text")
        if default_only and not self.default:
            self.rows.append({"claim": claim, "outcome": "not checked (a fact of the default model)", "numbers": ""})
            return False
        held = bool(held)
        self.rows.append({"claim": claim, "outcome": "held" if held else "not held", "numbers": str(numbers)})
        print(f"[{'held' if held else 'NOT HELD'}] {claim}" + (f" ({numbers})" if numbers else ""))
        if self.strict and not held:
            raise ClaimFailed(f"on the default model this lesson claims: {claim}, but it did not hold ({numbers}). "
                              f"If a library changed the result, the lesson's prose must change with it.")
        return held

    def compared(self, claim: str, comparison, expect: str) -> bool:
        """A claim decided by an evaluate.compare result: expect "beats", "loses to" or "matches within tol"."""
        expect = validate.choice(expect, "expect", ["beats", "loses to", "matches within tol"])
        if not isinstance(getattr(comparison, "verdict", None), str):
            raise validate.BadInput(f"comparison must be what evaluate.compare(a, b) returns, got {comparison!r}")
        return self.check(claim, comparison.verdict == expect, str(comparison))

    def table(self):
        """Every claim checked so far, in order: outcome and the numbers behind it."""
        import pandas as pd

        frame = pd.DataFrame(self.rows, columns=["claim", "outcome", "numbers"])
        frame.index = range(1, len(frame) + 1)
        return frame.rename_axis(f"claims on {self.model}")

    def summary(self) -> list[dict]:
        """JSON-safe rows for results.record (each lesson stores its claims with its results)."""
        return [dict(r) for r in self.rows]
