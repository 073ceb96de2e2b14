"""The C++ host reads every file as hostile: token ids past an encoder's vocabulary, a pad id outside it,
pickles that crash libtorch's unpickler, a manifest box or number that does not fit the package, and a
classifier file Python would refuse all end in one line and exit 2 -- never a signal, never exit 0.
Each case here crashed (SIGABRT/SIGSEGV) or was accepted before the host checked it (the
audit's remaining gaps)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from virnucpro_trt.files.digests import sha256_file

IDS = torch.full((2, 4), 5, dtype=torch.long)
MASK = torch.ones(2, 4, dtype=torch.long)


def _run(host_tool: Path, engines: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [str(host_tool), str(engines), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _assert_refused(done: subprocess.CompletedProcess[str], needle: str, outputs: Path | None = None) -> None:
    """Exit 2 (not a signal: a negative return code), one line on stderr naming the problem, no output."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], done.stderr[-2000:]
    assert outputs is None or not outputs.exists()


def _inputs(tmp_path: Path, name: str, tensors: tuple[torch.Tensor, ...] = (IDS, MASK, IDS, MASK)) -> Path:
    path = tmp_path / f"{name}.pt"
    torch.save(tensors, path)
    return path


def _copy(engines: Path, tmp_path: Path, name: str) -> tuple[Path, dict]:
    folder = tmp_path / name
    shutil.copytree(engines, folder)
    return folder, json.loads((folder / "manifest.json").read_text())


def _write_manifest(folder: Path, manifest: dict, changed: dict[str, str] | None = None) -> None:
    """Write ``manifest``, recording the new SHA-256 of each changed file (kind -> file name)."""
    for kind, name in (changed or {}).items():
        manifest["models"][kind]["file_sha256"][name] = sha256_file(folder / name)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _package_metadata(package: Path, change: Callable[[dict], object]) -> None:
    """Rewrite the metadata JSON of an AOTInductor package with ``change`` applied to it."""
    with zipfile.ZipFile(package) as archive:
        members = [(info, archive.read(info.filename)) for info in archive.infolist()]
    with zipfile.ZipFile(package, "w", zipfile.ZIP_STORED) as archive:
        for info, data in members:
            if info.filename.endswith("_metadata.json"):
                metadata = json.loads(data)
                change(metadata)
                data = json.dumps(metadata).encode()
            archive.writestr(info, data)


# ------------------------------------------------------------------------------------- token ids (gap 1)
def test_token_ids_past_the_vocabulary_are_refused_before_any_kernel(host_tool, engines, tmp_path) -> None:
    """An id at the vocabulary size reached the compiled embedding kernel, whose bounds check aborted
    the process (SIGABRT). The package now records its vocabulary size and the host checks every id."""
    manifest = json.loads((engines / "manifest.json").read_text())
    for kind, index, name in (("dnabert-s", 0, "dna_ids"), ("esm2", 2, "protein_ids")):
        vocab = manifest["models"][kind]["vocab_size"]
        tensors = [IDS, MASK, IDS, MASK]
        tensors[index] = IDS.clone().index_fill_(1, torch.tensor([3]), vocab)
        out = tmp_path / f"{kind}.out.pt"
        done = _run(host_tool, engines, _inputs(tmp_path, kind, tuple(tensors)), out)
        _assert_refused(done, f"{name}: token id {vocab} is outside the {kind} vocabulary", out)


def test_a_pad_id_outside_the_vocabulary_is_refused(host_tool, engines, tmp_path) -> None:
    """A manifest pad id past the vocabulary aborted the process as soon as a batch was padded (here a
    one-token item padded to the graph's minimum length)."""
    one, three = torch.full((1, 1), 5, dtype=torch.long), torch.full((1, 3), 5, dtype=torch.long)
    inputs = _inputs(tmp_path, "one", (one, torch.ones_like(one), three, torch.ones_like(three)))
    folder, manifest = _copy(engines, tmp_path, "pad")
    entry = manifest["models"]["dnabert-s"]
    entry["pad_id"] = entry["vocab_size"]
    _write_manifest(folder, manifest)
    _assert_refused(_run(host_tool, folder, inputs, tmp_path / "o.pt"), "pad_id", tmp_path / "o.pt")

    entry["pad_id"], entry["vocab_size"] = 0, entry["vocab_size"] + 1  # the package's size is the rule
    _write_manifest(folder, manifest)
    _assert_refused(_run(host_tool, folder, inputs, tmp_path / "o.pt"), "but the manifest says")


def test_a_package_without_a_vocabulary_size_is_refused(host_tool, engines, tmp_path) -> None:
    """An engine built before the package recorded ``virnucpro.vocab_size`` cannot have its ids checked:
    refused with the way out (rebuild), as its metadata is read."""
    folder, manifest = _copy(engines, tmp_path, "old_package")
    entry = manifest["models"]["esm2"]
    del entry["vocab_size"]  # nor did its manifest record one
    _package_metadata(folder / entry["artifact"], lambda metadata: metadata.pop("virnucpro.vocab_size"))
    _write_manifest(folder, manifest, {"esm2": entry["artifact"]})
    done = _run(host_tool, folder, _inputs(tmp_path, "good"), tmp_path / "o.pt")
    _assert_refused(done, "records no vocabulary size", tmp_path / "o.pt")
    assert "rebuild the engines with `virnucpro-trt build --backend inductor`" in done.stderr


def test_a_package_string_cannot_break_the_one_line_error(host_tool, engines, tmp_path) -> None:
    """The kind, precision and dim a package records are shown printable where they differ from the
    manifest's: a newline in them made the refusal two lines."""
    folder, manifest = _copy(engines, tmp_path, "package_kind")
    artifact = manifest["models"]["esm2"]["artifact"]
    _package_metadata(folder / artifact, lambda meta: meta.update({"virnucpro.kind": "esm2\nError: x"}))
    _write_manifest(folder, manifest, {"esm2": artifact})
    out = tmp_path / "o.pt"
    _assert_refused(_run(host_tool, folder, _inputs(tmp_path, "good"), out), "holds esm2?Error: x/fp32/", out)


