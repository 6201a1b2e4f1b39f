"""Build the embedded default's English text from Debian packages: pre-training text and the held-out text.

Run from the repository root (needs ``apt-get download`` and ``dpkg -x``; nothing is installed system-wide)::

    python3 data/build_corpus.py

It fetches three Debian packages by name into ``data/cache/debs/``, unpacks them into ``data/cache/debroot/`` and
writes:

* ``data/cache/corpus/train.txt``: the pre-training text (rebuilt, never committed), one paragraph a line:
  five Jane Austen novels (r-cran-janeaustenr, the Project Gutenberg texts, public domain; package MIT),
  the King James Bible (bible-kjv-text, decoded by the bible-kjv program; text public domain) and the WordNet 3.0
  glosses and examples of every second synset (wordnet-base, WordNet 3.0 licence, permissive).
* ``data/corpus/heldout.txt`` (committed): the opening chapters of Austen's *Persuasion* (1818, public domain),
  cut at a chapter boundary at about ``--heldout-chars`` characters. No part of *Persuasion* is in train.txt.
* ``data/cache/corpus/sources.json``: package, version and licence of every source, with character counts.

The output is deterministic: the same packages give byte-identical files.
"""
from __future__ import annotations

import argparse
import json
import re
import struct
import subprocess
import zlib
from urllib.parse import unquote
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

DATA = Path(__file__).resolve().parent
CACHE = DATA / "cache"
HELDOUT_NOVEL = "persuasion"
AUSTEN_RDB = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")


@dataclass(frozen=True)
class Source:
    """One Debian package the text comes from, and the licence of what we take from it."""

    package: str
    licence: str


SOURCES = (
    Source("r-cran-janeaustenr", "novels public domain (Project Gutenberg texts); R package MIT"),
    Source("bible-kjv-text", "King James Version text public domain (copyright expired; Crown patent in the UK)"),
    Source("bible-kjv", "GPL-2+ (the decoder program only; it is run, not shipped)"),
    Source("wordnet-base", "WordNet 3.0 licence (permissive; keep the Princeton notice)"),
)


def fetch(package: str, debs: Path, root: Path) -> str:
    """``apt-get download`` one package into ``debs`` (if absent), unpack it into ``root``; return its version."""
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob(f"{package}_*.deb")):
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True, capture_output=True)
    (deb,) = debs.glob(f"{package}_*.deb")
    subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return unquote(deb.name.split("_")[1])


def r_character_vectors(rdb: bytes) -> list[list[str]]:
    """Decode an R lazy-load database whose objects are all character vectors (janeaustenr's ``Rdata.rdb``).

    Each object is a 4-byte length followed by a zlib stream holding an R serialisation (format 3, "X\\n"):
    a 14-byte header, the native encoding name, then a STRSXP of CHARSXPs (length -1 for NA).
    """
    vectors, pos = [], 0
    while pos < len(rdb):
        inflater = zlib.decompressobj()
        blob = inflater.decompress(rdb[pos + 4 :])
        pos = len(rdb) - len(inflater.unused_data)
        if blob[:2] != b"X\n":
            raise ValueError("not an R binary serialisation")
        p = 14
        (encoding_length,) = struct.unpack(">i", blob[p : p + 4])
        p += 4 + encoding_length
        flags, length = struct.unpack(">ii", blob[p : p + 8])
        if flags & 0xFF != 16:
            raise ValueError(f"R object of type {flags & 0xFF}, expected a character vector (16)")
        p += 8
        strings = []
        for _ in range(length):
            _, size = struct.unpack(">ii", blob[p : p + 8])
            p += 8
            strings.append(blob[p : p + size].decode("utf-8") if size >= 0 else "")
            p += max(size, 0)
        vectors.append(strings)
    return vectors


def paragraphs(lines: list[str]) -> list[str]:
    """Join hard-wrapped lines into paragraphs (blank-line separated), drop Gutenberg ``_italics_`` marks."""
    out, current = [], []
    for line in lines + [""]:
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            out.append(re.sub(r"_", "", " ".join(current)))
            current = []
    return out


