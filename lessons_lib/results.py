"""Numbers one lesson measures and a later lesson reads (never retyped), kept as JSON beside the model cache.

A record holds a schema version, the settings it was measured with (model, evaluation and calibration windows, group
size, ... and the versions of the libraries that measured it) and the values. It is written atomically and read back
only when every setting matches; a corrupt or mismatched file is reported by name and never used."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

from . import resource, validate
from .models import cache_dir

SCHEMA = 2
VERSIONED = ("torch", "transformers", "bitsandbytes", "llmcompressor", "compressed-tensors", "torchao", "gguf", "lm-eval",
             "lessons-lib")
CROSS_MACHINE = ("versions",)  # settings that may differ between this machine's record and the committed one


class BadRecord(LookupError):
    """A results file that is missing, corrupt, of another schema, or measured with other settings."""


def versions() -> dict:
    """The versions of Python, of the libraries that shape a measurement and of the course's text sets, as here."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    try:  # the text sets themselves: a record measured on other evaluation or calibration text is not comparable
        found["text sets"] = hashlib.sha256(resource("text", "MANIFEST.json").read_bytes()).hexdigest()[:16]
    except OSError:
        found["text sets"] = None
    return found


def _lesson(lesson) -> str:
    if not isinstance(lesson, str) or not (len(lesson) == 2 and lesson.isdigit()):
        raise validate.BadInput(f"lesson must be a two-digit string such as '04', got {lesson!r}")
    return lesson


def path(lesson: str) -> Path:
    """Where lesson `lesson` (e.g. "04") keeps its results on this machine."""
    return cache_dir() / "results" / f"{_lesson(lesson)}.json"


def _label(lesson: str) -> str:
    """How messages name this machine's results file (without the machine's own path, which notebooks would store)."""
    return f"results/{lesson}.json in the course cache (models.cache_dir())"


def _json_safe(name: str, value):
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise validate.BadInput(f"{name} cannot be stored as JSON ({err}): store numbers, strings, lists or dicts "
                                f"of them (convert tensors with .item() or .tolist(); NaN and Inf are refused)") from None
    return value


def _load(file, label: str) -> dict:
    """Parse a record file; BadRecord naming the file if it is empty, truncated, garbled or of another schema."""
    try:
        stored = json.loads(file.read_text())
    except FileNotFoundError:
        raise BadRecord(f"{label} does not exist") from None
    except (ValueError, OSError) as err:
        raise BadRecord(f"{label} is corrupt ({type(err).__name__}: {err}); it is ignored: run the lesson again "
                        f"to re-measure it") from None
    if not isinstance(stored, dict) or stored.get("schema") != SCHEMA or not isinstance(stored.get("settings"), dict) \
            or not isinstance(stored.get("values"), dict):
        found = stored.get("schema") if isinstance(stored, dict) else None
        raise BadRecord(f"{label} is not a schema-{SCHEMA} results record (schema {found!r}); it is ignored: run the "
                        f"lesson again to re-measure it")
    return stored


def _flat(stored: dict) -> dict:
    """What readers get: the values, with the settings beside them (e.g. r["ppl"], r["group"])."""
    return {**stored["values"], **stored["settings"]}


def _differences(settings: dict, wanted: dict) -> dict:
    return {k: (settings.get(k), v) for k, v in wanted.items() if settings.get(k) != v}


def record(lesson: str, settings: dict, **values) -> dict:
    """Store values measured with `settings` (model, eval, calib, group, ...): merged into this lesson's record if
    it was measured with the same settings, else replacing it. Written atomically; returns what a reader gets."""
    if not isinstance(settings, dict) or not settings or not all(isinstance(k, str) for k in settings):
        raise validate.BadInput(f"settings must be a non-empty dict of what lesson {lesson} measured with, e.g. "
                                f"dict(model=models.identity(MODEL_ID), eval='8x512'), got {settings!r}")
    if not values:
        raise validate.BadInput("record needs at least one value, e.g. record('04', settings, ppl={'fp32': 23.1})")
    clash = sorted(set(values) & (set(settings) | {"versions", "schema"}))
    if clash:
        raise validate.BadInput(f"{clash} are setting names: give values other names")
    settings = {**_json_safe("settings", settings), "versions": versions()}
    _json_safe("values", values)
    target = path(lesson)
    merged = {}
    if target.exists():
        try:
            old = _load(target, _label(lesson))
            merged = old["values"] if old["settings"] == settings else {}
        except BadRecord as err:
            warnings.warn(f"{err} (it is being replaced)", stacklevel=2)
    merged.update(values)
    stored = {"schema": SCHEMA, "lesson": lesson, "settings": settings, "values": merged}
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{lesson}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(stored, indent=1, sort_keys=True))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return _flat(stored)


