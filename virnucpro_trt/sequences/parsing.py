"""FASTA and FASTQ parsing in blocks, with Biopython's semantics (upstream read input through it).

Record by record Python parsing costs more than all of the translation, so both formats are cut in
bulk with ``str`` methods. FASTA follows upstream's ``SeqIO.parse(..., "fasta")`` as current Biopython
reads it (``FastaIterator``; 1.88 tested): id = first whitespace-separated word of the title, sequence
lines joined with every space, tab and carriage return removed (``SimpleFastaParser`` keeps tabs).
Strict 4-line FASTQ is cut in bulk and anything else goes through Biopython's ``FastqGeneralIterator``
itself. Each block comes with a function that re-reads it by the
reference rules, for the rare block where the bulk cut and the reference could differ (whitespace
inside sequences), which always shows up as a validation failure first.

Memory is bounded per record, also while one is being read: the reader's bounds (``MAX_RECORD_LETTERS``,
``MAX_TITLE_CHARS``) are checked on the unfinished last record or line as its text arrives. One that
goes on a block past its bound is refused there, never held whole (a gzip of one 2 GiB line is 9 MB);
one that ends within that block is left to the reader, which then says how long it is. A long line is
kept in pieces and joined once (linear time). Blanks that reading drops anyway (a header's or FASTQ
line's trailing ones, blanks and line ends in FASTA sequence) are not kept past a bound.
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


def _limits() -> tuple[int, int]:
    """The letters and header characters one record may have: the reader's bounds, read when parsing
    starts (tests lower them)."""
    from virnucpro_trt.sequences import reader  # here, not at import time: the reader imports this module

    return reader.MAX_RECORD_LETTERS, reader.MAX_TITLE_CHARS


class _TooLong(Exception):
    """An unfinished record passed a bound (``header``: its title's); the caller names the record."""

    def __init__(self, header: bool, title: str | None) -> None:
        super().__init__(header, title)
        self.header, self.title = header, title


def _too_long(prefix: str, number: int, over: _TooLong, after: str = "") -> InputFormatError:
    """The reader's refusal of a record past a bound, for one refused before its end was read: how long
    it is is not known then, only that it is past the bound."""
    max_letters, max_title = _limits()
    rid = first_id(over.title) if over.title else ""
    if over.header:
        shown = rid if len(rid) <= 60 else rid[:60] + "..."
        return InputFormatError(
            f"{prefix}{record_label(number, shown or None)}{after}: header longer than the {max_title:,} "
            "characters one may have"
        )
    return InputFormatError(
        f"{prefix}{record_label(number, rid or None)}{after} is longer than the {max_letters:,} letters one "
        "record may have (memory is bounded per record); cut it into pieces first (e.g. seqkit sliding)"
    )


class _Line:
    """The unfinished last line of the text read so far, kept in pieces and joined once, when it ends.

    ``content`` is its length up to its last non-blank character: what ``rstrip`` leaves, which is all
    that any reader of such a line (a header, a FASTQ line) keeps. Once more than ``bound`` blanks
    follow the content, they are no longer kept (``padded``; one stays, standing for them all): without
    a later non-blank character they were going to be stripped, and with one the line's content passes
    ``bound``, which :meth:`add` reports (its owner then refuses at once: the blanks are gone).
    """

    __slots__ = ("bound", "content", "padded", "pieces", "raw")

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.pieces: list[str] = []
        self.raw = self.content = 0
        self.padded = False

    def add(self, piece: str) -> bool:
        """Append ``piece`` (no line end in it); True when the line's content is past ``bound``."""
        if not piece:
            return self.content > self.bound
        kept = len(piece.rstrip())
        if kept:
            self.content = self.raw + kept
        self.raw += len(piece)
        if not self.padded:
            self.pieces.append(piece)
            if self.raw - self.content > self.bound >= self.content:
                self.pieces = ["".join(self.pieces)[: self.content + 1]]
                self.padded = True
        return self.content > self.bound

    def text(self) -> str:
        return "".join(self.pieces)


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


class _FastaRecord:
    """The unfinished last FASTA record (its text from the '>'), kept within bounds as it arrives.

    Refused (:class:`_TooLong`) once its title is longer than ``max_title`` or its sequence has more than
    ``max_letters`` letters (counted as Biopython counts them: spaces, tabs, carriage returns and line
    ends aside) and it still goes on past the block where that became known: one that ends there is
    refused by the reader, which can then say how long it is. Blanks that reading it drops are not kept
    past a bound: a header's trailing ones (see :class:`_Line`), and a sequence's once they make up most
    of what is held (:meth:`_squeeze`).
    """

    def __init__(self, max_letters: int, max_title: int) -> None:
        self.max_letters = max_letters
        self.pieces: list[str] = []
        self.header = _Line(max_title + 1)  # the title line, '>' included
        self.in_header = True
        self.held = self.letters = 0  # characters held; sequence letters counted so far
        # not counted yet (only once the raw text could be past the bound): `uncounted` characters, from
        # pieces[counted] at `start` on
        self.counted = self.start = self.uncounted = 0
        self.most = max_letters + max_title + 2  # what a record that can be read needs, blanks aside
        self.squeeze_at = 2 * self.most
        self.over: _TooLong | None = None  # past a bound: refused if it goes on

    def ends_line(self) -> bool:
        """Whether the text so far ends with a line end, so that a '>' next starts a record."""
        return bool(self.pieces) and self.pieces[-1].endswith("\n")

    def text(self) -> str:
        """The record's text so far, squeezed (:meth:`_squeeze`) if it holds more than it may need."""
        if self.held > self.most and not self.in_header:  # blank lines in the millions: one line
            self._squeeze()
        return "".join(self.pieces)

    def title(self) -> str:
        parts = []
        for piece in self.pieces:
            end = piece.find("\n")
            parts.append(piece if end < 0 else piece[:end])
            if end >= 0:
                break
        return "".join(parts)[1:].rstrip()

    def add(self, text: str) -> None:
        """Append the record's next text (the first starts with its '>'); refuse it past a bound."""
        if not text:
            return
        if self.over is not None:
            raise self.over
        self.pieces.append(text)
        self.held += len(text)
        start = 0
        if self.in_header:
            end = text.find("\n")
            if self.header.add(text if end < 0 else text[:end]):
                self.over = _TooLong(True, self.title())
                return
            if end < 0:
                if self.header.padded:
                    self.pieces = list(self.header.pieces)
                    self.held = len(self.pieces[0])
                return
            self.in_header = False
            start = end + 1
        if not self.uncounted:
            self.counted, self.start = len(self.pieces) - 1, start
        self.uncounted += len(text) - start
        if self.letters + self.uncounted > self.max_letters:  # the raw text could be past it: count
            for piece in self.pieces[self.counted :]:
                self.letters += len(piece) - self.start - sum(piece.count(b, self.start) for b in " \t\r\n")
                self.start = 0
            self.uncounted = 0
            if self.letters > self.max_letters:
                self.over = _TooLong(False, self.title())
                return
        if self.held > self.squeeze_at:
            self._squeeze()

    def header_blanks(self, block: str) -> str:
        """The rest of ``block`` from the line end of a header padded with blanks (see :class:`_Line`),
        which are not kept ("" if the line goes on past ``block``); refused at anything else."""
        end = block.find("\n")
        if self.header.add(block if end < 0 else block[:end]):
            raise _TooLong(True, self.title())
        return "" if end < 0 else block[end:]

    def _squeeze(self) -> None:
        """Keep the sequence without its blanks and line ends (Biopython drops them all), so that what is
        held is within twice the bounds, and a line end where there was one, so that the next '>' is
        read alike; a blank stands first where a '>' (an invalid letter) would start a line. A piece at a
        time: no copy of the whole is made."""
        at = next(i for i, piece in enumerate(self.pieces) if "\n" in piece)
        end = self.pieces[at].index("\n") + 1
        header = "".join([*self.pieces[:at], self.pieces[at][:end]])
        body = [self.pieces[at][end:], *self.pieces[at + 1 :]]
        letters = "".join([piece.translate(_FASTA_DROPPED) for piece in body])
        ends_line = self.ends_line()
        guard = letters.startswith(">") or (not letters and any(body) and not ends_line)
        self.pieces = [header + " " * guard + letters + "\n" * ends_line]
        self.held = len(self.pieces[0])
        self.letters, self.uncounted = len(letters), 0
        self.squeeze_at = max(self.squeeze_at, 2 * self.held)


def _fasta_texts(blocks: Iterable[str], max_letters: int, max_title: int) -> Iterator[str]:
    """Regroup text blocks into runs of complete records, each starting with '>'.

    The unfinished last record is kept in pieces so a multi-megabase record costs linear, not quadratic,
    time, and refused (:class:`_TooLong`) when it goes on past the block where it passed a bound.
    """
    record = _FastaRecord(max_letters, max_title)
    started = False
    for block in blocks:
        if not started:  # only blank lines (and a BOM) precede the first '>': sniff_format checked that
            at = block.find(">")
            if at < 0:
                continue
            block, started = block[at:], True
        if record.in_header and record.header.padded:
            block = record.header_blanks(block)
            if not block:
                continue
        cut = block.rfind("\n>")
        if cut >= 0:
            split_at = cut + 1  # index in block of the '>' that starts the last record
        elif block.startswith(">") and record.ends_line():  # a '\n' ending the previous block
            split_at = 0
        else:
            record.add(block)
            continue
        complete = record.text() + block[:split_at]
        record = _FastaRecord(max_letters, max_title)
        yield complete
        record.add(block[split_at:])
    if record.pieces:
        yield record.text()


def fasta_blocks(texts: Iterable[str], name: str | None = None) -> Iterator[Block]:
    """Blocks of FASTA records from decoded text blocks (leading blank lines allowed).

    A record that goes on past the block where it passed a bound is refused there
    (:class:`InputFormatError` naming it, and the input as ``name`` if given), before its end is read.
    """
    max_letters, max_title = _limits()
    done = 0
    try:
        for text in _fasta_texts(texts, max_letters, max_title):
            titles, seqs = _fasta_entries(text, exact=False)
            yield partial_call(_fasta_entries, text, True), titles, seqs
            done += len(titles)
    except _TooLong as over:
        raise _too_long(f"{name}: " if name else "", done + 1, over) from None


class _BlockLines:
    """Minimal text handle over text blocks, for Biopython's ``FastqGeneralIterator``.

    Bounded as the bulk cut is (:class:`_TooLong`): a line whose content passes ``line_cap``, or more
    than ``record_cap`` characters of content (each line's up to its last non-blank character, what
    Biopython keeps) handed out since the caller last called :meth:`new_record`. Counted a block at a
    time: a new block is cut only once every line before it was handed out, so the blocks cut before
    the last one since then hold nothing but the record being read and the next title. Lines are
    counted whole (``raw``, at no cost) up to ``record_cap``, and only then without their blanks.
    """

    def __init__(self, blocks: Iterable[str], line_cap: int, record_cap: int) -> None:
        self._blocks = iter(blocks)
        self._lines: deque[str] = deque()
        self._line_cap, self._record_cap = line_cap, record_cap
        self._partial = _Line(line_cap)
        self._raw = self._content = 0

    def new_record(self) -> None:
        self._raw = self._content = 0

    def read(self, size: int = -1) -> str:
        if size == 0:  # Biopython's text-mode probe
            return ""
        raise io.UnsupportedOperation("read")

    def readline(self) -> str:
        while not self._lines:
            block = next(self._blocks, None)
            if block is None:
                line, self._partial = self._partial.text(), _Line(self._line_cap)
                return line
            end = block.find("\n")
            if end < 0:  # the line goes on: kept in pieces, joined once
                self._grow(block)
                continue
            if self._partial.padded:
                self._grow(block[:end])
                block = block[end:]
            text = self._partial.text() + block
            lines = text.split("\n")
            self._partial = _Line(self._line_cap)
            self._grow(lines[-1])
            if self._content > self._record_cap:
                raise _TooLong(False, None)
            if self._raw <= self._record_cap:
                self._raw += len(text) - len(lines.pop()) - len(lines)  # lines and their line ends
            else:
                lines.pop()
                self._content += sum(map(len, map(str.rstrip, lines)))
            self._lines.extend(line + "\n" for line in lines)
        return self._lines.popleft()

    def _grow(self, piece: str) -> None:
        """Add to the unfinished line; refused once it goes on past the block where it passed its bound."""
        line = self._partial
        going_on = bool(piece) and line.content > line.bound
        if going_on or (line.add(piece) and line.padded):
            raise _TooLong(False, None)

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

    max_letters, max_title = _limits()
    line_cap = max(max_letters, max_title + 1)
    source = _BlockLines(blocks, line_cap, 2 * (max_letters + max_title + 1) + line_cap)
    records = FastqGeneralIterator(source)
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
        except _TooLong as over:  # a record at most this long, and the next title, cannot be read
            after = f" (after {record_label(count, last_id)})" if count else ""
            raise _too_long(f"{name}: ", count + 1, over, after) from None
        source.new_record()
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


class _FastqCarry:
    """The unfinished record that :func:`fastq_blocks` carries to the next block: its complete lines
    (fewer than four, each with its line end) and its unfinished last line, refused (:class:`_TooLong`)
    when it goes on past the block where it passed its bound: ``title_cap`` for the record's first line
    when it starts with '@' (its title line), else ``line_cap``, more than any line of a record that can
    be read has. A line that ends in the next block is left to the reader or Biopython to refuse."""

    def __init__(self, lines: list[str], partial: str, title_cap: int, line_cap: int) -> None:
        self.head = "".join(line + "\n" for line in lines)
        self.first = next((line for line in lines if line and not line.isspace()), None)
        self.title_cap, self.line_cap = title_cap, line_cap
        self.tail = _Line(line_cap)
        self.titled = self.over = self.grown = False
        self._add(partial)

    def add(self, piece: str) -> None:
        """Add a block without a line end (or the rest of a padded line) to the unfinished line."""
        self.grown = self.grown or bool(piece)
        self._add(piece)

    def _add(self, piece: str) -> None:
        tail = self.tail
        if not tail.pieces and piece:
            self.titled = self.first is None and piece[0] == "@"
            tail.bound = self.title_cap if self.titled else self.line_cap
        going_on = bool(piece) and self.over
        if going_on or (tail.add(piece) and tail.padded):
            raise self._refusal()
        self.over = tail.content > tail.bound

    def _refusal(self) -> _TooLong:
        if self.titled:
            return _TooLong(True, self.tail.text()[1:])
        if self.first is not None and self.first[0] == "@":  # the title line, checked first (as the reader)
            title = self.first[1:].rstrip()
            return _TooLong(len(title) > self.title_cap - 1, title)
        return _TooLong(False, None)

    def text(self) -> str:
        return self.head + self.tail.text()


def fastq_blocks(
    texts: Iterable[str], name: str
) -> Iterator[tuple[Callable[[], tuple[list[str], list[str]]] | None, list[str], list[str]]]:
    """Blocks of FASTQ records as ``(exact re-parse or None, titles, sequences)``.

    Strict 4-line FASTQ (nearly all real files) is cut in bulk; from the first block that is not,
    the rest of the input goes through Biopython's parser, which then also reports any error. Blank
    lines where a record starts are skipped: Biopython folds them into the previous record's
    (already complete) quality, where they add nothing. A line is kept in pieces until it ends (linear
    time), and a record with a line past its bound is refused as soon as that is known.
    """
    max_letters, max_title = _limits()
    caps = (max_title + 1, max(max_letters, max_title + 1))
    texts = iter(texts)
    carry, done, last_id = _FastqCarry([], "", *caps), 0, None
    try:
        for block in texts:
            end = block.find("\n")
            if end < 0:  # the last line goes on
                carry.add(block)
                continue
            if carry.tail.padded:
                carry.add(block[:end])
                block = block[end:]
            text = carry.text() + block
            content = len(text) - len(text.lstrip())
            if content == len(text):  # nothing but blank lines so far
                carry = _FastqCarry([], text[text.rfind("\n") + 1 :], *caps)
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
            carry = _FastqCarry(lines[usable:], partial, *caps)
    except _TooLong as over:
        raise _too_long(f"{name}: ", done + 1, over) from None
    text = carry.text()
    if carry.grown:  # blank lines before it are skipped, as when such a block was cut like the others
        content = len(text) - len(text.lstrip())
        text = text[text.rfind("\n", 0, content) + 1 :]
    if text.strip():  # an incomplete last record (Biopython names the problem) or stray lines
        for titles, seqs in _bio_fastq([text], name, done, last_id):
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
