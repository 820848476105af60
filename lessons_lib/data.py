"""The course's offline text splits (lessons_lib/resources/text/) and fixed token windows cut from their documents.

Calibration data fits a method, dev data chooses its settings, test data measures what a lesson reports: three splits
made of different documents (an address, a play, a module), listed with their hashes in text/MANIFEST.json."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache

import torch

from . import resource, validate

TEXT_SETS = {
    "calib": "calibration prose: State of the Union addresses 1990-1998 (public domain)",
    "dev": "prose to choose settings on: the addresses of 2016-2022",
    "test": "prose to report on: the addresses of 2023, 2024 and 2026 (2026, after the model, gives half the windows)",
    "shakespeare_dev": "Twelfth Night, Henry V (public domain)",
    "shakespeare_test": "Hamlet, Macbeth (public domain)",
    "python_calib": "Python standard library source: textwrap, heapq, bisect, fractions, statistics, string, shlex",
    "python_dev": "Python standard library source: functools, dataclasses, csv, pprint, queue",
    "python_test": "Python standard library source: difflib, calendar, random, tokenize",
}
SPLITS = ("calib", "dev", "test")  # the prose splits; the other domains have dev and test (and Python calib) too
# Names of the single text sets of earlier versions of the course, kept until every lesson uses the splits.
ALIASES = {"eval": "test", "shakespeare": "shakespeare_test", "python": "python_test"}


@dataclass(frozen=True)
class Document:
    """One document of a split: its id (e.g. sotu-2026), source file, text and weight in the window rotation."""

    id: str
    source: str
    text: str
    weight: int


def split_name(name: str) -> str:
    """The split a name refers to (an old name such as "eval" is an alias of "test")."""
    name = ALIASES.get(name, name) if isinstance(name, str) else name
    return validate.choice(name, "text set", list(TEXT_SETS) + list(ALIASES),
                           "calib fits a method, dev chooses its settings, test measures what is reported")


@lru_cache(maxsize=1)
def manifest() -> dict:
    """text/MANIFEST.json: every split's documents (id, source, chars, weight, sha256) and every file's hash."""
    return json.loads(resource("text", "MANIFEST.json").read_text(encoding="utf-8"))


def load_text(name: str = "test") -> str:
    """Return one split's text (its documents joined by blank lines) by name (see TEXT_SETS)."""
    return resource("text", f"{split_name(name)}.txt").read_text(encoding="utf-8")


def split_documents(name: str = "test") -> list[Document]:
    """The documents of a split, each checked against the hash MANIFEST.json holds for it."""
    name, info = split_name(name), manifest()
    text, start, docs = load_text(name), 0, []
    for d in info["splits"][name]:
        body = text[start:start + d["chars"]]
        if hashlib.sha256(body.encode()).hexdigest() != d["sha256"]:
            raise ValueError(f"resources/text/{name}.txt does not match MANIFEST.json at document {d['id']}: "
                             f"rebuild the text sets with `python scripts/build_text.py`")
        docs.append(Document(d["id"], d["source"], body, d["weight"]))
        start += d["chars"] + len(info["separator"])
    return docs


