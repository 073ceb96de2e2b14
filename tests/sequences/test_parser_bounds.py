"""A record past its bound is refused while it is read, never held whole, and long lines cost linear time.

The bounds are lowered (1,000 letters, 50 header characters) and the text comes in small blocks, so
what the parser read before refusing, or held while reading, is measured against bound + blocks.
"""

from __future__ import annotations

import gzip
import re
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from Bio import SeqIO
from Bio.SeqIO.QualityIO import FastqGeneralIterator

from virnucpro_trt.errors import InputFormatError
from virnucpro_trt.sequences import reader, sources
from virnucpro_trt.sequences.parsing import fasta_blocks, fastq_blocks

LETTERS, TITLE, BLOCK = 1000, 50, 512
LONG = 1 << 20  # a line 1,000 times past its bound


@pytest.fixture
def small_bounds(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Lowered bounds and blocks; counts the text the parser took from the decoder (``read``)."""
    monkeypatch.setattr(reader, "MAX_RECORD_LETTERS", LETTERS)
    monkeypatch.setattr(reader, "MAX_TITLE_CHARS", TITLE)
    monkeypatch.setattr(sources, "BLOCK_BYTES", BLOCK)
    taken = {"read": 0}
    decoded = reader.decoded_blocks

    def counted(*args: object) -> Iterator[str]:
        for text in decoded(*args):  # type: ignore[arg-type]
            taken["read"] += len(text)
            yield text

    monkeypatch.setattr(reader, "decoded_blocks", counted)
    return taken


def _refusal(path: Path) -> tuple[list[str], str]:
    """Ids read before the refusal, and its message (one line)."""
    ids: list[str] = []
    with pytest.raises(InputFormatError) as info:
        ids.extend(record.id for record in reader.read_records(path))
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 2
    return ids, message


SEQUENCE_PAST = (
    r"record 2 \(id 'long'\) is longer than the 1,000 letters one record may have \(memory is bounded"
)
WRAPPED_PAST = r"record 2 \(after record 1 \(id 'ok'\)\) is longer than the 1,000 letters"
HEADER_PAST = r"record 2 \(id 'h{60}\.\.\.'\): header longer than the 50 characters one may have"


@pytest.mark.parametrize("pack", [lambda b: b, gzip.compress], ids=["plain", "gzip"])
def test_fasta_sequence_past_its_bound_is_refused_within_a_block(tmp_path, small_bounds, pack) -> None:
    path = tmp_path / "long.fa.gz"
    path.write_bytes(pack(b">ok\nACGT\n>long one\n" + b"ACGT" * (LONG // 4) + b"\n>after\nAC\n"))
    ids, message = _refusal(path)
    assert ids == ["ok"]  # records before it are read first, as for any bad record
    assert re.search(SEQUENCE_PAST, message), message
    assert small_bounds["read"] <= LETTERS + 3 * BLOCK  # the old parser read (and held) all of it


def test_fasta_sequence_past_its_bound_in_many_lines_and_blanks(tmp_path, small_bounds) -> None:
    """Letters are counted as Biopython counts them: line ends, spaces and tabs aside."""
    path = tmp_path / "wrapped.fa"
    path.write_text(">ok\nAC\n>long\n" + "ACG T\t\n" * (LONG // 7))
    ids, message = _refusal(path)
    assert ids == ["ok"] and re.search(SEQUENCE_PAST, message), message
    assert small_bounds["read"] <= 2 * LETTERS + 3 * BLOCK


def test_fasta_header_past_its_bound_is_refused_within_a_block(tmp_path, small_bounds) -> None:
    path = tmp_path / "header.fa"
    path.write_text(">ok\nACGT\n>" + "h" * LONG + " desc\nACGT\n")
    ids, message = _refusal(path)
    assert ids == ["ok"] and re.search(HEADER_PAST, message), message
    assert small_bounds["read"] <= TITLE + 3 * BLOCK


def test_fasta_refusal_names_the_input_it_is_given(small_bounds) -> None:
    blocks = iter([">r1\n", *["A" * BLOCK] * 10])
    with pytest.raises(InputFormatError, match=r"^in\.fa: record 1 \(id 'r1'\) is longer than the 1,000"):
        list(fasta_blocks(blocks, "in.fa"))


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("@ok\nAC\n+\nII\n@long x\n" + "A" * LONG + "\n+\n" + "I" * LONG + "\n", SEQUENCE_PAST),
        ("@ok\nAC\n+\nII\n@long\nACGT\n+\n" + "I" * LONG + "\n", SEQUENCE_PAST),  # quality line
        ("@ok\nAC\n+\nII\n@" + "h" * LONG + "\nA\n+\nI\n", HEADER_PAST),
        # layouts Biopython reads: a wrapped record, in lines of 60
        ("@ok\nAC\nGT\n+\nII\nII\n@long\n" + ("A" * 60 + "\n") * (LONG // 60) + "+\nI\n", WRAPPED_PAST),
    ],
    ids=["sequence", "quality", "header", "wrapped"],
)
def test_fastq_line_or_record_past_its_bound_is_refused_early(tmp_path, small_bounds, text, pattern) -> None:
    path = tmp_path / "long.fq"
    path.write_text(text)
    ids, message = _refusal(path)
    assert ids == ([] if pattern == WRAPPED_PAST else ["ok"])  # Biopython's records come in batches
    assert message.startswith(f"{path}: ") and re.search(pattern, message), message
    if pattern == WRAPPED_PAST:  # counted over its lines: what a record and the next title may hold, twice
        assert small_bounds["read"] <= 2 * (3 * LETTERS + 2 * TITLE + 2) + 4 * BLOCK, small_bounds["read"]
    else:
        assert small_bounds["read"] <= LETTERS + 3 * BLOCK, small_bounds["read"]


@pytest.mark.parametrize("fmt", ["fasta", "fastq"])
def test_a_record_just_past_its_bound_is_still_refused_with_its_length(tmp_path, small_bounds, fmt) -> None:
    """A record that ends within a block of its bound is read whole: the reader says how long it is."""
    seq = "A" * (LETTERS + 1)
    text = (
        f">ok\nAC\n>long\n{seq}\n"
        if fmt == "fasta"
        else f"@ok\nAC\n+\nII\n@long\n{seq}\n+\n{'I' * len(seq)}\n"
    )
    path = tmp_path / "just.txt"
    path.write_text(text)
    ids, message = _refusal(path)
    assert ids == ["ok"]
    assert message.endswith(
        "record 2 (id 'long') is 1,001 letters long, more than the 1,000 one record may "
        "have (memory is bounded per record); cut it into pieces first (e.g. seqkit sliding)"
    )


# Blanks that reading drops anyway are not held past a bound, and the records are Biopython's.
BLANK_PADDED = {
    "fasta_header": ">r1 x" + " \t" * (LONG // 2) + "\nACGT\n>r2\nA\n",
    "fasta_sequence": ">r1\n"
    + ("AC" + " " * 997 + "\n" + "\n" * 200) * 400
    + ">r2\n\n"
    + " " * LONG
    + "\n>r3\nG",
    "fasta_blank_lines": ">r1\nAC\n" + "\n" * LONG + ">r2\nG\n",
    "fastq_header": "@r1 x" + " " * LONG + "\nACGT\n+\nIIII\n@r2\nA\n+\nI\n",
    "fastq_sequence": "@r1\nACGT" + " " * LONG + "\n+\nIIII\n@r2\nA\n+\nI\n",
    "fastq_plus_and_quality": "@r1\nACGT\n+" + " " * LONG + "\nIIII" + " " * LONG + "\n@r2\nA\n+\nI\n",
    "fastq_blank_line": "@r1\nACGT\n+\nIIII\n" + " " * LONG + "\n@r2\nA\n+\nI\n",
}


@pytest.mark.parametrize("case", sorted(BLANK_PADDED))
def test_blank_padding_is_read_as_biopython_reads_it_without_holding_it(
    tmp_path, small_bounds, case: str
) -> None:
    text = BLANK_PADDED[case]
    path = tmp_path / "padded.txt"
    path.write_text(text)
    if case.startswith("fasta"):
        expected = [(r.id, r.description, str(r.seq)) for r in SeqIO.parse(path, "fasta")]
    else:
        with open(path) as handle:
            expected = [(t.split(None, 1)[0], t, s) for t, s, _ in FastqGeneralIterator(handle)]
    tracemalloc.start()
    try:
        got = [(r.id, r.description, r.sequence) for r in reader.read_records(path)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == expected
    assert peak < LONG // 2, peak  # the old parser held the whole padded line or record


class _Counted(str):
    """A text block that counts the characters of every ``str + block`` made with it."""

    made = 0

    def __radd__(self, other: str) -> str:
        _Counted.made += len(other) + len(self)
        return str.__add__(other, self)


@pytest.mark.parametrize("layout", ["strict", "wrapped"])
def test_fastq_long_lines_cost_linear_time(layout: str) -> None:
    """The old cut rebuilt ``carry + block`` for every block of a long line: a 64 MiB line took 6 s,
    256 MiB 75 s. Each character is now copied a bounded number of times: counted, not timed."""
    seq = "ACGT" * (LONG // 2)  # 2 Mbp: within the bounds, read whole
    record = (
        f"@r1\n{seq}\n+\n{'I' * len(seq)}\n"
        if layout == "strict"
        else f"@r1\n{seq}\nA\n+\n{'I' * (len(seq) + 1)}\n"
    )
    text = "@r0\nAC\n+\nII\n" + record + "@r2\nA\n+\nI\n"
    size = 4096
    _Counted.made = 0
    blocks = (_Counted(text[at : at + size]) for at in range(0, len(text), size))
    seqs = [s for _, _, block_seqs in fastq_blocks(blocks, "x.fq") for s in block_seqs]
    assert seqs == ["AC", seq if layout == "strict" else seq + "A", "A"]
    assert _Counted.made <= 3 * len(text), _Counted.made  # the old parser: ~500 x len(text)


def test_the_cli_refuses_an_over_long_gzip_record_in_one_line_naming_the_file(tmp_path, small_bounds) -> None:
    """Through ``prepare``: exit 2, one line that names the input (FASTA's early refusal did not)."""
    from tests.cli.helpers import run_cli

    path = tmp_path / "long.fa.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(">ok\nACGT\n>long\n" + "A" * LONG + "\n")
    result = run_cli("prepare", str(path), "-o", str(tmp_path / "out"))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.code == 2 and len(errors) == 1 and "Traceback" not in result.stderr
    assert errors[0].startswith(f"error: {path}: record 2 (id 'long') is longer than the 1,000 letters")
    assert small_bounds["read"] < LETTERS + 4 * BLOCK and not (tmp_path / "out").exists()