def read(lesson: str, **expected) -> dict:
    """This machine's results of a lesson, if measured with the `expected` settings and this environment's library
    versions; else BadRecord (a LookupError) saying which file and which setting, and what to run."""
    target = path(lesson)
    if not target.exists():
        raise BadRecord(f"no results from lesson {lesson} yet: run notebooks/{lesson}_*.ipynb first")
    stored = _load(target, _label(lesson))
    stale = _differences(stored["settings"], {**expected, "versions": versions()})
    if stale:
        shown = {k: f"{got!r}, not {want!r}" for k, (got, want) in stale.items()}
        raise BadRecord(f"{_label(lesson)} was measured with other settings ({shown}); it is not used: run "
                        f"notebooks/{lesson}_*.ipynb again with these settings")
    return _flat(stored)


def committed(lesson: str) -> dict:
    """The results lesson `lesson` recorded on the course machine, shipped as resources/results/<lesson>.json."""
    return _flat(_load(resource("results", f"{_lesson(lesson)}.json"), f"resources/results/{lesson}.json"))


def _cross_model_table() -> dict:
    """The committed two-model table that scripts/cross_model.py writes."""
    return json.loads(resource("results", "cross_model.json").read_text())


def cross_model(lesson: str):
    """The committed two-model claims of one lesson (scripts/cross_model.py): outcome and numbers per claim and model."""
    import pandas as pd

    table = _cross_model_table()
    def verdict(numbers: str) -> str:  # "A beats B: 21.1 vs 27.2, ...": the interval's verdict, where there is one
        label = numbers.split(": ", 1)[0] if ": " in numbers else ""
        return next((v for v in ("beats", "loses to", "indistinguishable", "matches within") if f" {v} " in label), "")

    rows = [{"claim": c["claim"], "model": m, "outcome": "held" if c[m]["holds"] else "did not hold",
             "verdict": verdict(c[m]["numbers"]), "numbers": c[m]["numbers"].split(": ", 1)[-1]}
            for c in table["claims"] if c["lesson"] == _lesson(lesson) for m in table["models"]]
    if not rows:
        raise KeyError(f"resources/results/cross_model.json has no claims of lesson {lesson}; it has lessons "
                       f"{sorted({c['lesson'] for c in table['claims']})}")
    made = f"{table['command']} on {table['date']}"
    return pd.DataFrame(rows).set_index(["claim", "model"]).rename_axis(columns=made)


def cross_model_perplexity():
    """Every run's test perplexity in the committed two-model table: one row per run, one column per model."""
    import pandas as pd

    table = _cross_model_table()
    return pd.DataFrame({m: {run: s["ppl"] for run, s in info["ppl"].items()} for m, info in table["models"].items()})


def committed_settings(lesson: str) -> dict:
    """The settings the committed results of a lesson were measured with (library versions left out)."""
    stored = _load(resource("results", f"{_lesson(lesson)}.json"), f"resources/results/{lesson}.json")
    return {k: v for k, v in stored["settings"].items() if k not in CROSS_MACHINE}