# ------------------------------------------------------------------------------------ INPUTS.pt (gap 2)
def _with_pickle(tmp_path: Path, name: str, edit: Callable[[bytes], bytes]) -> Path:
    """A torch.save archive of the good inputs whose data.pkl is ``edit(data.pkl)``."""
    good = _inputs(tmp_path, "template")
    path = tmp_path / f"{name}.pt"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for member in source.namelist():
            data = source.read(member)
            target.writestr(member, edit(data) if member.endswith("/data.pkl") else data)
    return path


NESTED = 10**6
PICKLES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    # ~10^6 nested lists: libtorch's unpickler builds them, and their destruction overflows the stack
    "nested_lists": (
        lambda _: b"\x80\x02" + b"]" * NESTED + b"a" * (NESTED - 1) + b".",
        "data.pkl is 2000002 bytes",
    ),
    # small enough to be read, too deep to be a tuple of tensors
    "nested_tuples": (lambda _: b"\x80\x02)" + b"\x85" * 40 + b".", "nests values deeper than 16 levels"),
    "a_list": (lambda _: b"\x80\x02]K\x01a.", "uses pickle opcode 0x5d"),
    "a_foreign_global": (lambda _: b"\x80\x02cos\nsystem\n.", "refers to os.system"),
    "a_memo_id_of_2e31": (lambda _: b"\x80\x02)r\xff\xff\xff\x7f.", "memoizes out of order"),
    "a_pop_across_a_mark": (lambda _: b"\x80\x02K\x01(\x85.", "takes more values than it pushed"),
    # the first storage claims 10^8 int64 elements over its 64-byte record (SIGSEGV reading the ids)
    "a_storage_past_its_record": (
        lambda pkl: pkl.replace(b"K\x08t", b"J\x00\xe1\xf5\x05t", 1),
        "holds 100000000 elements, more than its record's 64 bytes",
    ),
    # a view reaching past its storage: sizes [2, 5] over 8 elements
    "a_view_past_its_storage": (
        lambda pkl: pkl.replace(b"K\x02K\x04\x86", b"K\x02K\x05\x86", 1),
        "has a tensor that reaches past its storage",
    ),
    # a view repeating one stored id: sizes [2^20, 2^20], strides [0, 0] over 8 elements (its min(),
    # the host's first look at it, copied it: an 8 TiB allocation, exit 1; smaller, all the memory)
    "a_view_repeating_its_storage": (
        lambda pkl: pkl.replace(
            b"K\x02K\x04\x86q\x06K\x04K\x01\x86", b"J\x00\x00\x10\x00" * 2 + b"\x86q\x06K\x00K\x00\x86", 1
        ),
        "has a tensor of more elements than its storage holds",
    ),
}


@pytest.mark.parametrize("case", PICKLES)
def test_inputs_pickles_are_checked_before_libtorch_unpickles_them(
    host_tool, engines, tmp_path, case
) -> None:
    edit, needle = PICKLES[case]
    out = tmp_path / "o.pt"
    _assert_refused(_run(host_tool, engines, _with_pickle(tmp_path, case, edit), out), needle, out)


def test_what_torch_save_writes_passes_the_pickle_check(host_tool, engines, tmp_path) -> None:
    """Views sharing a storage, int32 ids (refused later, by dtype) and a non-archive: each gets to the
    check that names it."""
    shared = torch.full((2, 6), 5, dtype=torch.long)
    out = tmp_path / "o.pt"
    inputs = _inputs(tmp_path, "views", (shared[:, :4], MASK, shared[:, 2:], MASK))
    done = _run(host_tool, engines, inputs, out)
    assert done.returncode == 0 and out.stat().st_size > 0, done.stderr
    done = _run(host_tool, engines, _inputs(tmp_path, "int32", (IDS.int(), MASK, IDS, MASK)), out)
    _assert_refused(done, "dna_ids must be a 2-D int64 tensor")
    legacy = tmp_path / "legacy.pt"
    torch.save((IDS, MASK, IDS, MASK), legacy, _use_new_zipfile_serialization=False)
    _assert_refused(_run(host_tool, engines, legacy, out), "is not a torch.save archive this host can read")


INPUTS: dict[str, tuple[tuple[torch.Tensor, ...] | Callable[[bytes], bytes], str]] = {
    # both encoders ran, then torch::cat refused the rows (exit 1)
    "rows_that_differ": ((IDS, MASK, IDS[:1], MASK[:1]), "protein_ids has 1 rows and dna_ids 2"),
    # NaN embeddings, "try --precision fp32" (exit 1); no columns at all: amax()'s error (exit 1)
    "a_row_without_a_token": (
        (IDS, MASK * torch.tensor([[1], [0]]), IDS, MASK),
        "dna_mask has a row without a token",
    ),
    "no_columns": ((IDS[:, :0], MASK[:, :0], IDS[:, :0], MASK[:, :0]), "dna_mask has a row without a token"),
    # a "meta" storage location: tensors without values (min() threw, exit 1)
    "meta_tensors": (
        lambda pkl: pkl.replace(b"X\x03\x00\x00\x00cpu", b"X\x04\x00\x00\x00meta", 1),
        "dna_ids holds no values (a tensor of the meta device)",
    ),
    # libtorch warns on stderr as it builds a quantized tensor: the refusal was two lines
    "a_quantized_storage": (
        lambda pkl: pkl.replace(b"ctorch\nLongStorage\n", b"ctorch\nQInt8Storage\n", 1),
        "dna_ids must be a 2-D int64 tensor",
    ),
    # rows the encoders cannot pool: NaN embeddings after DNABERT-S had run, exit 1 "try --precision fp32"
    "a_protein_row_of_two_tokens": (
        (IDS, MASK, IDS, torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])),
        "protein_mask row 1 has 2 tokens; ESM-2 pools the residues between <cls> and <eos>",
    ),
    "a_protein_mask_with_a_gap": (
        (IDS, MASK, IDS, torch.tensor([[1, 1, 1, 1], [1, 0, 0, 1]])),
        "protein_mask row 1 is not a run of ones followed by zeros",
    ),
    "a_dna_mask_with_a_gap": (
        (IDS, torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]]), IDS, MASK),
        "dna_mask row 0 is not a run of ones followed by zeros",
    ),
    # refused by the encoder after the engines had loaded and DNABERT-S had run, without the file's name
    "ids_and_mask_of_other_widths": (
        (IDS, MASK, IDS, MASK[:, :3]),
        "protein_ids has 4 columns and protein_mask 3",
    ),
}


