"""``merge`` reads each part's results as hostile input (audit cases M1, M1b, M2).

* every result file must have the size and SHA-256 its part's ``run.json`` records: an edited
  ``prediction_results.txt`` or ``sequences.tsv`` is refused, naming the part and the file;
* an ``embeddings.h5`` dataset whose bytes live outside the file (HDF5 external storage, a virtual
  dataset, a soft or external link) is refused even when ``run.json`` was forged to match it;
* each refusal is one line, exit 2, and leaves no output folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.cli.helpers import run_cli
from virnucpro_trt.outputs.embeddings_h5 import ForeignStorage, plain_dataset
from virnucpro_trt.sequences.synthetic import generate_reads


def _models(tiny_set) -> list[str]:
    return [
        "--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf), "--classifier",
        str(tiny_set.classifier), "--device", "cpu", "--max-batch-tokens", "700", "--threads", "1",
    ]  # fmt: skip


def _ok(*args: str) -> None:
    result = run_cli(*args)
    assert result.code == 0, result.stderr


@pytest.fixture(scope="module")
def parts(tiny_set, tmp_path_factory) -> list[Path]:
    """Two parts of 20 reads, each predicted with --save-embeddings."""
    root = tmp_path_factory.mktemp("merge_integrity")
    reads = generate_reads(20, 500, seed=71, coding_fraction=0.7, prefix="m")
    fasta = root / "reads.fa"
    fasta.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in reads))
    _ok("split", str(fasta), "-o", str(root / "parts"), "--parts", "2", "--shard-records", "5")
    outs = []
    for index in (1, 2):
        out = root / f"res{index}"
        _ok("predict", str(root / "parts" / f"part-000{index}.fa"), "-o", str(out), *_models(tiny_set),
            "--save-embeddings")  # fmt: skip
        outs.append(out)
    return outs


def _refused(folders: list[Path], outdir: Path, *messages: str) -> str:
    result = run_cli("merge", *map(str, folders), "-o", str(outdir))
    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for message in messages:
        assert message in lines[0], lines
    assert not outdir.exists()
    return lines[0]


def _rehash(folder: Path, name: str) -> None:
    """Forge the part's run.json to record ``name`` as it is now (what a careful attacker would do)."""
    run = json.loads((folder / "run.json").read_text())
    data = (folder / name).read_bytes()
    run["outputs"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "run.json").write_text(json.dumps(run))


def test_untouched_parts_merge(parts, tmp_path):
    _ok("merge", *map(str, parts), "-o", str(tmp_path / "merged"))
    assert (tmp_path / "merged" / "embeddings.h5").is_file()


def test_an_edited_prediction_results_is_refused(parts, tmp_path):
    edited = tmp_path / "edited"
    shutil.copytree(parts[0], edited)
    path = edited / "prediction_results.txt"
    text = path.read_text()
    flipped = ("\tothers\t", "\tvirus\t") if "\tothers\t" in text else ("\tvirus\t", "\tothers\t")
    path.write_text(text.replace(*flipped, 1))
    assert path.read_text() != text
    _refused([edited, parts[1]], tmp_path / "out", f"part 1 ({edited})", "prediction_results.txt",
             "SHA-256 differs")  # fmt: skip


def test_an_edited_sequences_tsv_is_refused(parts, tmp_path):
    edited = tmp_path / "edited"
    shutil.copytree(parts[1], edited)
    path = edited / "sequences.tsv"
    lines = path.read_text().splitlines(keepends=True)
    fields = lines[1].split("\t")
    fields[7] = "virus" if fields[7] != "virus" else "others"
    lines[1] = "\t".join(fields)
    path.write_text("".join(lines))
    _refused([parts[0], edited], tmp_path / "out", f"part 2 ({edited})", "sequences.tsv")


def test_a_result_file_linked_from_outside_or_unrecorded_is_refused(parts, tmp_path):
    linked = tmp_path / "linked"
    shutil.copytree(parts[0], linked)
    outside = tmp_path / "outside.txt"
    shutil.move(linked / "frames.tsv", outside)
    (linked / "frames.tsv").symlink_to(outside)
    _refused([linked, parts[1]], tmp_path / "out", "frames.tsv", "outside")
    linked_run = tmp_path / "linked_run"
    shutil.copytree(parts[0], linked_run)
    shutil.move(linked_run / "run.json", tmp_path / "run.json")
    (linked_run / "run.json").symlink_to(tmp_path / "run.json")
    _refused([linked_run, parts[1]], tmp_path / "out", "run.json is a symbolic link")

    unrecorded = tmp_path / "unrecorded"
    shutil.copytree(parts[0], unrecorded)
    run = json.loads((unrecorded / "run.json").read_text())
    del run["outputs"]["sequences.tsv"]
    (unrecorded / "run.json").write_text(json.dumps(run))
    _refused([unrecorded, parts[1]], tmp_path / "out", "records no size and SHA-256 for sequences.tsv")


@pytest.mark.parametrize(
    "table", ["sequences.tsv", "frames.tsv", "prediction_results.txt", "prediction_results_highestscore.csv"]
)
def test_a_row_removed_with_run_json_forged_to_match_is_refused(parts, tmp_path, table):
    """The hashes hold only what run.json says; the rows are held to the part's records (split.json)
    and kept frames. A part missing one row merged into a sequences.tsv that lacked a record."""
    forged = tmp_path / "forged"
    shutil.copytree(parts[1], forged)
    path = forged / table
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))
    _rehash(forged, table)
    _refused([parts[0], forged], tmp_path / "out", f"{table}: {len(lines) - 2} rows, but the part has")


