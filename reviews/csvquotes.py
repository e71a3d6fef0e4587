"""Runaway quotes in a CSV/TSV review table: a double quote that opens a text and never closes.

Python's ``csv`` reader (like Excel) lets a quoted text run over line ends, which is how multi-line
reviews are stored. A stray quote (``"Great`` with no closing quote) therefore makes the reader swallow the
lines after it into one text: to the end of the file, or up to the next quote, which may realign the fields
so that nothing looks wrong. ``csv`` cannot tell a stray quote from a multi-line review; this module tells
what it can, from how the swallowed lines look (our own rule, as no CSV library checks this):

* a text that is still open at the end of the file is always a runaway quote (Excel closes every quote);
  the caller refuses it, as it refuses a record whose fields no longer line up after a quote;
* a text whose inner lines (neither its first nor its last) read as rows of the file *may* be one: a line
  that splits into the header's number of fields whose values are like the values the single-line rows
  hold in each column (:func:`column_kinds`). A review's own lines can look the same (``Graphics, 9/10``
  in a review of a file of many games), so the caller only warns, naming the lines, and keeps the text.
  A line that ends otherwise than the rows do is a cell's own line, never a swallowed row: Excel and Google
  Sheets end rows with CRLF and a cell's lines with LF;
* in a table of one column every line reads as a row (:func:`one_column_rows`), so there the caller warns only
  where multi-line texts are rare in the file, and never of a text whose blank line makes it paragraphs.
"""

from __future__ import annotations

import csv
import io
import re

#: how many single-line rows :func:`column_kinds` learns from (a sample keeps a big file fast; a value
#: first seen after it can only make a swallowed row look less like a row, never a review look like one)
SAMPLE = 5000
_NUMBER = re.compile(r"[-+]?\d[\d\s.,:%']*")
_SHORT = re.compile(r"[\w\d][^\n]{0,29}")


def opening_line(lines: list[str], start: int) -> int | None:
    """The line number on which a quoted text that runs over a line end opens, for a record whose
    ``lines`` begin on line ``start``; ``None`` when every quote closes on its own line. Quotes are
    counted per line (a doubled ``""`` counts two, so it keeps the parity)."""
    open_ = False
    for i, line in enumerate(lines[:-1]):
        open_ ^= line.count('"') % 2 == 1
        if open_:
            return start + i
    return None


def ends_open(lines: list[str], delim: str) -> bool:
    """Whether the CSV ``lines`` end inside a quoted text: the strict reader says "unexpected end of data"
    where the lenient one reads to the end of the file."""
    try:
        for _ in csv.reader(io.StringIO("\n".join(lines), newline=""), delimiter=delim, strict=True):
            pass
    except csv.Error as e:
        return "unexpected end of data" in str(e)
    return False


_QUOTE = re.compile('"')


def reopening_line(lines: list[str], delim: str) -> int | None:
    """The index in ``lines`` (one record's lines, as the lenient reader reads them) of the line where a quote that
    opens a field (at the line's start or after a separator) closes instead a quoted text that opened on an earlier
    line, with more text right after it: ``440,"never closed`` then ``441,"next review"`` (the second row's text
    taken into the first, its app id too); ``None`` when there is none. A quote inside a field that closes a text
    with text after it (``closes" here``) may be the stray quote's own closing one: only :func:`swallowed_rows` warns
    of it."""
    quoted, since = False, 0
    for i, line in enumerate(lines):
        doubled = -1  # the second quote of a doubled one ("") in a quoted text
        for j in (m.start() for m in _QUOTE.finditer(line)):
            if j == doubled:
                continue
            start = j == 0 or line[j - 1] == delim
            after = line[j + 1:j + 2]
            if not quoted:
                quoted, since = start, i
            elif after == '"':
                doubled = j + 1
            else:
                if after not in ("", delim) and start and since < i:
                    return i
                quoted = False
    return None


def _kind(value: str) -> str:
    """``"empty"``, ``"number"`` (``12,5``, ``367520``, ``1.204,5``), ``"short"`` (up to 30 characters
    starting with a letter or digit: a game name, a verdict, a language) or ``"text"``."""
    v = value.strip()
    if not v:
        return "empty"
    if _NUMBER.fullmatch(v):
        return "number"
    return "short" if _SHORT.fullmatch(v) else "text"


def column_kinds(rows: list[list[str]]) -> list[tuple[set[str], set[str] | None]]:
    """Per column of the single-line ``rows`` (values in header order): the kinds of value it holds, and
    its values when they repeat (at most half as many distinct values as rows, over 4 rows or more),
    else ``None``."""
    out = []
    for col in zip(*rows):
        values = {v.strip() for v in col}
        out.append(({_kind(v) for v in col}, values if len(col) >= 4 and len(values) * 2 <= len(col) else None))
    return out


def looks_like_row(line: str, delim: str, kinds: list[tuple[set[str], set[str] | None]]) -> bool:
    """Whether ``line`` read alone splits into one field per column of ``kinds`` (from :func:`column_kinds`),
    each like that column's values (a column with no kinds takes anything)."""
    fields = next(csv.reader([line], delimiter=delim), [])
    if len(fields) != len(kinds) or len(kinds) < 2:
        return False
    for v, (seen, values) in zip(fields, kinds):
        if not seen:
            continue
        if _kind(v) not in seen or (values is not None and v.strip() not in values):
            return False
    return True


def swallowed_rows(lines: list[str], start: int, delim: str, kinds: list[tuple[set[str], set[str] | None]]) -> list[int]:
    """The line numbers of a record's inner lines (``lines`` begin on line ``start``; its first and last
    line left out) that look like rows (:func:`looks_like_row`); ``[]`` when none does."""
    return [start + 1 + i for i, line in enumerate(lines[1:-1]) if looks_like_row(line, delim, kinds)]


def one_column_rows(lines: list[str], start: int) -> list[int]:
    """The line numbers of a record's inner lines in a table of one column, where each reads as a row of its own
    (``lines`` begin on line ``start``; the blank lines before the record, which ``csv`` skips, and its first and last
    line left out); ``[]`` when a blank line among them makes the text a review's paragraphs."""
    lead = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    inner = lines[lead + 1:-1]
    if any(not line.strip() for line in inner):
        return []
    return [start + lead + 1 + i for i in range(len(inner))]