@pytest.mark.parametrize("case", INPUTS)
def test_inputs_the_host_cannot_embed_are_refused_in_one_line(host_tool, engines, tmp_path, case) -> None:
    """What passes the pickle check and is still no input (rows that differ, a frame without a token,
    tensors without values): refused before the engines load, exit 2, one line."""
    contents, needle = INPUTS[case]
    edited = callable(contents)
    inputs = _with_pickle(tmp_path, case, contents) if edited else _inputs(tmp_path, case, contents)
    out = tmp_path / "o.pt"
    _assert_refused(_run(host_tool, engines, inputs, out), needle, out)


def test_an_inputs_file_that_cannot_be_read_is_one_line(host_tool, engines, tmp_path) -> None:
    """The command line was right: no usage text after the error (it was two lines)."""
    out = tmp_path / "o.pt"
    _assert_refused(_run(host_tool, engines, tmp_path / "absent.pt", out), "cannot read", out)
    _assert_refused(_run(host_tool, engines, tmp_path, out), "not a regular file", out)


def test_rows_the_encoders_cannot_pool_are_refused_before_the_engines_load(host_tool, tmp_path) -> None:
    """A protein row without a residue is refused from INPUTS.pt alone: the engine folder (absent here)
    is never opened, so neither encoder runs."""
    short = _inputs(tmp_path, "short", (IDS, MASK, IDS[:, :2], MASK[:, :2]))
    out = tmp_path / "o.pt"
    done = _run(host_tool, tmp_path / "no_engines", short, out)
    _assert_refused(done, "protein_mask row 0 has 2 tokens", out)


# ------------------------------------------------------------- the zip container of INPUTS.pt (audit h84)
def _rezipped(tmp_path: Path, name: str, write: Callable[[zipfile.ZipFile, str, bytes], None]) -> Path:
    """The good inputs' archive rewritten member by member through ``write(target, member, data)``."""
    good = _inputs(tmp_path, "template")
    path = tmp_path / f"{name}.pt"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for member in source.namelist():
            write(target, member, source.read(member))
    return path


def _deflated(suffix: str, data: bytes | None = None) -> Callable[[zipfile.ZipFile, str, bytes], None]:
    """Write the member ending in ``suffix`` deflated (with ``data`` instead of its own, if given)."""

    def write(target: zipfile.ZipFile, member: str, original: bytes) -> None:
        if member.endswith(suffix):
            target.writestr(member, original if data is None else data, zipfile.ZIP_DEFLATED)
        else:
            target.writestr(member, original)

    return write


def _with_extra_members(count: int) -> Callable[[zipfile.ZipFile, str, bytes], None]:
    def write(target: zipfile.ZipFile, member: str, data: bytes) -> None:
        target.writestr(member, data)
        if member.endswith("/version"):
            for i in range(count):
                target.writestr(f"template/extra/{i}", b"x")

    return write


def _directory_field(member: str, field: int, value: int) -> Callable[[Path], None]:
    """Set the 4-byte little-endian field at ``field`` of ``member``'s central directory entry."""

    def edit(path: Path) -> None:
        data = bytearray(path.read_bytes())
        with zipfile.ZipFile(path) as archive:
            offset = archive.start_dir
            for info in archive.infolist():
                if info.filename.endswith(member):
                    struct.pack_into("<I", data, offset + field, value)
                    break
                offset += 46 + len(info.filename.encode()) + len(info.extra) + len(info.comment)
        path.write_bytes(bytes(data))

    return edit


def _two_zip64_fields(member: str) -> Callable[[Path], None]:
    """Give ``member``'s central directory entry sizes of 0xffffffff and two zip64 fields: the first
    says 4 GiB (what libtorch's reader takes), the second the real size (what the check took)."""

    def edit(path: Path) -> None:
        data = bytearray(path.read_bytes())
        with zipfile.ZipFile(path) as archive:
            offset = archive.start_dir
            for info in archive.infolist():
                name = len(info.filename.encode())
                size = 46 + name + len(info.extra) + len(info.comment)
                if info.filename.endswith(member):
                    wide = 0xFFFFFFFF
                    fields = struct.pack("<HHQQ", 1, 16, wide, wide) + struct.pack(
                        "<HHQQ", 1, 16, info.file_size, info.file_size
                    )
                    entry = data[offset : offset + size]
                    struct.pack_into("<II", entry, 20, wide, wide)
                    struct.pack_into("<H", entry, 30, len(info.extra) + len(fields))
                    entry[46 + name : 46 + name] = fields
                    data[offset : offset + size] = entry
                    end = len(data) - 22  # the end record (no comment): the directory's size at 12
                    struct.pack_into(
                        "<I", data, end + 12, struct.unpack_from("<I", data, end + 12)[0] + len(fields)
                    )
                    break
                offset += size
        path.write_bytes(bytes(data))

    return edit


def _plain(target: zipfile.ZipFile, member: str, data: bytes) -> None:
    target.writestr(member, data)


def _classic_entry_count(path: Path) -> None:
    """Make the classic end record (the last 22 bytes: no comment) count 60 entries, unlike the zip64 one."""
    data = bytearray(path.read_bytes())
    struct.pack_into("<HH", data, len(data) - 22 + 8, 60, 60)
    path.write_bytes(bytes(data))


def _byteorder(order: bytes) -> Callable[[zipfile.ZipFile, str, bytes], None]:
    def write(target: zipfile.ZipFile, member: str, data: bytes) -> None:
        target.writestr(member, order if member.endswith("/byteorder") else data)

    return write


