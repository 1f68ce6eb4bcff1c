"""The training text: the King James Version of the Bible, read from Debian's `bible-kjv-text` package.

Source: Debian package `bible-kjv-text` (4.38), file /usr/lib/bible.data — the "Bible Retrieval System" text by
Chip Chapin (1989), stored in a compressed form that only the `bible` program of package `bible-kjv` reads
(`apt-get install bible-kjv`). Licence: the KJV translation (1611) is in the public domain (its copyright has
expired, as /usr/share/doc/bible-kjv-text/copyright says); the BRS data file is "provided for unrestricted use".

We ask `bible` for the whole text (Genesis 1:1 to Revelation 22:21) with a huge line width, so each verse is one
line, and parse its output: a line "Book N" starts a chapter, a line "  V text" is one verse.
"""
import dataclasses
import re
import shutil
import subprocess

CHAPTER_RE = re.compile(r"^(?P<book>[1-3]?[A-Za-z ]+?) (?P<chapter>\d+)$")
VERSE_RE = re.compile(r"^\s+(?P<verse>\d+) (?P<text>\S.*)$")
EXPECTED_VERSES = 31102  # the KJV's verse count; anything else means the parse went wrong


@dataclasses.dataclass(frozen=True)
class Verse:
    book: str
    chapter: int
    verse: int
    text: str


def parse_bible_output(raw: str) -> list[Verse]:
    """Turns the `bible` program's output into verses; raises on any line it does not understand."""
    verses: list[Verse] = []
    book, chapter = None, None
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        if m := CHAPTER_RE.match(line):
            book, chapter = m["book"], int(m["chapter"])
        elif (m := VERSE_RE.match(line)) and book is not None:
            verses.append(Verse(book, chapter, int(m["verse"]), m["text"].strip()))
        else:
            raise ValueError(f"bible output line {n}: cannot parse {line[:80]!r}")
    return verses


def read_kjv() -> list[Verse]:
    """Every verse of the KJV, in order. Needs the `bible` program (Debian package bible-kjv)."""
    exe = shutil.which("bible")
    if exe is None:
        raise SystemExit("the `bible` program is missing: apt-get install bible-kjv (it reads bible-kjv-text's data)")
    raw = subprocess.run([exe, "-l1000000", "gen1:1-rev22:21"], check=True, capture_output=True, text=True).stdout
    verses = parse_bible_output(raw)
    if len(verses) != EXPECTED_VERSES:
        raise SystemExit(f"read {len(verses)} verses from `bible`, expected {EXPECTED_VERSES}")
    first = verses[0]
    if first.text != "In the beginning God created the heaven and the earth.":
        raise SystemExit(f"Genesis 1:1 reads {first.text!r}; the text source changed")
    return verses
