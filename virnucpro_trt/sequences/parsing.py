"""FASTA and FASTQ parsing in blocks, with Biopython's semantics (upstream read input through it).

Record by record Python parsing costs more than all of the translation, so both formats are cut in
bulk with ``str`` methods. FASTA follows upstream's ``SeqIO.parse(..., "fasta")`` as current Biopython
reads it (``FastaIterator``; 1.88 tested): id = first whitespace-separated word of the title, sequence
lines joined with every space, tab and carriage return removed (``SimpleFastaParser`` keeps tabs).
Strict 4-line FASTQ is cut in bulk and anything else goes through Biopython's ``FastqGeneralIterator``
itself. Each block comes with a function that re-reads it by the
reference rules, for the rare block where the bulk cut and the reference could differ (whitespace
inside sequences), which always shows up as a validation failure first.
"""

from __future__ import annotations

import io
import operator
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from functools import partial as partial_call
from itertools import chain

from virnucpro_trt.errors import InputFormatError

__all__ = ["Block", "fasta_blocks", "fastq_blocks", "first_id", "record_label"]

#: ``(exact re-parse or None, titles, sequences)``: one block of parsed records.
Block = tuple[Callable[[], tuple[list[str], list[str]]] | None, list[str], list[str]]
_FASTQ_BLOCK_RECORDS = 4096


def record_label(number: int, rid: str | None) -> str:
    """How messages name a record: ``record 3 (id 'x')``, 1-based."""
    return f"record {number}" + (f" (id {rid!r})" if rid is not None else "")


def first_id(title: str) -> str:
    """Biopython's record id: the first whitespace-separated word of the title ("" if none)."""
    return title.split(None, 1)[0] if title else ""


def _fasta_entries(text: str, exact: bool) -> tuple[list[str], list[str]]:
    """Split complete FASTA text (starting at a '>') into parallel ``(titles, sequences)`` lists.

    The fast forms just join a record's lines. The ``exact`` form applies Biopython's rules (drop every
    space, tab and carriage return). They differ only when a sequence line contains such whitespace,
    and then the fast form fails alphabet validation, so the exact form, which is slower, runs only for
    such blocks.
    """
    if not exact:
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
        titles = lines[0::2]
        # Strict 2-line FASTA (the usual layout): every even line a header and no others.
        seqs = lines[1::2]
        if len(seqs) == len(titles) and all(map(_is_header, titles)) and not any(map(_is_header, seqs)):
            return [t[1:].rstrip() for t in titles], seqs
    titles, seqs = [], []
    for part in text[1:].split("\n>"):
        title, _, body = part.partition("\n")
        titles.append(title.rstrip())
        if exact:
            seqs.append(body.translate(_FASTA_DROPPED))
        else:
            seqs.append(body.replace("\n", ""))
    return titles, seqs


_is_header = operator.methodcaller("startswith", ">")
#: What Biopython's ``FastaIterator`` removes from sequence lines: ``translate(None, b" \t\r\n")``.
_FASTA_DROPPED = str.maketrans("", "", " \t\r\n")


def _fasta_texts(blocks: Iterable[str]) -> Iterator[str]:
    """Regroup text blocks into runs of complete records, each starting with '>'.

    Pending text is kept as a list so a multi-megabase record costs linear, not quadratic, time.
    """
    pending: list[str] = []
    started = False
    for block in blocks:
        if not started:  # only blank lines (and a BOM) precede the first '>': sniff_format checked that
            at = block.find(">")
            if at < 0:
                continue
            block, started = block[at:], True
        tail = pending[-1][-1:] if pending else ""  # a '\n' ending the previous block may precede '>'
        probe, probe_from = tail + block, len(tail)
        cut = probe.rfind("\n>")
        if cut < 0:
            pending.append(block)
            continue
        split_at = cut + 1 - probe_from  # index in block of the '>' that starts the last record
        complete = "".join(pending) + block[:split_at]
        pending = [block[split_at:]]
        yield complete
    if pending:
        yield "".join(pending)


def fasta_blocks(texts: Iterable[str]) -> Iterator[Block]:
    """Blocks of FASTA records from decoded text blocks (leading blank lines allowed)."""
    for text in _fasta_texts(texts):
        yield partial_call(_fasta_entries, text, True), *_fasta_entries(text, exact=False)


class _BlockLines:
    """Minimal text handle over text blocks, for Biopython's ``FastqGeneralIterator``."""

    def __init__(self, blocks: Iterable[str]) -> None:
        self._blocks = iter(blocks)
        self._lines: deque[str] = deque()
        self._partial = ""

    def read(self, size: int = -1) -> str:
        if size == 0:  # Biopython's text-mode probe
            return ""
        raise io.UnsupportedOperation("read")

    def readline(self) -> str:
        while not self._lines:
            block = next(self._blocks, None)
            if block is None:
                line, self._partial = self._partial, ""
                return line
            lines = (self._partial + block).split("\n")
            self._partial = lines.pop()
            self._lines.extend(line + "\n" for line in lines)
        return self._lines.popleft()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