Rewrite = Callable[[zipfile.ZipFile, str, bytes], None]
# case: (members rewritten by, or None for torch.save's own archive (zip64), then edited by, needle)
ZIPS: dict[str, tuple[Rewrite | None, Callable[[Path], None] | None, str]] = {
    # libtorch inflated `version` whole as it opened the archive: a 3 MB file took the host to 6.4 GB
    # and exit 0 ("3" and spaces still read as 3); 32 MiB here is enough to show it is refused unread
    "a_deflated_version_bomb": (
        _deflated("/version", b"3" + b" " * (32 << 20)),
        None,
        "entry template/version is compressed",
    ),
    "a_deflated_pickle": (_deflated("/data.pkl"), None, "entry template/data.pkl is compressed"),
    "too_many_entries": (_with_extra_members(100), None, "entries (torch.save writes about ten"),
    # a stored entry whose directory claims 2 GiB of data: size fields at 20 (compressed), 24 (size)
    "a_size_other_than_its_bytes": (
        _plain,
        _directory_field("/version", 24, 2**31 - 1),
        "entry template/version claims a size other than its stored bytes",
    ),
    "data_past_the_end": (
        _plain,
        _directory_field("/version", 42, 2**31 - 1),
        "a local header lies outside the file",
    ),
    # the zip64 end record (which torch.save always writes) is what the entries were checked against
    "end_records_that_disagree": (None, _classic_entry_count, "end records that disagree"),
    # libtorch took any byte order as little-endian
    "a_big_endian_byteorder": (_byteorder(b"big"), None, "byteorder record says 'big'"),
    # the check read the last zip64 field, libtorch the first (4 GiB): helper-86's re-audit
    "two_zip64_fields": (_plain, _two_zip64_fields("/version"), "two zip64 fields in entry template/version"),
}


@pytest.mark.parametrize("case", ZIPS)
def test_the_zip_container_is_checked_before_libtorch_reads_it(host_tool, engines, tmp_path, case) -> None:
    """torch.save stores every record uncompressed: a compressed record (a zip bomb), sizes that differ,
    data outside the file or more entries than a tuple of tensors needs is refused before libtorch's
    zip reader touches the file, one line, exit 2."""
    write, edit, needle = ZIPS[case]
    inputs = _rezipped(tmp_path, case, write) if write is not None else _inputs(tmp_path, case)
    if edit is not None:
        edit(inputs)
    out = tmp_path / "o.pt"
    _assert_refused(_run(host_tool, engines, inputs, out), needle, out)


def test_a_storage_named_more_often_than_four_tensors_need_is_refused(host_tool, engines, tmp_path) -> None:
    """libtorch read a storage record again for each persistent id naming it: 2,000 references to a
    1 MB record took 2.1 GB (20,000, ~20 GB). A tuple of four tensors names storages four times."""

    def text(value: str) -> bytes:
        return b"X" + struct.pack("<I", len(value)) + value.encode()

    storage = b"(" + text("storage") + b"ctorch\nLongStorage\n" + text("0") + text("cpu") + b"K\x08tq\x00Q"
    pickle = b"\x80\x02(" + storage + b"h\x00Q" * 4 + b"t."  # five loads of one 64-byte storage
    out = tmp_path / "o.pt"
    inputs = _with_pickle(tmp_path, "five_references", lambda _: pickle)
    _assert_refused(_run(host_tool, engines, inputs, out), "names a storage more than 4 times", out)


def test_error_lines_show_control_characters_from_the_file_escaped(host_tool, engines, tmp_path) -> None:
    """libtorch's error quoted a storage location from data.pkl with its ESC, CR and BEL as they were
    (a forged second line, a terminal escape); every error line is printed through printable()."""
    location = "ort\x1b[2K\rError: forged second message\x07"
    forged = b"X" + struct.pack("<I", len(location)) + location.encode()
    inputs = _with_pickle(tmp_path, "escapes", lambda pkl: pkl.replace(b"X\x03\x00\x00\x00cpu", forged, 1))
    out = tmp_path / "o.pt"
    done = subprocess.run(
        [str(host_tool), str(engines), str(inputs), str(out)], capture_output=True, timeout=300
    )
    assert done.returncode == 2 and not out.exists(), done.stderr[-2000:]
    assert not any((byte < 0x20 and byte != 0x0A) or byte == 0x7F for byte in done.stderr), done.stderr
    assert done.stderr.count(b"\n") == 1 and b"ort?[2K?Error: forged second message?" in done.stderr


OUTPUT_PATHS: dict[str, tuple[Callable[[Path], tuple[str, list[str]]], str]] = {
    # said "cannot write : Success", exit 1, after both encoders had run
    "outputs_empty": (lambda _: ("", []), "OUTPUTS.pt is an empty path"),
    "outputs_a_folder": (lambda tmp: (str(tmp), []), "it is not a regular file"),
    "outputs_a_link": (lambda tmp: (str(tmp / "link.pt"), []), "it is a symbolic link"),
    "outputs_in_no_folder": (lambda tmp: (str(tmp / "absent" / "o.pt"), []), "is not a folder"),
    # refused with exit 2 only after OUTPUTS.pt had been written
    "timing_a_folder": (lambda tmp: (str(tmp / "o.pt"), ["--timing", str(tmp)]), "it is not a regular file"),
    "timing_a_link": (
        lambda tmp: (str(tmp / "o.pt"), ["--timing", str(tmp / "link.pt")]),
        "it is a symbolic link",
    ),
    "timing_empty": (lambda tmp: (str(tmp / "o.pt"), ["--timing", ""]), "--timing: expected a file name"),
    # the timing JSON was written over the outputs, exit 0
    "timing_the_outputs_file": (
        lambda tmp: (str(tmp / "o.pt"), ["--timing", str(tmp / "." / "o.pt")]),
        "names OUTPUTS.pt itself",
    ),
    # a folder that takes no new file: both encoders ran, then exit 1
    "outputs_where_no_file_can_be_made": (lambda _: ("/proc/o.pt", []), "cannot write /proc/o.pt"),
}