def read_or_committed(lesson: str, **expected) -> tuple[dict, str]:
    """This machine's results of a lesson if measured with the committed record's settings (as overridden by
    `expected`, e.g. model and eval), else the committed ones; and a line saying which was used and why."""
    wanted = {**committed_settings(lesson), **expected}
    try:
        return read(lesson, **wanted), "this machine"
    except BadRecord as err:
        shipped = _load(resource("results", f"{lesson}.json"), f"resources/results/{lesson}.json")
        text_sets = shipped["settings"].get("versions", {}).get("text sets")
        stale = "" if text_sets == versions()["text sets"] else (
            "; note: the committed record was measured on other text sets than these (re-run the lesson, then "
            "`python -m lessons_lib.results` publishes it)")
        return _flat(shipped), f"committed (course machine): {err}{stale}"


def read_all_or_committed(lessons, **expected) -> tuple[dict, dict]:
    """read_or_committed for several lessons, never mixing models or machines: when some lessons' records are this
    machine's and others' the course machine's (or of another model), every lesson's committed record is used instead,
    and says so (fp32's own perplexity moves in its fourth digit between kinds of CPU)."""
    pairs = {lesson: read_or_committed(lesson, **expected) for lesson in lessons}
    recorded, source = {k: r for k, (r, _) in pairs.items()}, {k: why for k, (_, why) in pairs.items()}
    here = sorted(k for k, why in source.items() if why == "this machine")
    if len({r.get("model") for r in recorded.values()}) > 1 or 0 < len(here) < len(lessons):
        missing = sorted(set(source) - set(here))
        recorded = {lesson: committed(lesson) for lesson in lessons}
        source = {lesson: f"committed (course machine), so that all lessons describe one model and one machine (not "
                          f"measured here with the course's settings: lessons {', '.join(missing)})" for lesson in lessons}
    return recorded, source


def check_consistent(records: dict[str, dict], shared: tuple[str, ...] = ("model", "eval")) -> None:
    """Refuse records (lesson -> what read returns) measured with settings other than the committed ones, or that
    disagree on a `shared` setting; the message names the lesson and the setting."""
    if not isinstance(records, dict) or not records:
        raise validate.BadInput("records must be a dict {lesson: results.read(...) or results.committed(...)}")
    if isinstance(shared, str) or not isinstance(shared, (tuple, list)):
        raise validate.BadInput(f"shared must be a tuple of setting names, e.g. ('model',), got {shared!r}")
    for key in shared:
        seen = {lesson: r.get(key) for lesson, r in records.items() if isinstance(r, dict)}
        if len(set(map(repr, seen.values()))) > 1:
            raise BadRecord(f"the lessons' results disagree on {key!r}: {seen}; read them all with the same settings")
    for lesson, r in records.items():
        if not isinstance(r, dict):
            raise validate.BadInput(f"records[{lesson!r}] must be a dict from results.read or results.committed, got "
                                    f"{type(r).__name__}")
        try:
            reference = committed_settings(lesson)
        except (BadRecord, validate.BadInput):
            continue  # no committed record to hold it to
        other = {k: (r.get(k), v) for k, v in reference.items() if k not in shared and r.get(k) != v}
        if other:
            shown = {k: f"{got!r}, not {want!r}" for k, (got, want) in other.items()}
            raise BadRecord(f"lesson {lesson}'s results were measured with other settings ({shown}) than the course "
                            f"compares: use results.read_or_committed({lesson!r}, ...)")


def publish(lesson: str, folder: Path | None = None) -> Path:
    """Copy this machine's record of a lesson (checked as read does) into the package's committed results."""
    stored = _load(path(lesson), _label(lesson))
    if stored["settings"].get("versions") != versions():
        raise BadRecord(f"{_label(lesson)} was measured in another environment: run the lesson again before publishing")
    target = Path(folder) if folder is not None else Path(__file__).resolve().parent / "resources" / "results"
    target.mkdir(parents=True, exist_ok=True)
    out = target / f"{lesson}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{lesson}.", suffix=".tmp", dir=target)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(stored, indent=1, sort_keys=True))
    os.replace(tmp, out)
    return out


if __name__ == "__main__":  # `python -m lessons_lib.results 00 02 03 04 05 06 07`: publish this machine's records
    import sys

    for lesson in sys.argv[1:] or ["00", "02", "03", "04", "05", "06", "07"]:
        print("published", publish(lesson).name)