def bos_id(tokenizer) -> int | None:
    """The BOS id when the model expects one at the start of every sequence (its tokenizer puts it there), else None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None or not callable(tokenizer):
        return None
    ids = tokenizer("a").input_ids
    return bos if len(ids) and ids[0] == bos else None


def _doc_windows(tokenizer, text: str, length: int) -> torch.Tensor:
    """One document cut into consecutive, non-overlapping windows of `length` token ids (the rest is dropped); a model
    that expects BOS gets it at the start of every window (once), followed by length - 1 tokens of text."""
    bos = bos_id(tokenizer)
    if bos is None:  # e.g. SmolLM2: the text's own token ids, as the course always cut them
        ids = tokenizer(text, return_tensors="pt").input_ids[0]
        n = ids.numel() // length
        return ids[:n * length].reshape(n, length)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    n = ids.numel() // (length - 1)
    body = ids[:n * (length - 1)].reshape(n, length - 1)
    return torch.cat([torch.full((n, 1), bos, dtype=body.dtype), body], dim=1)


def _rotation(docs: list[Document], per_doc: list[int], n: int) -> list[tuple[int, int]]:
    """(document, window) pairs, round-robin over the documents (weight w: w windows a round), until n or exhausted."""
    taken, order = [0] * len(docs), []
    while len(order) < n and any(t < c for t, c in zip(taken, per_doc)):
        for i, d in enumerate(docs):
            for _ in range(d.weight):
                if taken[i] < per_doc[i] and len(order) < n:
                    order.append((i, taken[i]))
                    taken[i] += 1
    return order


def _counts(n_windows, length, skip) -> None:
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (n_windows, length, skip)) \
            or n_windows < 1 or length < 2 or skip < 0:
        raise validate.BadInput(f"need whole numbers n_windows >= 1, length >= 2 and skip >= 0, got {n_windows!r}, "
                                f"{length!r} and {skip!r}")


def _tokenizer(tokenizer):
    """A transformers tokenizer (what models.load_model returns second)."""
    if not callable(tokenizer) or isinstance(tokenizer, type) or not hasattr(tokenizer, "eos_token_id"):
        hint = ("load_model returns (model, tokenizer): pass the second" if isinstance(tokenizer, (tuple, torch.nn.Module))
                else "load one with models.load_model()")
        raise validate.BadInput(f"tokenizer must be a transformers tokenizer, got a {type(tokenizer).__name__}: {hint}")
    return tokenizer


def token_windows(tokenizer, name: str = "test", n_windows: int = 8, length: int = 512, skip: int = 0) -> torch.Tensor:
    """n_windows non-overlapping windows of `length` tokens, drawn in turn from the split's documents (each cut from
    its start), after the first `skip` windows of that same sequence; so skip=k never repeats a window of the first k."""
    _counts(n_windows, length, skip)
    _tokenizer(tokenizer)
    docs = split_documents(name)
    cut = [_doc_windows(tokenizer, d.text, length) for d in docs]
    order = _rotation(docs, [c.shape[0] for c in cut], skip + n_windows)
    if len(order) < skip + n_windows:
        raise ValueError(
            f"text set {name!r} holds {len(order)} windows of {length} tokens, fewer than {skip} + {n_windows} = "
            f"{skip + n_windows}: ask for fewer or shorter windows"
        )
    return torch.stack([cut[i][j] for i, j in order[skip:]])


def window_sources(tokenizer, name: str = "test", n_windows: int = 8, length: int = 512, skip: int = 0) -> list[str]:
    """The document id each window of token_windows(tokenizer, name, n_windows, length, skip) comes from."""
    _counts(n_windows, length, skip)
    _tokenizer(tokenizer)
    docs = split_documents(name)
    per_doc = [_doc_windows(tokenizer, d.text, length).shape[0] for d in docs]
    return [docs[i].id for i, _ in _rotation(docs, per_doc, skip + n_windows)[skip:]]


def mixed_windows(tokenizer, names: list[str], n_windows: int = 16, length: int = 256) -> torch.Tensor:
    """Calibration drawn equally from several text sets: window i comes from names[i % len(names)]."""
    names = validate.texts(names, "names", "pass text set names, e.g. ['calib', 'python_calib']")
    n_windows = validate.integer(n_windows, "n_windows", lo=1)
    parts = [token_windows(tokenizer, n, -(-n_windows // len(names)), length) for n in names]
    return torch.stack([parts[i % len(names)][i // len(names)] for i in range(n_windows)])


MIN_CALIB_TOKENS = 256


def check_windows(windows: torch.Tensor, min_tokens: int = MIN_CALIB_TOKENS) -> torch.Tensor:
    """Refuse calibration data that is not a [n_windows, length] tensor of token ids with at least min_tokens tokens."""
    min_tokens = validate.integer(min_tokens, "min_tokens", lo=1)
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.is_floating_point() \
            or windows.is_complex() or windows.dtype == torch.bool or bool((windows < 0).any()):
        raise validate.BadInput("calibration data must be a [n_windows, length] tensor of token ids (data.token_windows)")
    if windows.numel() < min_tokens:
        raise ValueError(f"calibration data has {windows.numel()} tokens, too few to estimate activation statistics: "
                         f"use at least {min_tokens}, e.g. data.token_windows(tokenizer, 'calib', 16, 256)")
    return windows


def documents(name: str = "eval", n_docs: int = 4, min_chars: int = 2000) -> list[str]:
    """Split a text set at paragraph breaks into n_docs documents of at least min_chars characters."""
    n_docs = validate.integer(n_docs, "n_docs", lo=1)
    min_chars = validate.integer(min_chars, "min_chars", lo=1)
    docs, current = [], ""
    for paragraph in load_text(name).split("\n\n"):
        current = f"{current}\n\n{paragraph}" if current else paragraph
        if len(current) >= min_chars:
            docs.append(current)
            current = ""
            if len(docs) == n_docs:
                return docs
    raise ValueError(f"text set {name!r} holds fewer than {n_docs} documents of {min_chars} characters")


_LAST_WORD = re.compile(r"\s([A-Za-z]{4,})([.!?])$")


def cloze_items(name: str = "test", n: int = 100, context_chars: int = 600) -> list[dict]:
    """A last-word task (as LAMBADA) from a split: each paragraph-final word of 4+ letters is a target, the text
    before it (up to context_chars from a word boundary, at least half of it) its context; items drawn in turn from the documents."""
    n = validate.integer(n, "n", lo=1)
    context_chars = validate.integer(context_chars, "context_chars", lo=1, todo="a context of a few hundred characters")
    docs, per_doc = split_documents(name), []
    for d in docs:
        found = []
        for para in re.finditer(r"[^\n]+", d.text):
            m = _LAST_WORD.search(para.group())
            cut = para.start() + m.start(1) if m else 0  # where the target word starts
            if m and len(para.group().split()) >= 20 and cut >= context_chars // 2:
                context = d.text[max(0, cut - context_chars):cut]
                context = context if cut <= context_chars else context.split(" ", 1)[-1]
                found.append({"context": context.rstrip(), "target": " " + m.group(1), "doc": d.id})
        per_doc.append(found)
    order = _rotation(docs, [len(f) for f in per_doc], n)
    if len(order) < n:
        raise ValueError(f"text set {name!r} has {len(order)} cloze items, fewer than {n}: ask for fewer")
    return [per_doc[i][j] for i, j in order]