@pytest.mark.parametrize("case", OUTPUT_PATHS)
def test_output_paths_are_checked_before_any_work(host_tool, engines, tmp_path, case) -> None:
    """OUTPUTS.pt and the --timing file are checked up front, the same way, exit 2 in one line: nothing
    is written and the link's target is untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    (tmp_path / "link.pt").symlink_to(victim)
    inputs = _inputs(tmp_path, "good")
    outputs, options = OUTPUT_PATHS[case][0](tmp_path)
    done = _run(host_tool, engines, inputs, outputs, *options)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert done.stderr.splitlines()[0].startswith("Error: ") and OUTPUT_PATHS[case][1] in done.stderr
    assert not (tmp_path / "o.pt").exists() and victim.read_text() == "keep\n"
    assert "embedded" not in done.stdout


# --------------------------------------------------------------------------- the manifest (gaps 3 and 5)
@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        (("models", "esm2", "dim"), 64.5, "models.esm2.dim must be an integer"),
        (("models", "dnabert-s", "pad_id"), -1, "models.dnabert-s.pad_id must be an integer in [0,"),
        (("models", "esm2", "shapes", "max_batch"), 0, "models.esm2.shapes.max_batch must be an integer"),
        (
            ("models", "esm2", "shapes", "min_length"),
            2000,
            "models.esm2.shapes.max_length must be an integer",
        ),
        (("models", "esm2", "shapes", "max_length"), 10**12, "models.esm2.shapes.max_length must be"),
        (("models", "classifier", "dim"), -128, "models.classifier.dim must be an integer in [1,"),
        (("build", "max_batch_tokens"), 0, "build.max_batch_tokens must be an integer in [16,"),
        (("build", "max_batch_tokens"), 2**64 - 1, "build.max_batch_tokens must be an integer"),
        (("schema_version",), 2.5, "schema_version must be an integer"),
    ],
)
def test_manifest_numbers_must_be_integers_in_range(
    host_tool, engines, tmp_path, field, value, needle
) -> None:
    """nlohmann's get<int64_t> read 2.7 as 2 and took negatives and zeros: now each integer field is a
    JSON integer in its range, else one line."""
    folder, manifest = _copy(engines, tmp_path, "numbers")
    place = manifest
    for key in field[:-1]:
        place = place[key]
    place[field[-1]] = value
    _write_manifest(folder, manifest)
    _assert_refused(_run(host_tool, folder, "--check"), needle)


def test_a_cpu_engine_built_with_instructions_this_cpu_lacks_is_refused(host_tool, engines, tmp_path) -> None:
    """AOTInductor compiles CPU engines with -march=native: run on a CPU without one of the build CPU's
    extensions, an engine dies of SIGILL. The host refuses it first, as Python's check does."""
    manifest = json.loads((engines / "manifest.json").read_text())
    assert manifest["device"]["type"] == "cpu" and manifest["device"]["instruction_sets"]  # recorded
    assert _run(host_tool, engines, "--check").returncode == 0  # this CPU built it
    folder, manifest = _copy(engines, tmp_path, "isa")
    manifest["device"]["instruction_sets"] += ["avx1024_made_up", "zz_made_up"]
    _write_manifest(folder, manifest)
    _assert_refused(
        _run(host_tool, folder, "--check"),
        "built on a CPU with instructions this one lacks (avx1024_made_up, zz_made_up)",
    )
    names = "must hold instruction-set names"
    for bad, needle in (("avx2", "must be a list"), ([7], names), ([""], names), (["avx2 sse"], names),
                        (["bad\nname"], names), (["x" * 65], names), (["\x1b[31m"], names)):  # fmt: skip
        manifest["device"]["instruction_sets"] = bad
        _write_manifest(folder, manifest)
        _assert_refused(_run(host_tool, folder, "--check"), f"device.instruction_sets {needle}")


@pytest.mark.parametrize("field", ["backend", "torch"])
def test_a_manifest_string_cannot_break_the_one_line_error(host_tool, engines, tmp_path, field) -> None:
    """Strings the manifest names in a refusal (its backend, its torch release) are shown printable: a
    newline or an escape sequence in them must not make the error two lines or colour the terminal."""
    folder, manifest = _copy(engines, tmp_path, field)
    if field == "backend":
        manifest["backend"] = "induct\nor\x1b[31m"
    else:
        manifest["libraries"]["torch"] = "9.9\nerror: fake"
    _write_manifest(folder, manifest)
    done = _run(host_tool, folder, "--check")
    _assert_refused(done, "induct?or?[31m" if field == "backend" else "built with torch 9.9?error: fake")


def test_the_manifest_box_must_fit_the_compiled_one(host_tool, engines, tmp_path) -> None:
    """A manifest promising longer items (or larger batches) than the package was compiled for is
    refused, as the Python loader refuses it (check_metadata): smaller minimums are padded up instead."""
    inputs = _inputs(tmp_path, "good")
    for key in ("max_length", "max_batch"):
        folder, manifest = _copy(engines, tmp_path, key)
        manifest["models"]["esm2"]["shapes"][key] += 1
        _write_manifest(folder, manifest)
        _assert_refused(
            _run(host_tool, folder, inputs, tmp_path / "o.pt"), "accepts at most", tmp_path / "o.pt"
        )
    folder, manifest = _copy(engines, tmp_path, "smaller")
    manifest["models"]["esm2"]["shapes"].update(min_length=3, max_length=200, opt_length=100)
    _write_manifest(folder, manifest)
    assert _run(host_tool, folder, inputs, tmp_path / "o.pt").returncode == 0


# ------------------------------------------------------------------------------------ the classifier (gap 4)
def _tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118


def _resaved(change: Callable[[dict, dict], None]) -> Callable[[Path], None]:
    """An edit that saves the classifier again with ``change(tensors, metadata)`` applied."""

    def edit(path: Path) -> None:
        from safetensors.torch import save_file

        tensors, metadata = _tensors(path)
        change(tensors, metadata)
        save_file(tensors, str(path), metadata=metadata)

    return edit


