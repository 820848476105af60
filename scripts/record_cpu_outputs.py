"""Store a cell's outputs per kind of CPU where they differ, so that nbval holds every kind to its own numbers.

Whole-model evaluations sum in another order on AVX2 and AVX512 CPUs (and bf16 matmuls differ with and without
bf16 units): a perplexity moves in its fourth digit, a paired difference or a chaotic GPTQ run by more. Execute the
notebooks on this machine into a folder, then record:

    jupyter nbconvert --to notebook --execute --output-dir /tmp/run notebooks/*.ipynb   (with make's environment)
    python scripts/record_cpu_outputs.py /tmp/run [--new-from REV]

`make execute` (outputs stored in place) calls `--in-place` itself: cells recorded per kind get this kind's new outputs.

For every code cell whose executed outputs do not agree with the stored ones (conftest.outputs_agree), both are kept
in the cell's metadata "qht_outputs_by_cpu" under their CPU kinds (the stored ones under the notebook's "qht_cpu").
With --new-from REV, cells whose source is not in REV's notebook take the executed outputs; unless they are exercise
checks, figures without printed text or cells nbval ignores, they are recorded for this kind only and compared
nowhere else until this script runs there.
"""
import argparse
import copy
import re
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from conftest import SKIP_FIELDS, cpu_kind, texts, texts_agree  # noqa: E402


def old_sources(rev: str, path: Path) -> set:
    """The cell sources of `path` at git revision `rev` (none if it did not exist)."""
    shown = subprocess.run(["git", "show", f"{rev}:{path.relative_to(ROOT)}"], cwd=ROOT, capture_output=True, text=True)
    return {c.source for c in nbformat.reads(shown.stdout, 4).cells} if shown.returncode == 0 else set()


def agree(a: list, b: list) -> bool:
    """As nbval under conftest compares: sanitized memory addresses, numbers within tolerance."""
    return texts_agree(a, b, SKIP_FIELDS, lambda s: re.sub(r"0x[0-9a-fA-F]+", "0xADDRESS", s))  # tests/sanitize.cfg


def record(executed: Path, new_from: str | None = None, notebooks: Path = ROOT / "notebooks", primary: bool = False) -> None:
    """Keep each kind's outputs where they differ (see the module's text); primary=True: every cell then shows this run's
    outputs (nbval-ignored cells and figures too), so a reader sees one machine's run, and the notebook's qht_cpu is
    this kind (the old stored outputs stay recorded under their kind wherever they differ)."""
    kind = cpu_kind()
    for run_path in sorted(executed.glob("*.ipynb")):
        path = notebooks / run_path.name
        stored, run = nbformat.read(path, 4), nbformat.read(run_path, 4)
        if [c.source for c in stored.cells] != [c.source for c in run.cells]:
            sys.exit(f"{run_path} was not executed from the current {path.name}: execute it again")
        stored_kind = stored.metadata.setdefault("qht_cpu", kind)
        before = old_sources(new_from, path) if new_from else None
        changed = 0
        for old, new in zip(stored.cells, run.cells):
            if old.cell_type != "code":
                continue
            if re.search(r"^\s*#\s*NBVAL_(IGNORE_OUTPUT|SKIP)\s*$", old.source, re.M):  # nbval compares it nowhere
                if before is not None and old.source not in before:  # changed: its old outputs are stale to a reader
                    old.outputs, old.execution_count = new.outputs, new.execution_count
                    changed += 1
                continue
            by_cpu = old.metadata.get("qht_outputs_by_cpu")
            if before is not None and old.source not in before:
                old.outputs, old.execution_count = new.outputs, new.execution_count
                plain = re.search(r'(^|[^.\w])check\("', old.source) or all(  # an exercise check (not claims.check),
                    re.fullmatch(r"<Figure size [^>]*>", t.strip()) for _, t in texts(new.outputs))  # or only a figure
                old.metadata.pop("qht_outputs_by_cpu", None)  # outputs of the old source are stale on every kind
                if not plain:
                    old.metadata["qht_outputs_by_cpu"] = {kind: copy.deepcopy(new.outputs)}
                changed += 1
            elif by_cpu is not None:
                by_cpu[kind] = copy.deepcopy(new.outputs)
                changed += 1
            elif not agree(old.outputs, new.outputs):
                if kind == stored_kind:  # the stored outputs were this kind's: they are stale, replace them
                    old.outputs = new.outputs
                else:
                    old.metadata["qht_outputs_by_cpu"] = {stored_kind: copy.deepcopy(old.outputs), kind: copy.deepcopy(new.outputs)}
                changed += 1
        if primary:
            for old, new in zip(stored.cells, run.cells):
                if old.cell_type == "code":
                    old.outputs, old.execution_count = new.outputs, new.execution_count
            stored.metadata["qht_cpu"] = kind
        nbformat.write(stored, path)
        print(f"{path.name}: {changed} cells recorded for {kind} (stored outputs: {stored.metadata['qht_cpu']})")


def refresh_in_place(paths: list[Path]) -> None:
    """After `make execute`: each cell recorded per kind takes its fresh outputs as this kind's."""
    kind = cpu_kind()
    for path in paths:
        nb = nbformat.read(path, 4)
        cells = [c for c in nb.cells if c.cell_type == "code" and "qht_outputs_by_cpu" in c.metadata]
        for c in cells:
            c.metadata["qht_outputs_by_cpu"][kind] = copy.deepcopy(c.outputs)
        if cells:
            nbformat.write(nb, path)
            print(f"{path.name}: {len(cells)} cells recorded per CPU kind now hold this {kind} run's outputs too")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("executed", type=Path, nargs="+", help="a folder of notebooks executed here, or with --in-place notebooks")
    parser.add_argument("--new-from", help="git revision: cells whose source is not there take the executed outputs")
    parser.add_argument("--in-place", action="store_true", help="the notebooks were executed in place (make execute)")
    parser.add_argument("--primary", action="store_true", help="the notebooks then show this run's outputs in every cell")
    args = parser.parse_args()
    refresh_in_place(args.executed) if args.in_place else record(args.executed[0], args.new_from, primary=args.primary)
