"""Input reading: by content (compression, format), Biopython's FASTA semantics, one-line errors."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from Bio.SeqIO.FastaIO import SimpleFastaParser
from Bio.SeqIO.QualityIO import FastqGeneralIterator

from virnucpro_trt.errors import InputFormatError, UserError
from virnucpro_trt.files.digests import sha256_file
from virnucpro_trt.sequences import sources
from virnucpro_trt.sequences.reader import SeqRecord, judge_dna_letters, read_records

FASTA = ">r1 first read\nACGTACGTNN\nacgt\n>r2\nRYSWKMBDHVU\n>r3\tdesc\n\n"
EXPECTED = [
    SeqRecord(0, "r1", "r1 first read", "ACGTACGTNNacgt"),
    SeqRecord(1, "r2", "r2", "RYSWKMBDHVU"),
    SeqRecord(2, "r3", "r3\tdesc", ""),
]


def _write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _error(path: Path | str, alphabet: str = "dna") -> str:
    with pytest.raises(InputFormatError) as info:
        list(read_records(path, alphabet))  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and message
    assert isinstance(info.value, UserError) and info.value.exit_code == 2
    return message


@pytest.mark.parametrize(
    ("name", "pack"),
    [
        ("plain.txt", lambda b: b),
        ("reads.fa.gz", gzip.compress),
        ("no_suffix", bz2.compress),  # the name says nothing: content decides
        ("reads.fa", lzma.compress),  # the name lies
        ("crlf.fa", lambda b: b.replace(b"\n", b"\r\n")),
        ("cr.fa", lambda b: b.replace(b"\n", b"\r")),
        ("bom.fa", lambda b: b"\xef\xbb\xbf" + b),
        ("blank_first.fa", lambda b: b"\n  \n\n" + b),
        ("multi_member.gz", lambda b: gzip.compress(b[:20]) + gzip.compress(b[20:])),
        ("multi_stream.bz2", lambda b: bz2.compress(b[:20]) + bz2.compress(b[20:])),  # pbzip2 writes these
        ("multi_stream.xz", lambda b: lzma.compress(b[:20]) + lzma.compress(b[20:])),
        ("stream_padding.xz", lambda b: lzma.compress(b[:20]) + bytes(4) + lzma.compress(b[20:]) + bytes(8)),
        ("zero_tail.bz2", lambda b: bz2.compress(b) + bytes(5)),  # bzip2 -d skips it too
    ],
)
def test_compressions_and_line_endings_give_identical_records(tmp_path: Path, name: str, pack) -> None:
    path = _write(tmp_path, name, pack(FASTA.encode()))
    assert list(read_records(path)) == EXPECTED


def test_matches_biopython_on_messy_valid_fasta(tmp_path: Path) -> None:
    text = ">a  x y \nACGT  \n  AC GT\t\n\n>b\n>c z\r\nAC\r\nGT\r\n>d\nA C\t \nG\n" + "".join(
        f">s{i} {i}\n{'ACGTN' * i}\n{'acg' * (i % 7)}\n" for i in range(200)
    )
    path = _write(tmp_path, "messy.fa", text)
    with open(path) as handle:
        expected = [(t.split(None, 1)[0], t, s) for t, s in SimpleFastaParser(handle)]
    assert [(r.id, r.description, r.sequence) for r in read_records(path)] == expected


def test_tabs_inside_sequence_lines_are_dropped_as_upstreams_seqio_parse_does(tmp_path: Path) -> None:
    """Upstream reads FASTA by ``SeqIO.parse(..., "fasta")``, which removes spaces, tabs and carriage
    returns anywhere in sequence lines (``SimpleFastaParser``, an earlier reference here, keeps tabs)."""
    from Bio import SeqIO

    text = ">r1 a\tb\nAC\tGT\n\tTT A\t\n>r2\nA\r\n>r3\n\t\n"
    path = _write(tmp_path, "tabs.fa", text)
    got = [(r.id, r.description, r.sequence) for r in read_records(path)]
    assert got == [("r1", "r1 a\tb", "ACGTTTA"), ("r2", "r2", "A"), ("r3", "r3", "")]
    assert got == [(r.id, r.description, str(r.seq)) for r in SeqIO.parse(path, "fasta")]
    with pytest.raises(InputFormatError, match=r"record 1 \(id 'r'\).*'\\x0b'"):
        list(read_records(_write(tmp_path, "vt.fa", ">r\nAC\vGT\n")))  # other whitespace stays an error


def test_block_boundaries_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "".join(f">r{i}\n{'ACGT' * (i % 9)}\n{'T' * (i % 4)}\n" for i in range(300))
    text += ">big\n" + "A" * 5000
    path = _write(tmp_path, "r.fa", text)
    with open(path) as handle:
        expected = [(t, s) for t, s in SimpleFastaParser(handle)]
    for size in (1, 2, 3, 7, 64, 1000):
        monkeypatch.setattr(sources, "BLOCK_BYTES", size)
        assert [(r.description, r.sequence) for r in read_records(path)] == expected, size


def test_two_line_fast_path_and_general_path_agree(tmp_path: Path) -> None:
    two_line = "".join(f">r{i}\n{'ACGT' * 10}\n" for i in range(50))
    wrapped = "".join(f">r{i}\n{'ACGT' * 5}\n{'ACGT' * 5}\n" for i in range(50))
    a = list(read_records(_write(tmp_path, "a.fa", two_line)))
    b = list(read_records(_write(tmp_path, "b.fa", wrapped)))
    assert a == b and len(a) == 50
    # a header-only record in a 2-line-looking file must not shift titles and sequences
    tricky = ">a\n>b\nACGT\nCCCC\n"
    assert [(r.id, r.sequence) for r in read_records(_write(tmp_path, "c.fa", tricky))] == [
        ("a", ""),
        ("b", "ACGTCCCC"),
    ]


def test_fastq(tmp_path: Path) -> None:
    text = "@q1 desc\nACGTN\n+\nIIIII\n@q2\nAC\nGT\n+q2\n@@II\n"
    records = list(read_records(_write(tmp_path, "x.txt", text)))
    assert records == [SeqRecord(0, "q1", "q1 desc", "ACGTN"), SeqRecord(1, "q2", "q2", "ACGT")]
    assert list(read_records(_write(tmp_path, "x.fq.gz", gzip.compress(("\n\n" + text).encode())))) == records


_STRICT_FQ = "".join(
    f"@q{i} lane{i % 3}\n{'ACGTN'[i % 5] * (i % 7)}\n+\n{'@+I#'[i % 4] * (i % 7)}\n" for i in range(40)
)
FASTQ_VARIANTS = {
    "strict": _STRICT_FQ,
    "plus_repeats_title": "@q1 x\nACGT\n+q1 x\nIIII\n@q2\nAC\n+q2\n@+\n",
    "wrapped_in_the_middle": _STRICT_FQ + "@w1\nACGT\nAC\n+\n@@@@\n@@\n" + _STRICT_FQ.replace("@q", "@z"),
    "blank_lines_between": "@a\nACGT\n+\nIIII\n\n@b\nAC\n+\nII\n",
    "trailing_blank_lines": _STRICT_FQ + "\n\n",
    "trailing_spaces_both": "@a\nACGT \n+\nIIII \n@b\nAC\n+\nII\n",
    "trailing_space_seq_only": "@a\nACGT \n+\nIIII\n@b\nAC\n+\nII\n",
    "empty_sequence": "@e\n\n+\n\n@f\nA\n+\nI\n",
    "crlf": _STRICT_FQ.replace("\n", "\r\n"),
}


@pytest.mark.parametrize("variant", list(FASTQ_VARIANTS))
def test_fastq_matches_biopython(tmp_path: Path, variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text = FASTQ_VARIANTS[variant]
    path = _write(tmp_path, "reads.fq", text)
    with open(path) as handle:
        expected = [(t.split(None, 1)[0], t, s) for t, s, _ in FastqGeneralIterator(handle)]
    assert [(r.id, r.description, r.sequence) for r in read_records(path)] == expected
    assert [r.index for r in read_records(path)] == list(range(len(expected)))
    monkeypatch.setattr(sources, "BLOCK_BYTES", 5)  # records cut at every possible place
    assert [(r.id, r.description, r.sequence) for r in read_records(path)] == expected


def test_stdin_monkeypatched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(gzip.compress(FASTA.encode()))))
    assert list(read_records("-")) == EXPECTED


def test_stdin_subprocess_pipe() -> None:
    code = (
        "from virnucpro_trt.sequences.reader import read_records\n"
        "print(';'.join(f'{r.id}={r.sequence}' for r in read_records('-')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], input=bz2.compress(FASTA.encode()), capture_output=True, check=True
    )
    assert result.stdout.decode().strip() == "r1=ACGTACGTNNacgt;r2=RYSWKMBDHVU;r3="


def test_empty_inputs(tmp_path: Path) -> None:
    assert list(read_records(_write(tmp_path, "empty.fa", b""))) == []
    assert list(read_records(_write(tmp_path, "blank.fa", " \n\n\t\r\n"))) == []
    assert list(read_records(_write(tmp_path, "empty.gz", gzip.compress(b"")))) == []


def test_protein_alphabet(tmp_path: Path) -> None:
    path = _write(tmp_path, "p.faa", ">p1\nMKVLAAGE*\n>p2\nwxyz\n>p3\nMK-L.A\n")  # gaps: ESM-2 tokens
    assert [r.sequence for r in read_records(path, "protein")] == ["MKVLAAGE*", "wxyz", "MK-L.A"]
    with pytest.raises(InputFormatError, match=r"3 of 3 records are protein, not DNA .*record 1 \(id 'p1'\)"):
        list(judge_dna_letters(read_records(path), str(path)))  # a protein FASTA is not DNA
    message = _error(_write(tmp_path, "d.faa", ">p1\nMKV1\n"), "protein")
    assert "record 1 (id 'p1')" in message and "'1'" in message and "position 4" in message


_MANY = b"".join(b">r%d\nACGT\n" % i for i in range(9999))


def _two_streams(compress) -> bytes:
    """``_MANY`` as two concatenated streams, the second one's first magic byte damaged."""
    cut = len(_MANY) * 3 // 4  # past the first 64 KB, which are read to sniff the format
    second = compress(_MANY[cut:])
    return compress(_MANY[:cut]) + bytes([second[0] ^ 1]) + second[1:]