def _header_edited(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """An edit of the safetensors header only (the data section stays as it was)."""

    def edit(path: Path) -> None:
        raw = path.read_bytes()
        (size,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + size])
        change(header)
        text = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size :])

    return edit


def _header_bytes(change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """An edit of the safetensors header's bytes (not JSON-parsed: for headers json cannot write)."""

    def edit(path: Path) -> None:
        raw = path.read_bytes()
        (size,) = struct.unpack("<Q", raw[:8])
        text = change(raw[8 : 8 + size])
        path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size :])

    return edit


def _first_two(header: dict) -> tuple[dict, dict]:
    """The two [hidden] float32 tensors whose data comes first (both of one size)."""
    entries = sorted((v for k, v in header.items() if k != "__metadata__"), key=lambda v: v["data_offsets"])
    same = [v for v in entries if v["shape"] == entries[0]["shape"]]
    return same[0], same[1]


def _overlap(header: dict) -> None:
    first, second = _first_two(header)
    second["data_offsets"] = list(first["data_offsets"])


def _past_the_end(header: dict) -> None:
    last = max((v for k, v in header.items() if k != "__metadata__"), key=lambda v: v["data_offsets"])
    last["data_offsets"] = [last["data_offsets"][0] + 8, last["data_offsets"][1] + 8]


def _wrong_byte_count(header: dict) -> None:
    first, _ = _first_two(header)
    first["shape"] = [first["shape"][0] + 1]


def _empty_of_huge_shape(header: dict) -> None:
    """A tensor of no elements whose other sizes multiply past int64 (libtorch's strides overflowed)."""
    end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    header["zz"] = {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [end, end]}


def _huge_header(path: Path) -> None:
    """A header of 100 MB (a sparse file: refused before a byte of it is read)."""
    with open(path, "r+b") as f:
        f.write(struct.pack("<Q", 100_000_000))
        f.truncate(8 + 100_000_000 + 64)


CLASSIFIERS: dict[str, tuple[Callable[[Path], None], str]] = {
    "extra_tensor": (
        _resaved(lambda t, m: t.update(extra=torch.zeros(2))),
        "holds 'extra', which is no classifier",
    ),
    "missing_tensor": (_resaved(lambda t, m: t.pop("bn1.bias")), "has no bn1.bias"),
    "integer_tensor": (
        _resaved(lambda t, m: t.update({"hidden_layer.bias": t["hidden_layer.bias"].long()})),
        "'hidden_layer.bias' holds Long values, expected floating point",
    ),
    "inconsistent_shape": (
        _resaved(lambda t, m: t.update({"bn1.weight": torch.ones(t["bn1.weight"].numel() + 1)})),
        "'bn1.weight' has shape",
    ),
    "nan_value": (
        _resaved(lambda t, m: t["bn1.running_mean"].__setitem__(0, float("nan"))),
        "'bn1.running_mean' holds NaN/Inf values",
    ),
    "negative_variance": (
        _resaved(lambda t, m: t["bn1.running_var"].__setitem__(0, -1.0)),
        "'bn1.running_var' holds negative variances",
    ),
    "eps_zero": (
        _resaved(lambda t, m: m.update(bn_eps="0.0")),
        "metadata bn_eps '0.0' is not a finite number > 0",
    ),
    "eps_infinite": (_resaved(lambda t, m: m.update(bn_eps="inf")), "metadata bn_eps 'inf'"),
    "eps_text": (_resaved(lambda t, m: m.update(bn_eps="1e-5x")), "metadata bn_eps '1e-5x'"),
    "eps_nan": (_resaved(lambda t, m: m.update(bn_eps="nan")), "metadata bn_eps 'nan'"),
    "overlapping_offsets": (_header_edited(_overlap), "overlaps another"),
    "offsets_past_the_end": (_header_edited(_past_the_end), "leaves a gap"),
    "byte_count_not_the_shape": (_header_edited(_wrong_byte_count), "bytes for a shape of"),
    "huge_header": (_huge_header, "a header of 100000000 bytes"),
    # helper-64's audit: what the Python loader refuses, the host took (1e6 turned a 0.81 "others" call
    # into 0.53 virus), and a header nesting a dtype 400,000 deep crashed it (SIGSEGV copying the value)
    "eps_too_large": (
        _resaved(lambda t, m: m.update(bn_eps="1000000.0")),
        "metadata bn_eps '1000000.0' is more than 0.1",
    ),
    "eps_hex": (
        _resaved(lambda t, m: m.update(bn_eps="0x1p-17")),
        "metadata bn_eps '0x1p-17' is not a finite",
    ),
    "eps_blank": (
        _resaved(lambda t, m: m.update(bn_eps=" 1e-05")),
        "metadata bn_eps ' 1e-05' is not a finite",
    ),
    "header_bom": (
        _header_bytes(lambda h: b"\xef\xbb\xbf" + h),
        "its header is refused: it begins with a UTF-8",
    ),
    "deep_header": (
        _header_bytes(
            lambda h: h.rstrip()[:-1] + b', "zz": {"dtype": ' + b"[" * 400_000 + b"]" * 400_000 + b"}}"
        ),
        "its header is refused: it nests values deeper than 128 levels",
    ),
    # the sanitizer audit: "Stride calculation overflowed" (exit 1), and a header nlohmann read only up to
    # its NUL byte (the rest unseen; the safetensors library refuses it)
    "empty_tensor_of_huge_shape": (_header_edited(_empty_of_huge_shape), "'zz' has a shape too large"),
    "header_nul": (_header_bytes(lambda h: h + b"\x00{}"), "its header is refused: it holds a NUL byte"),
}


@pytest.mark.parametrize("case", CLASSIFIERS)
def test_the_classifier_file_is_checked_as_python_checks_it(host_tool, engines, tmp_path, case) -> None:
    edit, needle = CLASSIFIERS[case]
    folder, manifest = _copy(engines, tmp_path, case)
    name = manifest["models"]["classifier"]["artifact"]
    edit(folder / name)
    _write_manifest(folder, manifest, {"classifier": name})
    out = tmp_path / "o.pt"
    _assert_refused(_run(host_tool, folder, _inputs(tmp_path, "good"), out), needle, out)