@pytest.mark.parametrize("frames", [+5, -1])
def test_a_part_whose_run_json_miscounts_its_frames_is_refused(parts, tmp_path, frames):
    edited = tmp_path / "edited"
    shutil.copytree(parts[0], edited)
    run = json.loads((edited / "run.json").read_text())
    run["counts"]["frames"] = run["counts"]["frames"] + frames if frames > 0 else frames
    (edited / "run.json").write_text(json.dumps(run))
    needle = "rows, but the part has" if frames > 0 else "counts.frames: not a count"
    _refused([edited, parts[1]], tmp_path / "out", needle)


@pytest.mark.parametrize(
    "key", ["virus_sequences", "virus_frames", "status_scored", "bases", "chunks", "empty_records"]
)
def test_a_count_edited_in_a_parts_run_json_is_refused(parts, tmp_path, key):
    """The merged run.json sums the parts' counts. One edited in a part's run.json, its tables untouched,
    went into the merged record and the PASSED line, which then disagreed with the merged tables
    (helper-62); the counts the tables hold are tallied while they are copied."""
    edited = tmp_path / "edited"
    shutil.copytree(parts[0], edited)
    run = json.loads((edited / "run.json").read_text())
    run["counts"][key] += 3
    (edited / "run.json").write_text(json.dumps(run))
    needle = f"counts.{key} is {run['counts'][key]}, but the part's tables hold"
    _refused([edited, parts[1]], tmp_path / "out", needle)


def _rewrite_esm(path: Path, make_esm) -> None:
    """Rewrite a part's embeddings.h5 with its attributes and ids/dnabert, and ``make_esm(file, shape)``."""
    with h5py.File(path, "r") as f:
        ids, dnabert, esm = f["ids"][...], f["dnabert"][...], f["esm"][...]
        order: list[str] = []
        h5py.h5a.iterate(f.id, lambda n, *_: order.append(n.decode()), index_type=h5py.h5.INDEX_NAME,
                         order=h5py.h5.ITER_NATIVE)  # fmt: skip
        attrs = {k: f.attrs[k] for k in order}
    path.unlink()
    with h5py.File(path, "w") as f:
        for key in order:
            f.attrs[key] = attrs[key]
        f.create_dataset("ids", data=ids, dtype=h5py.string_dtype())
        f.create_dataset("dnabert", data=dnabert)
        make_esm(f, esm.shape)


def test_embeddings_stored_outside_the_part_are_refused(parts, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"SECRET-PASSWORD-1234" + bytes(400_000))
    crafted = tmp_path / "external"
    shutil.copytree(parts[0], crafted)
    _rewrite_esm(
        crafted / "embeddings.h5",
        lambda f, shape: f.create_dataset(
            "esm", shape=shape, dtype="float32", external=[(str(secret), 0, int(np.prod(shape)) * 4)]
        ),
    )
    # an unforged run.json already refuses it by its SHA-256
    _refused([crafted, parts[1]], tmp_path / "out", "embeddings.h5", "SHA-256 differs")
    _rehash(crafted, "embeddings.h5")  # forged: only the storage check stands in the way
    _refused([crafted, parts[1]], tmp_path / "out", "dataset 'esm' keeps its data outside the file")


def _h5(path: Path, build) -> Path:
    with h5py.File(path, "w") as f:
        build(f)
    return path


def test_plain_dataset_accepts_only_data_stored_in_the_file(tmp_path):
    other = _h5(tmp_path / "other.h5", lambda f: f.create_dataset("esm", data=np.ones((2, 3), "f4")))
    raw = tmp_path / "raw.bin"
    raw.write_bytes(bytes(24))

    def virtual(f):
        layout = h5py.VirtualLayout(shape=(2, 3), dtype="f4")
        layout[:] = h5py.VirtualSource(str(other), "esm", shape=(2, 3))
        f.create_virtual_dataset("esm", layout)

    cases = {
        "external": (lambda f: f.create_dataset("esm", (2, 3), "f4", external=[(str(raw), 0, 24)]),
                     "keeps its data outside the file"),
        "virtual": (virtual, "keeps its data outside the file"),
        "soft": (lambda f: (f.create_dataset("x", data=np.ones((2, 3), "f4")),
                            f.__setitem__("esm", h5py.SoftLink("/x"))), "SoftLink"),
        "extlink": (lambda f: f.__setitem__("esm", h5py.ExternalLink(str(other), "esm")), "ExternalLink"),
        "filters": (lambda f: f.create_dataset("esm", data=np.ones((2, 3), "f4"), compression="gzip"),
                    "filters"),
        "group": (lambda f: f.create_group("esm"), "not a dataset"),
        "missing": (lambda f: None, "no dataset 'esm'"),
    }  # fmt: skip
    for name, (build, message) in cases.items():
        path = _h5(tmp_path / f"{name}.h5", build)
        with h5py.File(path, "r") as f, pytest.raises(ForeignStorage, match=message):
            plain_dataset(f, "esm", path)
    for layout in ({}, {"chunks": (1, 3), "maxshape": (None, 3)}):
        path = _h5(
            tmp_path / "plain.h5",
            lambda f, kw=layout: f.create_dataset("esm", data=np.ones((2, 3), "f4"), **kw),
        )
        with h5py.File(path, "r") as f:
            assert plain_dataset(f, "esm", path).shape == (2, 3)