BAD_INPUTS = [
    ("digits.fa", b">r1\nACGT1\n", ["record 1 (id 'r1')", "'1'", "position 5"]),
    ("binary.bin", bytes(range(256)) * 4, ["NUL", "binary"]),
    ("zstd.fa", b"\x28\xb5\x2f\xfd" + b"\0" * 30, ["zstd"]),
    ("text_first.fa", b"some notes\n>r1\nACGT\n", ["not FASTA/FASTQ", "before the first", "some notes"]),
    ("not_fasta.txt", b"hello world\n", ["not FASTA/FASTQ", "hello world"]),
    ("indented.fa", b"  >r1\nACGT\n", ["the first header '>r1' is indented"]),
    ("dup.fa", b">a\nACGT\n>b\nAC\n>a other\nGG\n", ["record 3 (id 'a')", "record 1"]),
    (
        "empty_id.fa",
        b">r1\nACGT\n>\nACGT\n",
        ["record 2", "empty id (nothing but blanks after its '>' or '@')"],
    ),
    ("blank_id.fa", b">  \t\nACGT\n", ["record 1", "empty id (nothing but blanks after its '>' or '@')"]),
    ("empty_id.fq", b"@r1\nACGT\n+\nIIII\n@\nACGT\n+\nIIII\n", ["record 2", "empty id", "'@'"]),
    ("latin1.fa", b">r1\nACGT\n>r2\nAC\xe9GT\n", ["record 2 (id 'r2')", "0xe9", "position 3", "UTF-8"]),
    ("latin1_header.fa", b">r\xe9 x\nACGT\n", ["record 1", "UTF-8"]),
    ("gz_in_gz.gz", gzip.compress(gzip.compress(b">r\nACGT\n")), ["gzip data contains gzip"]),
    ("truncated.gz", gzip.compress(_MANY)[:-9], ["gzip", "truncated", "after record", "(id 'r"]),
    ("truncated.xz", lzma.compress(_MANY)[:-30], ["xz", "truncated", "after record"]),
    ("truncated_early.bz2", bz2.compress(_MANY)[:300], ["bzip2", "truncated"]),
    # A later stream whose header is damaged was taken for trailing garbage: its reads dropped in silence.
    ("second_stream_damaged.bz2", _two_streams(bz2.compress), ["bzip2", "corrupt", "after record"]),
    ("second_stream_damaged.xz", _two_streams(lzma.compress), ["xz", "corrupt", "after record"]),
    ("trailing_garbage.bz2", bz2.compress(_MANY) + b"garbage", ["bzip2", "corrupt", "after record"]),
    ("trailing_garbage.xz", lzma.compress(_MANY) + b"garbage", ["xz", "corrupt", "after record"]),
    ("bad.fq", b"@q1\nACGT\n+\nIIII\n@q2\nACGT\n+\nII\n", ["record 2", "after record 1 (id 'q1')", "FASTQ"]),
    (
        "truncated.fq",
        b"@q1\nACGT\n+\nIIII\n@q2\nACGT\n+\n",
        ["record 2 (after record 1 (id 'q1'))", "end of file"],
    ),
    ("captions.fq", b"@q1\nACGT\n+q9\nIIII\n", ["record 1", "captions differ"]),
    ("space.fq", b"@q1\nACGT\n+\nIIII\n@q2\nAC GT\n+\nIIIII\n", ["record 2", "Whitespace"]),
    ("bad_seq.fq", b"@q1\nACGT\n+\nIIII\n@q2\nAC#T\n+\nIIII\n", ["record 2 (id 'q2')", "'#'", "position 3"]),
]