def austen_novels(root: Path) -> dict[str, list[str]]:
    """The six novels as paragraph lists, keyed by a lower-case title without spaces (``persuasion``, ...)."""
    novels = {}
    for lines in r_character_vectors((root / AUSTEN_RDB).read_bytes()):
        key = re.sub(r"[^a-z]", "", lines[0].lower())
        novels[key] = paragraphs(lines)
    return novels


def kjv_chapters(root: Path) -> list[str]:
    """The King James Bible, one chapter a paragraph, verse numbers and chapter headings removed."""
    text = subprocess.run(
        [str(root / "usr/bin/bible"), "-p", str(root / "usr/lib"), "gen1:1-rev22:21"],
        check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL,
    ).stdout
    chapters = re.split(r"\n\n[1-3]? ?[A-Z][A-Za-z ]+ \d+\n\n", "\n\n" + text)
    return [re.sub(r"\s+", " ", re.sub(r"(^|\n) *\d+ ", " ", c)).strip() for c in chapters if c.strip()]


def wordnet_glosses(root: Path, stride: int) -> list[str]:
    """Every ``stride``-th WordNet synset, one a line: ``lemma, lemma: gloss; "example"`` (WordNet's wording)."""
    lines = []
    for name in WORDNET_FILES:
        with (root / "usr/share/wordnet" / name).open(encoding="utf-8") as handle:
            for row in handle:
                if row.startswith("  ") or " | " not in row:
                    continue
                fields, gloss = row.split(" | ", 1)
                parts = fields.split()
                words = [parts[4 + 2 * i].replace("_", " ") for i in range(int(parts[3], 16))]
                words = [re.sub(r"\(\w+\)$", "", w) for w in words]
                lines.append(f"{', '.join(words)}: {gloss.strip()}")
    return lines[::stride]


def heldout_chapters(novel: list[str], max_chars: int) -> list[str]:
    """The novel's opening chapters, cut at the last chapter heading before ``max_chars`` characters."""
    starts = [i for i, p in enumerate(novel) if re.fullmatch(r"Chapter \d+", p)]
    size, cut = 0, starts[1]
    for i, p in enumerate(novel):
        if i in starts and size > 0:
            if size > max_chars:
                break
            cut = i
        size += len(p) + 1
    return novel[starts[0] : cut]


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def build(heldout_chars: int, wordnet_stride: int) -> dict:
    """Fetch, extract, clean and split; return the provenance record written to ``sources.json``."""
    debs, root = CACHE / "debs", CACHE / "debroot"
    versions = {s.package: fetch(s.package, debs, root) for s in tqdm(SOURCES, desc="debian packages")}
    novels = austen_novels(root)
    parts = {f"austen/{k}": v for k, v in sorted(novels.items()) if k != HELDOUT_NOVEL}
    parts["kjv"] = kjv_chapters(root)
    parts["wordnet"] = wordnet_glosses(root, wordnet_stride)
    train = [p for part in parts.values() for p in part]
    heldout = heldout_chapters(novels[HELDOUT_NOVEL], heldout_chars)
    write_lines(CACHE / "corpus" / "train.txt", train)
    write_lines(DATA / "corpus" / "heldout.txt", heldout)
    record = {
        "sources": [{"package": s.package, "version": versions[s.package], "licence": s.licence} for s in SOURCES],
        "train_chars": {k: sum(len(p) + 1 for p in v) for k, v in parts.items()},
        "heldout": {"text": f"austen/{HELDOUT_NOVEL}", "paragraphs": len(heldout),
                    "chars": sum(len(p) + 1 for p in heldout)},
    }
    (CACHE / "corpus" / "sources.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heldout-chars", type=int, default=250_000,
                        help="approximate size of data/corpus/heldout.txt (cut at a chapter boundary)")
    parser.add_argument("--wordnet-stride", type=int, default=2,
                        help="keep every n-th WordNet synset, so the glosses do not outweigh the prose")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(json.dumps(build(args.heldout_chars, args.wordnet_stride), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
