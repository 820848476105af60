"""Every lesson's claims on two models, side by side: which of the course's conclusions generalise.

    make claims-by-model            (every notebook on Gemma-3-270M, then the table: about an hour on 2 cores)
    python scripts/claims_by_model.py [EXECUTED] [--model offline:gemma-3-270m] [--out ...claims_by_model.md]

Without EXECUTED, every notebook is executed first with QHT_MODEL=--model, QHT_CLAIMS=report and a course cache of its
own (its results never mix with the default model's; the converted offline models are shared), into a folder kept
under /tmp so that a learner can open the notebooks it ran.

Each `claims.check` prints "[held] <claim> (<numbers>)" or "[NOT HELD] ..."; this script reads those lines from the
stored notebooks (the default model, as committed) and from a folder of the same notebooks executed on another model,
pairs them by claim, and writes one table per lesson. A claim the other model did not check is a fact of the default
model itself (a count, a named channel), skipped there by design. An error cell in the other run is listed as such."""
from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^\[(held|NOT HELD)\] (.*)$")


def _split(text: str) -> tuple[str, str]:
    """A printed claim and its numbers: the last parenthesised group, when the line ends with one."""
    if not text.endswith(")"):
        return text, ""
    depth = 0
    for i in range(len(text) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(text[i], 0)
        if depth == 0:
            return (text[:i].rstrip(), text[i + 1:-1]) if i > 0 and text[i - 1] == " " else (text, "")
    return text, ""


def claims_of(path: Path) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(claim, outcome, numbers) for every claim line a notebook printed, in order; and its error cells' names."""
    nb = nbformat.read(path, 4)
    rows, errors = [], []
    for index, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                errors.append(f"code cell {index}: {out.ename}: {out.evalue[:200]}")
            if out.output_type != "stream":
                continue
            for line in out.text.splitlines():
                m = LINE.match(line)
                if m:
                    claim, numbers = _split(m[2])
                    rows.append((claim, "held" if m[1] == "held" else "not held", numbers))
    return rows, errors


def _cell(outcome: str, numbers: str) -> str:
    return f"{outcome}: {numbers}".replace("|", "/") if numbers else outcome


def table(default: Path, other: Path) -> tuple[list[str], dict]:
    """Markdown lines pairing one lesson's claims on the two models, and the counts behind its summary line."""
    mine, _ = claims_of(default)
    theirs, errors = claims_of(other)
    pending = list(theirs)
    lines = ["| claim | default model | other model |", "|---|---|---|"]
    counts = {"held on both": 0, "held on the default model only": 0, "not checked there": 0, "other": 0}
    for claim, outcome, numbers in mine:
        match = next((t for t in pending if t[0] == claim), None)
        if match:
            pending.remove(match)
            key = ("held on both" if outcome == match[1] == "held" else
                   "held on the default model only" if outcome == "held" else "other")
            counts[key] += 1
            # a parenthesis both runs print alike belongs to the claim, not to its numbers
            text, a, b = (f"{claim} ({numbers})", "", "") if numbers == match[2] else (claim, numbers, match[2])
            lines.append(f"| {text} | {_cell(outcome, a)} | {_cell(match[1], b)} |")
        else:
            counts["not checked there"] += 1
            lines.append(f"| {_split(claim)[0]} | {_cell(outcome, numbers)} | not checked (a fact of the default model, "
                         f"or its wording names the model's own numbers) |")
    for claim, outcome, numbers in pending:
        counts["other"] += 1
        lines.append(f"| {claim} | (worded for the default model otherwise) | {_cell(outcome, numbers)} |")
    for e in errors:
        lines.append(f"| **error cell** | | {e} |")
    counts["errors"] = len(errors)
    return lines, counts


def execute(model: str) -> Path:
    """Every notebook executed on `model` in a cache of its own; the folder of executed notebooks."""
    sys.path.insert(0, str(ROOT))
    from lessons_lib import models

    work = Path(tempfile.mkdtemp(prefix="qht-claims-"))
    cache, run = work / "cache", work / "run"
    models.cache_sharing_checkpoints(cache)
    env = {**os.environ, "QHT_MODEL": model, "QHT_CACHE": str(cache), "QHT_CLAIMS": "report"}
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):  # in lesson order: 05 and 09 read earlier lessons' records
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                               "--allow-errors", "--ExecutePreprocessor.timeout=3600", "--output-dir", str(run), str(nb)],
                              env=env, capture_output=True, text=True)
        print(f"{nb.stem}: {'ran' if done.returncode == 0 else 'FAILED: ' + done.stderr[-500:]} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("executed", type=Path, nargs="?", help="the notebooks executed on the other model (default: run them)")
    parser.add_argument("--model", default="offline:gemma-3-270m", help="the other model, as QHT_MODEL named it")
    parser.add_argument("--out", type=Path, default=ROOT / "lessons_lib" / "resources" / "results" / "claims_by_model.md")
    args = parser.parse_args()
    executed = args.executed or execute(args.model)
    runs = sorted(executed.glob("*.ipynb"))
    if not runs:
        raise SystemExit(f"no executed notebooks in {executed}")
    out = [f"# Every lesson's claims on the default model and on {args.model}", "",
           f"Made by `python scripts/claims_by_model.py` on {datetime.date.today()} from the stored notebooks (default "
           f"model, offline:SmolLM2-135M-Instruct) and the same notebooks executed with `QHT_MODEL={args.model} "
           f"QHT_CLAIMS=report` (a cache of their own). On the default model every claim is also an assert; on the "
           f"other model it is reported. Outcomes and numbers are the cells' own printed lines.", ""]
    for run in runs:
        lines, c = table(ROOT / "notebooks" / run.name, run)
        if len(lines) == 2 and not c["errors"]:
            continue
        out += [f"## {run.stem}", "",
                f"{c['held on both']} held on both, {c['held on the default model only']} on the default model only, "
                f"{c['not checked there']} not checked on the other model, {c['other']} other, "
                f"{c['errors']} error cells.", ""] + lines + [""]
    args.out.write_text("\n".join(out))
    print(f"wrote {args.out} from the notebooks executed in {executed}")


if __name__ == "__main__":
    main()
