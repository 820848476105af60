"""Numbers one lesson measures and a later lesson reads (never retyped), kept as JSON beside the model cache."""
from __future__ import annotations

import json
from pathlib import Path

from . import resource
from .models import cache_dir


def path(lesson: str) -> Path:
    """Where lesson `lesson` (e.g. "04") keeps its results."""
    return cache_dir() / "results" / f"{lesson}.json"


def record(lesson: str, **values) -> dict:
    """Merge values (numbers, strings, dicts of them) into the lesson's results file; return all of them."""
    stored = read(lesson) if path(lesson).exists() else {}
    stored.update(values)
    path(lesson).parent.mkdir(parents=True, exist_ok=True)
    path(lesson).write_text(json.dumps(stored, indent=1, sort_keys=True))
    return stored


def reference(lesson: str) -> dict:
    """The results lesson `lesson` recorded on the course machine, shipped as resources/results/<lesson>.json."""
    committed = resource("results", f"{lesson}.json")
    if not committed.is_file():
        raise LookupError(f"no committed results for lesson {lesson} (resources/results/{lesson}.json)")
    return json.loads(committed.read_text())


def read_or_reference(lesson: str, **expected) -> tuple[dict, str]:
    """This machine's results of a lesson if it ran with `expected` settings, else the committed ones; and which."""
    try:
        return read(lesson, **expected), "this machine"
    except LookupError:
        return reference(lesson), "committed (course machine)"


def read(lesson: str, **expected) -> dict:
    """The lesson's results; raise LookupError if missing or if they were measured with other `expected` settings."""
    if not path(lesson).exists():
        raise LookupError(f"no results from lesson {lesson} yet: run notebooks/{lesson}_*.ipynb first")
    stored = json.loads(path(lesson).read_text())
    stale = {k: stored.get(k) for k, v in expected.items() if stored.get(k) != v}
    if stale:
        raise LookupError(f"lesson {lesson}'s results were measured with {stale}, not {expected}: run it again")
    return stored