def _bio_fastq(
    blocks: Iterable[str], name: str, done: int, last_id: str | None = None
) -> Iterator[tuple[list[str], list[str]]]:
    """FASTQ text through ``FastqGeneralIterator`` itself (any layout); ``done`` records, the last
    with id ``last_id``, were already read (for the record numbers in messages)."""
    from Bio.SeqIO.QualityIO import FastqGeneralIterator  # lazy: only FASTQ needs Biopython

    records = FastqGeneralIterator(_BlockLines(blocks))
    titles: list[str] = []
    seqs: list[str] = []
    count = done
    while True:
        try:
            title, seq, _quality = next(records)
        except StopIteration:
            break
        except ValueError as exc:
            after = f" (after {record_label(count, last_id)})" if count else ""
            raise InputFormatError(
                f"{name}: {record_label(count + 1, None)}{after}: bad FASTQ: {exc}"
            ) from None
        count += 1
        last_id = first_id(title)
        titles.append(title)
        seqs.append(seq)
        if len(titles) >= _FASTQ_BLOCK_RECORDS:
            yield titles, seqs
            titles, seqs = [], []
    if titles:
        yield titles, seqs


def _four_line(lines: list[str]) -> tuple[list[str], list[str]] | None:
    """Titles and sequences of strict 4-line FASTQ (``@title / seq / + / quality``), else None.

    Accepted only where Biopython would read exactly the same records: every first line starts with
    '@', every third is '+' (or '+' and the same title), every quality is as long as its sequence.
    A record in any other layout shifts the 4-line grid, which these checks always catch.
    """
    heads, seqs, plus, quals = lines[0::4], lines[1::4], lines[2::4], lines[3::4]
    if not all(map(_is_fastq_title, heads)) or list(map(len, seqs)) != list(map(len, quals)):
        return None
    titles = [head[1:].rstrip() for head in heads]
    if plus.count("+") != len(plus) and not all(
        p == "+" or p[1:].rstrip() == t for p, t in zip(plus, titles, strict=True)
    ):
        return None
    return titles, seqs


_is_fastq_title = operator.methodcaller("startswith", "@")


def fastq_blocks(
    texts: Iterable[str], name: str
) -> Iterator[tuple[Callable[[], tuple[list[str], list[str]]] | None, list[str], list[str]]]:
    """Blocks of FASTQ records as ``(exact re-parse or None, titles, sequences)``.

    Strict 4-line FASTQ (nearly all real files) is cut in bulk; from the first block that is not,
    the rest of the input goes through Biopython's parser, which then also reports any error. Blank
    lines where a record starts are skipped: Biopython folds them into the previous record's
    (already complete) quality, where they add nothing.
    """
    texts = iter(texts)
    carry, done, last_id = "", 0, None
    for block in texts:
        text = carry + block
        content = len(text) - len(text.lstrip())
        if content == len(text):  # nothing but blank lines so far
            carry = text
            continue
        text = text[text.rfind("\n", 0, content) + 1 :]
        lines = text.split("\n")
        partial = lines.pop()  # the unfinished last line ("" if the text ends with a newline)
        usable = len(lines) - len(lines) % 4
        parsed = _four_line(lines[:usable])
        if parsed is None:
            rest = "".join(line + "\n" for line in lines) + partial
            for titles, seqs in _bio_fastq(chain([rest], texts), name, done, last_id):
                yield None, titles, seqs
            return
        titles, seqs = parsed
        if titles:
            yield partial_call(_bio_exact, lines[:usable], name, done, last_id), titles, seqs
            done, last_id = done + len(titles), first_id(titles[-1])
        carry = "\n".join([*lines[usable:], partial])
    if carry.strip():  # an incomplete last record (Biopython names the problem) or stray lines
        for titles, seqs in _bio_fastq([carry], name, done, last_id):
            yield None, titles, seqs


def _bio_exact(lines: list[str], name: str, done: int, last_id: str | None) -> tuple[list[str], list[str]]:
    """Biopython's reading of one 4-line block: used when a bulk-cut sequence fails validation
    (trailing whitespace, spaces...), so messages and edge cases follow Biopython exactly."""
    titles: list[str] = []
    seqs: list[str] = []
    for more_titles, more_seqs in _bio_fastq(["\n".join(lines) + "\n"], name, done, last_id):
        titles += more_titles
        seqs += more_seqs
    return titles, seqs