# ------------------------------------------------------------------ the engine folder (helper-64's audit)
DEEP = b"[" * 1_000_000 + b"]" * 1_000_000


def _manifest_text(folder: Path, manifest: dict, holes: dict[str, bytes]) -> None:
    """Write ``manifest`` with each string value ``"HOLE:<key>"`` replaced by raw JSON text."""
    text = json.dumps(manifest).encode()
    for key, raw in holes.items():
        text = text.replace(json.dumps(f"HOLE:{key}").encode(), raw)
    (folder / "manifest.json").write_bytes(text)


@pytest.mark.parametrize("where", ["libraries", "build", "build.max_batch_tokens"])
def test_deeply_nested_manifest_json_is_refused_not_a_crash(host_tool, engines, tmp_path, where) -> None:
    """10^6 nested arrays (2 MB, under the 8 MiB bound) as `libraries`, `build` or the budget: nlohmann
    parses them without recursion, but json::value() copied the block, recursing once per level
    (SIGSEGV in --check and in a run). Python refuses it ("JSON nested too deeply")."""
    folder, manifest = _copy(engines, tmp_path, "deep")
    if where == "build.max_batch_tokens":
        manifest["build"]["max_batch_tokens"] = "HOLE:x"
    else:
        manifest[where] = "HOLE:x"
    _manifest_text(folder, manifest, {"x": DEEP})
    _assert_refused(_run(host_tool, folder, "--check"), "is not valid JSON: it nests values deeper than 128")


def _linked_manifest(folder: Path, manifest: dict) -> None:
    (folder.parent / "elsewhere.json").write_text(json.dumps(manifest))
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").symlink_to(folder.parent / "elsewhere.json")


def _classifier_renamed(folder: Path, manifest: dict) -> None:
    (folder / "classifier.safetensors").rename(folder / "classifier.bin")
    entry = manifest["models"]["classifier"]
    entry.update(artifact="classifier.bin", file_sha256={"classifier.bin": entry["file_sha256"].popitem()[1]})
    _write_manifest(folder, manifest)


def _many_missing_names(folder: Path, manifest: dict) -> None:
    manifest["models"]["esm2"]["file_sha256"].update({f"missing-{i}.bin": "0" * 64 for i in range(50_000)})
    _write_manifest(folder, manifest)


def _name_past_name_max(folder: Path, manifest: dict) -> None:
    manifest["models"]["esm2"]["file_sha256"]["n" * 300] = "0" * 64
    _write_manifest(folder, manifest)


def _name_with_a_newline(folder: Path, manifest: dict) -> None:
    manifest["models"]["esm2"]["file_sha256"]["a\nError: forged line"] = "0" * 64
    _write_manifest(folder, manifest)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        # nlohmann's type_error for value() on an array or a number schema: exit 1 and its own words
        (lambda f, m: (f / "manifest.json").write_text("[1, 2]"), "is not a virnucpro-trt engine manifest"),
        (lambda f, m: _write_manifest(f, {**m, "schema": 5}), "is not a virnucpro-trt engine manifest"),
        # nlohmann skips a byte-order mark, Python's json refuses it
        (
            lambda f, m: (f / "manifest.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(m).encode()),
            "is not valid JSON: it begins with a UTF-8 byte-order mark",
        ),
        # nlohmann ends its input at a NUL byte (what follows was never read), Python's json refuses it
        (
            lambda f, m: (f / "manifest.json").write_bytes(json.dumps(m).encode() + b"\x00{}"),
            "is not valid JSON: it holds a NUL byte",
        ),
        # a manifest that is a link (to a copy elsewhere): Python refuses it, the host followed it
        (_linked_manifest, "manifest.json is a symbolic link"),
        # what the Python reader refuses and the host took
        (
            lambda f, m: _write_manifest(
                f, {**m, "models": {**m["models"], "extra": m["models"]["classifier"]}}
            ),
            "'models' must hold exactly dnabert-s, esm2, classifier",
        ),
        (lambda f, m: _write_manifest(f, {**m, "build": []}), "'build' must be an object"),
        (
            lambda f, m: _write_manifest(f, {**m, "build": {**m["build"], "max_batch_tokens": 8}}),
            "build.max_batch_tokens must be an integer in [16, 16777216], not 8",
        ),
        (
            lambda f, m: _write_manifest(f, {**m, "build": {**m["build"], "max_batch_tokens": 2**30}}),
            "build.max_batch_tokens must be an integer in [16, 16777216]",
        ),
        (lambda f, m: _write_manifest(f, {k: v for k, v in m.items() if k != "libraries"}), "libraries"),
        (_classifier_renamed, "the classifier of an engine directory must be .safetensors"),
        # a name the manifest gives, shown printable: its newline made the refusal two lines
        (_name_with_a_newline, "/a?Error: forged line is missing"),
        # 50,000 missing names made a one-line refusal of a megabyte: the first few, then a count
        (_many_missing_names, "; and 49992 more"),
        # a name past NAME_MAX read "resolves outside" the folder, as Python's "cannot be resolved" has it
        (_name_past_name_max, "nnn... cannot be resolved (File name too long) (refused)"),
    ],
)
def test_the_manifest_is_refused_where_python_refuses_it(host_tool, engines, tmp_path, edit, needle) -> None:
    folder, manifest = _copy(engines, tmp_path, "manifest")
    edit(folder, manifest)
    done = _run(host_tool, folder, "--check")
    _assert_refused(done, needle)
    assert len(done.stderr) < 4000, len(done.stderr)