@pytest.mark.parametrize(("name", "data", "fragments"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_raise_one_line(tmp_path: Path, name: str, data: bytes, fragments: list[str]) -> None:
    message = _error(_write(tmp_path, name, data))
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_zip_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "reads.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("reads.fa", ">r\nACGT\n")
    assert "zip" in _error(path)
    assert "not found" in _error(tmp_path / "missing.fa")
    assert "directory" in _error(tmp_path)


def test_records_before_the_bad_one_are_yielded(tmp_path: Path) -> None:
    path = _write(tmp_path, "late.fa", "".join(f">r{i}\nACGT\n" for i in range(10)) + ">r3\nAC\n")
    got = []
    with pytest.raises(InputFormatError, match=r"record 11 \(id 'r3'\).*record 4"):
        got.extend(read_records(path))
    assert len(got) == 10


def test_first_error_in_file_order_wins(tmp_path: Path) -> None:
    # record 2 has a bad character, record 3 a duplicate id: record 2 must be reported
    message = _error(_write(tmp_path, "two.fa", ">a\nACGT\n>b\nA1GT\n>a\nAC\n"))
    assert "record 2 (id 'b')" in message


def test_unknown_alphabet(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        list(read_records(_write(tmp_path, "a.fa", FASTA), "rna"))  # type: ignore[arg-type]


def test_sha256(tmp_path: Path) -> None:
    data = gzip.compress(FASTA.encode())
    path = _write(tmp_path, "a.gz", data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def _records(*seqs: str) -> list[SeqRecord]:
    return [SeqRecord(i, f"s{i}", f"s{i}", seq) for i, seq in enumerate(seqs)]


def test_nucleotide_like_protein_inputs_are_refused() -> None:
    """Judged on the whole input: refused when most non-empty records are made only of A/C/G/T/U/N; a
    few such records among proteins (poly-G frames from poly-G reads) pass."""
    from virnucpro_trt.sequences.reader import refuse_nucleotide_like

    def check(*seqs: str) -> list[SeqRecord]:
        return list(refuse_nucleotide_like(_records(*seqs), "in.faa"))

    poly_g = "G" * 50  # a real frame: prepare keeps it from a NovaSeq poly-G read
    proteins = ("MKTAYIAKQRQISFVKSHFSRQ", "GATTACA", "", "ACGT*", poly_g)  # 2 of 4 non-empty: not most
    assert [r.sequence for r in check(*proteins)] == list(proteins)
    read = "acgtn" * 4  # lower case and N included
    with pytest.raises(InputFormatError, match=r"2 of 3 records .* \(the first: record 2 \(id 's1'\)\)"):
        check("MKTAYIAKQR", read, "", read)
    with pytest.raises(InputFormatError, match="1 of 1 records are made only of A/C/G/T/U/N"):
        check(poly_g)  # a lone poly-G protein cannot be told from DNA: the option says so
    assert check("ACGU", "MKV") and check("") == _records("")  # half is not most; nothing to judge
    with pytest.raises(InputFormatError) as caught:
        check("ACG", "", "GATTACA")
    text = str(caught.value)
    assert text.startswith("in.faa: 2 of 2 records") and "\n" not in text and "--model dnabert-s" in text
    assert "--allow-nucleotide-letters" in text


def test_a_record_or_header_past_its_bound_is_one_line(tmp_path, monkeypatch):
    """One record may hold as many letters as one shard may hold bases (a worker's memory is bounded
    per shard, and a record never spans shards), a header 64 Ki characters: past either, refused naming
    the record, where a 100 Mbp read made a worker hold 1.3 million frames and die of memory."""
    from virnucpro_trt.runtime.shards import MAX_SHARD_BASES
    from virnucpro_trt.sequences import reader

    assert reader.MAX_RECORD_LETTERS == MAX_SHARD_BASES
    monkeypatch.setattr(reader, "MAX_RECORD_LETTERS", 1000)
    monkeypatch.setattr(reader, "MAX_TITLE_CHARS", 50)
    path = tmp_path / "long.fa"
    path.write_text(">ok\n" + "ACGT" * 250 + "\n>long\n" + "ACGT" * 250 + "\nA\n")
    too_long = r"record 2 \(id 'long'\) is 1,001 letters long, more than the 1,000 one record may have"
    with pytest.raises(InputFormatError, match=too_long):
        list(read_records(path))
    path.write_text(">ok\nACGT\n>" + "h" * 51 + "\nACGT\n")
    long_header = r"record 2 \(id 'h{51}'\): header of 51 characters, more than the 50"
    with pytest.raises(InputFormatError, match=long_header):
        list(read_records(path))
    path.write_text(">" + "h" * 50 + "\n" + "ACGT" * 250 + "\n")
    assert [len(r.sequence) for r in read_records(path)] == [1000]


def test_dna_records_keep_any_letter_and_gaps_as_upstream_reads_them(tmp_path: Path, caplog) -> None:
    """Upstream reads whatever Biopython parses: an X-masked or gapped read is scored, its odd letters
    dropped with their codons. They used to be refused (exit 2). Accepted now, with one warning naming
    the first; digits and other marks are still no sequence."""
    path = _write(tmp_path, "odd.fa", ">x1\nGGCXXXAAC\n>g\nAC-GT.ac*\n>ok\nACGT\n>e\nACGTEFACGT\n")
    with caplog.at_level("WARNING"):
        records = list(judge_dna_letters(read_records(path), "odd.fa"))
    assert [r.sequence for r in records] == ["GGCXXXAAC", "AC-GT.ac*", "ACGT", "ACGTEFACGT"]
    assert "odd.fa: 3 record(s) hold characters outside the IUPAC nucleotide codes" in caplog.text
    assert "(the first: record 1 (id 'x1'), 'X')" in caplog.text
    masked = _write(tmp_path, "masked.fa", ">m\n" + "X" * 40 + "\n")  # all masked: no protein either
    assert len(list(judge_dna_letters(read_records(masked), "masked.fa"))) == 1
    assert "'1'" in _error(_write(tmp_path, "d.fa", ">r\nAC1GT\n"))


def test_an_input_that_is_protein_is_refused_whole_but_one_odd_record_is_not(tmp_path: Path) -> None:
    """A protein FASTA given as reads would be scored as nonsense: refused when most records are
    protein (fewer than half their letters A/C/G/T/U/N); one protein-like record among reads passes."""
    proteins = ">p1\nMKTAYIAKQRQISFVKSHFSRQ\n>p2\nMKVLAAGIWRRKKLLEEF\n"
    path = _write(tmp_path, "p.fa", ">r1\nACGTACGTAC\n" + proteins)
    with pytest.raises(InputFormatError, match=r"2 of 3 records are protein, not DNA \(the first: record 2"):
        list(judge_dna_letters(read_records(path), "p.fa"))
    mixed = _write(tmp_path, "m.fa", ">r1\nACGTACGTAC\n>r2\nGGGCCCAAAT\n>p1\nMKTAYIAKQRQISFVKSHFSRQ\n")
    assert len(list(judge_dna_letters(read_records(mixed), "m.fa"))) == 3


def test_odd_letters_are_found_in_every_batch_of_records(tmp_path: Path, caplog) -> None:
    """Records are judged a batch at a time; one odd record past the first batches, and a protein
    majority spread over several, are still found."""
    reads = "".join(f">r{i}\nACGTACGTAC\n" for i in range(2100))
    path = _write(tmp_path, "many.fa", reads + ">late\nACGTXACGT\n>empty\n")
    with caplog.at_level("WARNING"):
        assert len(list(judge_dna_letters(read_records(path), "many.fa"))) == 2102
    assert "1 record(s)" in caplog.text and "record 2101 (id 'late'), 'X'" in caplog.text
    proteins = "".join(f">p{i}\nMKTAYIAKQRQISFVKSHFSRQ\n" for i in range(2101))
    with pytest.raises(InputFormatError, match="2101 of 4201 records are protein"):
        list(judge_dna_letters(read_records(_write(tmp_path, "p.fa", reads + proteins)), "p.fa"))
    caplog.clear()
    with caplog.at_level("WARNING"):  # a part of a split input: warned, not refused (split judged it)
        parts = judge_dna_letters(
            read_records(_write(tmp_path, "q.fa", proteins)), "q.fa", refuse_protein=False
        )
        assert len(list(parts)) == 2101
    assert "2101 of them look like protein" in caplog.text