def test_check_says_ok_in_one_line_and_links_inside_the_folder_are_followed(
    host_tool, engines, tmp_path
) -> None:
    """The "ok" line shows the manifest's own strings printable (an arch with a newline forged a second
    line on stdout); a package that is a link to a file in a subfolder of the set is inside it, as the
    Python runtime has it (the host refused it as "outside")."""
    folder, manifest = _copy(engines, tmp_path, "ok")
    manifest["device"]["arch"] = "cpu\nError: forged"
    _write_manifest(folder, manifest)
    artifact = manifest["models"]["esm2"]["artifact"]
    (folder / "sub").mkdir()
    (folder / artifact).rename(folder / "sub" / artifact)
    (folder / artifact).symlink_to(Path("sub") / artifact)
    done = _run(host_tool, folder, "--check")
    assert done.returncode == 0 and done.stdout == "ok: inductor fp32 engines for cpu?Error: forged\n", done
    out = tmp_path / "o.pt"
    assert _run(host_tool, folder, _inputs(tmp_path, "good"), out).returncode == 0 and out.stat().st_size > 0


def test_a_damaged_package_is_refused_in_one_line_exit_2(host_tool, engines, tmp_path) -> None:
    """A package that is no zip (its SHA-256 recorded anew) ended in exit 1 with libtorch's words; the
    Python loader refuses it as an engine mismatch ("cannot load ..."), exit 2, and so does the host."""
    folder, manifest = _copy(engines, tmp_path, "damaged")
    artifact = manifest["models"]["esm2"]["artifact"]
    (folder / artifact).write_bytes(b"not a zip" * 100)
    _write_manifest(folder, manifest, {"esm2": artifact})
    out = tmp_path / "o.pt"
    _assert_refused(
        _run(host_tool, folder, _inputs(tmp_path, "good"), out), f"cannot load {folder / artifact}", out
    )


def test_a_manifest_recording_no_vocabulary_beside_a_package_that_does_is_refused(
    host_tool, engines, tmp_path
) -> None:
    """Both are written by the same build (recipe 8): a manifest without `vocab_size` for a package that
    records one was edited, and the Python runtime, which holds the tokenizers to the manifest's
    number, refuses it; so does the host (it took it, holding ids to the package's own number)."""
    folder, manifest = _copy(engines, tmp_path, "no_vocab")
    del manifest["models"]["esm2"]["vocab_size"]
    _write_manifest(folder, manifest)
    out = tmp_path / "o.pt"
    _assert_refused(
        _run(host_tool, folder, _inputs(tmp_path, "good"), out), "but the manifest says none", out
    )


def test_a_gate_kept_with_nan_and_infinity_reads_as_python_reads_it(host_tool, engines, tmp_path) -> None:
    """`build --keep-failing` records a gate that saw NaN as `"max_abs": Infinity, "min_cosine": NaN`
    (Python's json writes and reads them); the host refused the whole manifest as "not valid JSON" while
    predict ran the set. It reads them as null now: where it needs a number, null is still refused."""
    folder, manifest = _copy(engines, tmp_path, "kept")
    manifest["models"]["esm2"]["parity"].update(max_abs=float("inf"), min_cosine=float("nan"), passed=False)
    _write_manifest(folder, manifest)
    assert "Infinity" in (folder / "manifest.json").read_text()
    done = _run(host_tool, folder, "--check")
    assert done.returncode == 0 and done.stdout.startswith("ok: "), done.stderr
    manifest["models"]["esm2"]["dim"] = float("nan")
    _write_manifest(folder, manifest)
    _assert_refused(
        _run(host_tool, folder, "--check"), "models.esm2.dim must be an integer in [1, 1048576], not null"
    )


# ------------------------------------------------------------------------------- an encoder's weights file
def _weights_resaved(change: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path, dict], None]:
    """Rewrite the ESM-2 weights file with ``change`` applied, its SHA-256 recorded anew."""

    def edit(folder: Path, manifest: dict) -> None:
        name = _weights_name(manifest)
        tensors = load_file(folder / name)
        change(tensors)
        save_file(tensors, folder / name)
        _write_manifest(folder, manifest, {"esm2": name})

    return edit


def _weights_name(manifest: dict) -> str:
    return manifest["models"]["esm2"]["artifact"].removesuffix(".pt2") + ".weights.safetensors"


def _first_matrix(tensors: dict[str, torch.Tensor]) -> str:
    return sorted(n for n, t in tensors.items() if n.endswith(".weight") and t.dim() == 2)[0]


def _weights_unlisted(folder: Path, manifest: dict) -> None:
    entry = manifest["models"]["esm2"]
    del entry["file_sha256"][_weights_name(manifest)]
    entry["files"] = []
    _write_manifest(folder, manifest)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (
            _weights_resaved(lambda t: t.update({_first_matrix(t): torch.zeros(2, 2)})),
            "is F32 [2, 2], the package expects F32 [",
        ),
        (
            _weights_resaved(lambda t: t.update({_first_matrix(t): t[_first_matrix(t)].double()})),
            "the package expects F32 [",
        ),
        (
            _weights_resaved(lambda t: t.update({"planted.weight": torch.zeros(3)})),
            "it holds planted.weight, which the package does not know",
        ),
        (_weights_resaved(lambda t: t.pop(_first_matrix(t))), "it lacks "),
        (_weights_unlisted, "the manifest does not list esm2."),
    ],
    ids=["smaller", "other-dtype", "one-more", "one-fewer", "unlisted"],
)
def test_an_encoders_weights_file_is_checked_as_python_checks_it(
    host_tool, engines, tmp_path, edit, needle
) -> None:
    """load_constants takes any tensor for any weight (a smaller one is read past its end), so the file
    must hold exactly the table the package recorded, and be one the manifest lists and hashes; the host
    refuses what the Python loader refuses, in the same words."""
    from virnucpro_trt.engines.inductor_runner import load_package
    from virnucpro_trt.errors import EngineMismatchError

    folder, manifest = _copy(engines, tmp_path, "weights")
    edit(folder, manifest)
    out = tmp_path / "o.pt"
    _assert_refused(_run(host_tool, folder, _inputs(tmp_path, "good"), out), needle, out)
    entry = json.loads((folder / "manifest.json").read_text())["models"]["esm2"]
    with pytest.raises(EngineMismatchError) as python:
        load_package(folder / entry["artifact"], torch.device("cpu"), frozenset(entry["file_sha256"]))
    assert needle in str(python.value)
