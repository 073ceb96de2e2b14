"""``split`` + ``predict`` of every part + ``merge`` == one ``predict`` of the whole input, byte for byte.

Three shard rules: ``--shard-records``, the default rule, and the default rule with its bases cap and
piece joining in play (constants scaled down so a test input reaches them). The reads have random ids,
so the highest-score file's sort interleaves rows of every part. Then every combination ``merge`` must
refuse, each leaving nothing behind.

One torch thread everywhere: on CPU the thread count changes fp32 sums in the last bits.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import random
import shutil
import string
import sys
from pathlib import Path

import pytest

import virnucpro_trt.runtime.shards as shards_module
from tests.cli.helpers import error_lines, run_cli
from virnucpro_trt.sequences.synthetic import generate_reads

TEXT_FILES = (
    "prediction_results.txt",
    "prediction_results_highestscore.csv",
    "sequences.tsv",
    "frames.tsv",
)
FINAL_FILES = (*TEXT_FILES, "run.json", "embeddings.h5")


@pytest.fixture(scope="module")
def split_reads(tmp_path_factory) -> Path:
    """576 records, random unique ids, long (chunked) reads, descriptions, an empty and an all-N record."""
    reads = generate_reads(
        572, 500, seed=51, coding_fraction=0.6, long_reads=12, long_length=1300, lowercase_fraction=0.05,
        n_rate=0.002,
    )  # fmt: skip
    rng = random.Random(7)
    ids: set[str] = set()
    while len(ids) < len(reads):
        ids.add(rng.choice(string.ascii_letters) + str(rng.randrange(10**6)))
    named = [(rid, seq) for rid, (_, seq) in zip(sorted(ids, key=lambda _: rng.random()), reads, strict=True)]
    named[100:100] = [("empty_one", ""), ("all_n", "N" * 420)]
    named[400:400] = [("x", "ACGT" * 100), ("x_chunk_1", "ATG" * 170)]  # ids that look like chunk ids
    path = tmp_path_factory.mktemp("split_reads") / "reads.fa"
    path.write_text("".join(f">{rid} read {i} of the test\n{seq}\n" for i, (rid, seq) in enumerate(named)))
    return path


def _models(tiny_set, batch_tokens: int = 700) -> list[str]:
    return [
        "--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf), "--classifier",
        str(tiny_set.classifier), "--device", "cpu", "--max-batch-tokens", str(batch_tokens),
        "--threads", "1",
    ]  # fmt: skip


def _ok(*args: str) -> None:
    result = run_cli(*args)
    assert result.code == 0, result.stderr


def _split_predict_merge(
    tiny_set, reads: Path, root: Path, split_args: list[str], shard_args: list[str], predict_args: list[str]
):
    """The single run, then split + one predict per part + merge: (single, merged, part outs, split.json)."""
    single, parts, merged = root / "single", root / "parts", root / "merged"
    _ok("predict", str(reads), "-o", str(single), *_models(tiny_set), *predict_args, *shard_args)
    _ok("split", str(reads), "-o", str(parts), *split_args, *shard_args)
    manifest = json.loads((parts / "split.json").read_text())
    outs = []
    for entry in manifest["parts"]:
        out = root / f"out{entry['index']}"
        _ok("predict", str(parts / entry["file"]), "-o", str(out), *_models(tiny_set), *predict_args)
        outs.append(out)
    _ok("merge", *map(str, outs), "-o", str(merged))
    return single, merged, outs, manifest


def _assert_same_files(single: Path, merged: Path, embeddings: bool) -> None:
    for name in TEXT_FILES + (("embeddings.h5",) if embeddings else ()):
        assert (single / name).read_bytes() == (merged / name).read_bytes(), name
    assert (merged / "embeddings.h5").exists() == embeddings


def _run(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


@pytest.fixture(scope="module")
def small_shards(tiny_set, split_reads, tmp_path_factory):
    """--shard-records 25 (24 shards) in 3 parts, with embeddings."""
    root = tmp_path_factory.mktemp("small_shards")
    return _split_predict_merge(
        tiny_set, split_reads, root, ["--parts", "3"], ["--shard-records", "25"], ["--save-embeddings"]
    )


@pytest.fixture(scope="module")
def default_shards(tiny_set, split_reads, tmp_path_factory):
    """The default rule (576 records: 256, 256, 64), gzip parts; its floor scaled down to one piece (the
    real 4,096 would make this input one shard)."""
    root = tmp_path_factory.mktemp("default_shards")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shards_module, "MIN_SHARD_RECORDS", shards_module.PIECE_RECORDS)
        return _split_predict_merge(tiny_set, split_reads, root, ["--parts", "3", "--gzip"], [], [])


@pytest.mark.slow
def test_every_run_json_is_what_its_typed_record_writes_back(small_shards):
    """The one record knows every key predict and merge write: read back and written again, each
    run.json (the whole input's, each part's, the merge's) is the same bytes."""
    from virnucpro_trt.pipeline.run_record import RunRecord

    single, merged, outs, _ = small_shards
    for folder in (single, merged, *outs):
        raw = (folder / "run.json").read_text()
        record = RunRecord.from_json(json.loads(raw))
        assert record.text() == raw, folder
        is_merge = folder == merged
        assert (record.split is not None) == is_merge and (record.model_weights is None) == is_merge


@pytest.mark.slow
def test_small_shards_merge_to_the_single_run_bytes(small_shards, split_reads):
    single, merged, outs, manifest = small_shards
    _assert_same_files(single, merged, embeddings=True)
    assert [len(_run(o)["workers"]) for o in outs] == [1, 1, 1]
    # 24 shards (23 of 25, 1 of 1); cuts at the boundaries nearest 192 and 384: 200 and 375
    assert [p["layout"] for p in manifest["parts"]] == [[[25, 8]], [[25, 7]], [[25, 8], [1, 1]]]
    # the highest-score rows come from every part, interleaved (random ids), not part after part
    first_record = [p["first_record"] for p in manifest["parts"]]
    part_of_read = {}
    headers = [line for line in split_reads.read_text().splitlines() if line.startswith(">")]
    for number, header in enumerate(headers):
        part_of_read[header[1:].split()[0]] = sum(number >= f for f in first_record)
    rows = (merged / "prediction_results_highestscore.csv").read_text().splitlines()[1:]
    sources = [part_of_read[row.split("\t")[0].rsplit("_chunk_", 1)[0]] for row in rows]
    assert sorted(set(sources)) == [1, 2, 3]
    assert sum(a != b for a, b in itertools.pairwise(sources)) > 20
    # run.json: the single run's settings and counts, figures summed over the parts
    one, all_parts = _run(single), _run(merged)
    assert all_parts["settings_fingerprint"] == one["settings_fingerprint"]
    assert all_parts["counts"] == one["counts"]
    assert all_parts["input"] == one["input"]
    assert all_parts["shards"]["total"] == one["shards"]["total"] == 24
    assert all_parts["shards"]["records_per_shard"] == 25
    assert [p["records"] for p in all_parts["parts"]] == [200, 175, 201]
    assert all_parts["timings_s"]["embed_esm"] == pytest.approx(
        sum(_run(o)["timings_s"]["embed_esm"] for o in outs), abs=1e-3
    )
    assert all_parts["split"]["split_id"] == manifest["split_id"]
    assert not list(merged.glob("*.partial")) and not (merged / ".work").exists()


@pytest.mark.slow
def test_default_shard_rule_and_gzip_parts_merge_to_the_single_run_bytes(default_shards):
    single, merged, outs, manifest = default_shards
    _assert_same_files(single, merged, embeddings=False)
    assert [p["file"] for p in manifest["parts"]] == ["part-0001.fa.gz", "part-0002.fa.gz", "part-0003.fa.gz"]
    assert [p["records"] for p in manifest["parts"]] == [256, 256, 64]
    assert manifest["shard_records"] is None and manifest["records_per_shard"] == 256
    assert _run(outs[0])["settings"]["part"]["index"] == 1


@pytest.mark.slow
def test_bases_cap_and_joined_pieces_are_reproduced(tiny_set, split_reads, tmp_path, monkeypatch):
    # Scaled-down constants (in-process runs): shards of 9 pieces of 16 records by the default rule,
    # closed earlier by the bases cap, so the whole input's shards have uneven sizes.
    monkeypatch.setattr(shards_module, "PIECE_RECORDS", 16)
    monkeypatch.setattr(shards_module, "TARGET_SHARDS", 4)
    monkeypatch.setattr(shards_module, "MIN_SHARD_RECORDS", 16)
    monkeypatch.setattr(shards_module, "MAX_SHARD_BASES", 50_000)
    single, merged, _, manifest = _split_predict_merge(
        tiny_set, split_reads, tmp_path, ["--parts", "2"], [], []
    )
    _assert_same_files(single, merged, embeddings=False)
    sizes = [r for p in manifest["parts"] for r, n in p["layout"] for _ in range(n)]
    assert len(set(sizes)) > 2 and max(sizes) <= 144 and sum(sizes) == 576
    assert _run(single)["shards"]["total"] == len(sizes)


def test_predict_of_a_part_refuses_a_conflicting_shard_size(tiny_set, small_shards, tmp_path):
    part_file = small_shards[2][0].parent / "parts" / "part-0001.fa"
    result = run_cli(
        "predict", str(part_file), "-o", str(tmp_path / "o"), *_models(tiny_set), "--shard-records", "30"
    )
    assert result.code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "--shard-records 30 conflicts" in lines[-1]
    assert "made with --shard-records 25" in lines[-1]
    assert not (tmp_path / "o" / "prediction_results.txt").exists()


def test_predict_refuses_a_part_whose_split_json_was_changed(tiny_set, small_shards, tmp_path):
    parts = small_shards[2][0].parent / "parts"
    copy = tmp_path / "parts"
    shutil.copytree(parts, copy)
    data = json.loads((copy / "split.json").read_text())
    data["parts"][0]["layout"] = [[24, 8], [8, 1]]  # still adds up, but not what split wrote
    (copy / "split.json").write_text(json.dumps(data))
    result = run_cli("predict", str(copy / "part-0001.fa"), "-o", str(tmp_path / "o"), *_models(tiny_set))
    assert result.code == 2
    assert "split_id does not match" in result.stderr.strip().splitlines()[-1]


def _refused(outs: list[Path], outdir: Path, message: str) -> None:
    result = run_cli("merge", *map(str, outs), "-o", str(outdir))
    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not outdir.exists()  # no final file, no partial file, not even the folder


def _edited_copy(part: Path, dest: Path, edit) -> Path:
    shutil.copytree(part, dest)
    run = json.loads((dest / "run.json").read_text())
    edit(run)
    (dest / "run.json").write_text(json.dumps(run))
    return dest


@pytest.mark.slow
def test_merge_refuses_incomplete_mixed_or_mismatched_parts(tiny_set, small_shards, default_shards, tmp_path):
    _, _, a, _ = small_shards
    _, _, b, _ = default_shards
    out = tmp_path / "merged"
    _refused([a[0], a[2]], out, "missing part(s) 2 of 3")
    _refused([a[0], a[1], a[1], a[2]], out, "part 2 is given twice")
    _refused([a[0], b[1], a[2]], out, "parts of different splits")
    _refused([a[0], tmp_path / "nowhere", a[2]], out, "no such folder")

    unfinished = tmp_path / "unfinished"
    shutil.copytree(a[1], unfinished)
    (unfinished / "run.json").unlink()
    _refused([a[0], unfinished, a[2]], out, "has not finished")

    # the same part predicted again with another token budget: same split, other settings
    other = tmp_path / "other_settings"
    part2 = a[1].parent / "parts" / "part-0002.fa"
    _ok("predict", str(part2), "-o", str(other), *_models(tiny_set, 500), "--save-embeddings")
    _refused([a[0], other, a[2]], out, "settings differ (encoders.max_batch_tokens: 700 vs 500)")

    for name, edit, message in (
        ("weights", lambda r: r["models"]["esm"].update(weights_sha256="0" * 64), "esm weights differ"),
        ("identity", lambda r: r.update(model_identity={"classifier": "1" * 64}), "model_identity differs"),
        ("torch", lambda r: r["model_identity"].update(torch="0.0.0"), "model_identity differs (torch: "),
        (
            "engines",  # other engines: their content is in model_identity, and the part has no identity
            lambda r: (r.update(engines="/elsewhere/engines"), r.pop("model_identity")),
            "engines None vs /elsewhere/engines",
        ),
        (
            "engines_identity",
            lambda r: (r.update(engines="/elsewhere/engines"), r["model_identity"].update(engines="2" * 64)),
            "model_identity differs",
        ),
        ("precision", lambda r: r.update(precision="bf16"), "precision fp32 vs bf16"),
        ("version", lambda r: r.update(version="0.0.1"), "virnucpro-trt"),
        ("device", lambda r: r["device"].update(device="cuda:0"), "device cpu vs cuda"),
        ("not_a_part", lambda r: r["settings"].update(part=None), "not a part of a split"),
        ("bad_part", lambda r: r["settings"]["part"].update(layout=[[3, 1]]), "part.layout"),
        ("bad_counts", lambda r: r["counts"].update(frames="many"), "counts.frames"),
    ):
        if name == "identity":  # compared only when both parts carry it
            first = _edited_copy(
                a[0], tmp_path / "identity_first", lambda r: r.update(model_identity={"x": 1})
            )
            _refused([first, _edited_copy(a[1], tmp_path / name, edit), a[2]], out, message)
            continue
        _refused([a[0], _edited_copy(a[1], tmp_path / name, edit), a[2]], out, message)
    # parts that each built the same engines into their own folder (predict --backend, no --engines):
    # the engine directories differ by path only, and model_identity names them by content
    assert _run(a[0])["model_identity"] == _run(a[1])["model_identity"]
    moved = _edited_copy(a[1], tmp_path / "own_engines", lambda r: r.update(engines="/part2/engines"))
    _ok("merge", str(a[0]), str(moved), str(a[2]), "-o", str(tmp_path / "own_engines_merged"))

    # a damaged result file is found while merging: nothing is renamed into place
    damaged = tmp_path / "damaged"
    shutil.copytree(a[2], damaged)
    highest = damaged / "prediction_results_highestscore.csv"
    lines = highest.read_text().splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]
    highest.write_text("".join(lines))
    _refused([a[0], a[1], damaged], out, "prediction_results_highestscore.csv is not the file its predict")
    # the same file with a run.json forged to match it: the row order check still stops it
    run = json.loads((damaged / "run.json").read_text())
    run["outputs"][highest.name] = {
        "bytes": highest.stat().st_size,
        "sha256": hashlib.sha256(highest.read_bytes()).hexdigest(),
    }
    (damaged / "run.json").write_text(json.dumps(run))
    _refused([a[0], a[1], damaged], out, "out of order")

    # results already in OUTDIR are not overwritten
    out.mkdir()
    (out / "run.json").write_text("{}")
    result = run_cli("merge", *map(str, a), "-o", str(out))
    assert result.code == 2 and "cannot reuse (run.json: not a finished merge)" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]


def test_merge_without_embeddings_in_every_part_writes_none(tiny_set, small_shards, tmp_path):
    _, _, a, _ = small_shards
    without = _edited_copy(
        a[1], tmp_path / "no_embeddings", lambda r: r["settings"].update(save_embeddings=False)
    )
    (without / "embeddings.h5").unlink()
    _ok("merge", str(a[0]), str(without), str(a[2]), "-o", str(tmp_path / "merged"))
    assert not (tmp_path / "merged" / "embeddings.h5").exists()
    for name in TEXT_FILES:
        assert (tmp_path / "merged" / name).read_bytes() == (small_shards[1] / name).read_bytes()


def test_split_refusals_leave_nothing(split_reads, tmp_path):
    result = run_cli(
        "split", str(split_reads), "-o", str(tmp_path / "p"), "--parts", "2", "--records-per-part", "5"
    )
    assert result.code == 2 and "exactly one of --parts N or --records-per-part R" in result.stderr
    bad = tmp_path / "bad.fa"
    bad.write_text(">a\nACGT\n>b\nAC1T\n")
    result = run_cli("split", str(bad), "-o", str(tmp_path / "p"), "--parts", "2")
    assert result.code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "invalid DNA character '1'" in result.stderr and "record 2" in result.stderr
    assert not (tmp_path / "p").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("x")
    result = run_cli("split", str(split_reads), "-o", str(tmp_path / "full"), "--parts", "2")
    assert result.code == 2 and "is not empty (mine.txt)" in result.stderr
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["mine.txt"]


_KILL_BEFORE_SPLIT_JSON = """
import os, signal, sys
from virnucpro_trt.cli.main import main
real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    if os.fspath(dst).endswith(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)
os.replace = replace
main(sys.argv[2:])
"""


@pytest.mark.parametrize("killed_at", ["part-0002.fa", "split.json"])
def test_a_split_killed_before_its_split_json_is_redone_by_its_rerun(split_reads, tmp_path, killed_at):
    """A SIGKILL after some parts were renamed into place, or while split.json was written, left parts
    (and split.json's temporary file) that made every rerun fail ("not empty"), even after a workflow
    manager removed the parts. The lock now notes them: the same command removes them and splits again;
    a file of the user's there is still refused."""
    import subprocess

    out = tmp_path / "p"
    cut = ["--parts", "3", "--shard-records", "64"]
    args = ["split", str(split_reads), "-o", str(out), *cut]
    killed = subprocess.run([sys.executable, "-c", _KILL_BEFORE_SPLIT_JSON, killed_at, *args], text=True,
                            capture_output=True)  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    left = sorted(p.name for p in out.iterdir())
    assert "part-0001.fa" in left and "split.json" not in left, left
    _ok(*args)
    written = ["part-0001.fa", "part-0002.fa", "part-0003.fa", "split.json"]
    assert sorted(p.name for p in out.iterdir()) == written
    again = tmp_path / "again"
    _ok("split", str(split_reads), "-o", str(again), *cut)
    for name in written:
        assert (out / name).read_bytes() == (again / name).read_bytes()
    mine = tmp_path / "q"
    script = [sys.executable, "-c", _KILL_BEFORE_SPLIT_JSON, "split.json"]
    subprocess.run([*script, "split", str(split_reads), "-o", str(mine), *cut], capture_output=True)
    (mine / "part-0001.fa").write_text(">mine\nACGT\n")  # no longer the part the split noted
    result = run_cli("split", str(split_reads), "-o", str(mine), *cut)
    assert result.code == 2 and "is not empty (part-0001.fa)" in result.stderr, result.stderr
    assert (mine / "part-0001.fa").read_text() == ">mine\nACGT\n"


def test_a_killed_merges_results_are_never_taken_for_a_splits_parts(split_reads, tmp_path):
    """The results a merge notes in its lock (killed before its run.json) are not split's to remove: a
    split into that folder is refused, and the files stay."""
    from virnucpro_trt.files.run_lock import outdir_lock
    from virnucpro_trt.pipeline.merge_parts import KEPT_FILES as MERGE_KEPT

    out = tmp_path / "m"
    with outdir_lock(out, MERGE_KEPT) as lock:
        (out / "frames.tsv").write_text("merged rows\n")
        digest = hashlib.sha256(b"merged rows\n").hexdigest()
        lock.note_results({"frames.tsv": {"bytes": 12, "sha256": digest}})
        killed = (out / ".work.lock").read_bytes()
    (out / ".work.lock").write_bytes(killed)  # what a SIGKILL leaves
    result = run_cli("split", str(split_reads), "-o", str(out), "--parts", "2")
    assert result.code == 2 and "is not empty (frames.tsv)" in result.stderr, result.stderr
    assert (out / "frames.tsv").read_text() == "merged rows\n"


def test_a_split_stopped_while_renaming_its_parts_leaves_no_folder(split_reads, tmp_path, monkeypatch):
    """Ctrl-C while the parts are renamed into place: the parts go again and, with them noted no more,
    so does the lock file and the folder the split made."""
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.fspath(dst).endswith("part-0002.fa"):
            raise KeyboardInterrupt
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    args = ("--parts", "3", "--shard-records", "64")
    result = run_cli("split", str(split_reads), "-o", str(tmp_path / "p"), *args)
    assert result.code == 130, result.stderr
    assert not (tmp_path / "p").exists()


def test_a_small_input_in_many_parts_warns_and_says_how_to_spread_it(split_reads, tmp_path):
    """576 records are one shard by the default rule (at least 4,096 records): parts 2 and 3 are empty,
    and the warning names the option that spreads the input; with it, no part is empty; with too large a
    value of it, the warning names that value."""
    result = run_cli("split", str(split_reads), "-o", str(tmp_path / "p"), "--parts", "3")
    assert result.code == 0, result.stderr
    manifest = json.loads((tmp_path / "p" / "split.json").read_text())
    assert [p["records"] for p in manifest["parts"]] == [576, 0, 0]
    assert "2 part(s) are empty" in result.stderr and "--shard-records N" in result.stderr
    assert "part-0003.fa: no records (predicts to header-only results)" in result.stderr  # not "1-0"
    result = run_cli(
        "split", str(split_reads), "-o", str(tmp_path / "q"), "--parts", "3", "--shard-records", "192"
    )
    assert result.code == 0 and "are empty" not in result.stderr
    spread = json.loads((tmp_path / "q" / "split.json").read_text())
    assert [p["records"] for p in spread["parts"]] == [192] * 3
    # given --shard-records, the warning names that value, not the default floor
    result = run_cli(
        "split", str(split_reads), "-o", str(tmp_path / "r"), "--parts", "3", "--shard-records", "576"
    )
    assert result.code == 0 and "2 part(s) are empty" in result.stderr
    assert "with --shard-records 576; a smaller N spreads" in result.stderr
    assert "by default" not in result.stderr
    # one record a shard already: no smaller N exists, fewer parts do (helper-62)
    few = tmp_path / "few.fa"
    few.write_text("".join(f">r{i}\n{'ACGT' * 40}\n" for i in range(2)))
    result = run_cli("split", str(few), "-o", str(tmp_path / "s"), "--parts", "3", "--shard-records", "1")
    assert result.code == 0 and "1 part(s) are empty" in result.stderr, result.stderr
    assert "a smaller N" not in result.stderr and "ask for at most 2 part(s)" in result.stderr


def test_a_split_into_many_parts_lists_a_few_and_leaves_the_rest_to_split_json(split_reads, tmp_path):
    """One INFO line per part: 10,000 lines for ``--parts 10000`` (helper-80). The first 16 are listed,
    then where the rest are; ``-v`` lists every one."""
    args = ("split", str(split_reads), "--parts", "24", "--shard-records", "24")
    result = run_cli(*args, "-o", str(tmp_path / "p"))
    assert result.code == 0, result.stderr
    listed = [line for line in result.stderr.splitlines() if "part-00" in line and ": records " in line]
    assert len(listed) == 16 and "part-0016.fa: records 361-384" in listed[-1]
    assert "... and 8 more part(s): split.json lists each (-v shows them here)" in result.stderr
    result = run_cli(*args, "-o", str(tmp_path / "q"), "-v")
    assert result.code == 0 and "part-0024.fa: records 553-576" in result.stderr


def test_records_per_part_and_records_kept_as_read(split_reads, tmp_path):
    from virnucpro_trt.sequences.reader import read_records

    _ok(
        "split",
        str(split_reads),
        "-o",
        str(tmp_path / "p"),
        "--records-per-part",
        "200",
        "--shard-records",
        "50",
    )
    manifest = json.loads((tmp_path / "p" / "split.json").read_text())
    assert [p["records"] for p in manifest["parts"]] == [200, 200, 176]
    again = [r for p in manifest["parts"] for r in read_records(tmp_path / "p" / p["file"])]
    original = list(read_records(split_reads))
    assert [(r.id, r.description, r.sequence) for r in again] == [
        (r.id, r.description, r.sequence) for r in original
    ]
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "part-0001.fa", "part-0002.fa", "part-0003.fa", "split.json",
    ]  # fmt: skip


def test_fastq_input_with_more_parts_than_shards(tiny_set, tmp_path):
    """FASTQ in, FASTA parts out; 3 shards in 5 parts: the last two parts are empty (same bytes, told
    apart by name) and still predict and merge to the single run's files, embeddings included."""
    reads = generate_reads(28, 500, seed=61, coding_fraction=0.7, long_reads=2, long_length=1100, prefix="q")
    reads.append(("q_empty", ""))
    fastq = tmp_path / "reads.fq"
    records = (f"@{rid} the {i}th\n{seq}\n+\n{'I' * len(seq)}\n" for i, (rid, seq) in enumerate(reads))
    fastq.write_text("".join(records))
    single, merged, outs, manifest = _split_predict_merge(
        tiny_set, fastq, tmp_path, ["--parts", "5"], ["--shard-records", "10"], ["--save-embeddings"]
    )
    _assert_same_files(single, merged, embeddings=True)
    assert [p["records"] for p in manifest["parts"]] == [10, 10, 9, 0, 0]
    assert manifest["parts"][3]["sha256"] == manifest["parts"][4]["sha256"]
    assert [_run(o)["settings"]["part"]["index"] for o in outs] == [1, 2, 3, 4, 5]
    assert (tmp_path / "parts" / "part-0001.fa").read_text().startswith(">q_00 the 0th\n")


@pytest.mark.slow
def test_min_length_parts_merge_to_the_single_run_and_must_agree(tiny_set, split_reads, tmp_path):
    """Shards are cut on records and bases only, so --min-length (a per-read rule) keeps the merge exact;
    parts predicted with different minimum lengths are refused."""
    single, merged, outs, _ = _split_predict_merge(
        tiny_set, split_reads, tmp_path, ["--parts", "2"], ["--shard-records", "100"], ["--min-length", "501"]
    )
    _assert_same_files(single, merged, embeddings=False)
    counts = _run(merged)["counts"]
    # 560 reads of 500 bp, all_n (420) and x (400) are too short; the 12 long reads and x_chunk_1 are not
    assert counts["status_too_short"] == 562 and counts["status_empty"] == 1
    assert _run(merged)["settings"]["min_length"] == 501
    again = tmp_path / "again"
    _ok("predict", str(tmp_path / "parts" / "part-0002.fa"), "-o", str(again), *_models(tiny_set))
    _refused([outs[0], again], tmp_path / "refused", "settings differ (min_length: 501 vs 0)")


def _tree(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder``: its modification time and bytes (a rerun must touch none)."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*")}


def test_split_rerun_onto_its_own_split_does_nothing_and_other_splits_are_refused(
    split_reads, tmp_path, monkeypatch
):
    """The same command again: exit 0, nothing written (stdin with the same bytes too). Every other
    split (settings, cuts, input, a part edited since, a file split did not write, a damaged split.json)
    is refused in one line, the folder left as it was."""
    parts = tmp_path / "p"
    args = ["--parts", "3", "--shard-records", "100"]
    _ok("split", str(split_reads), "-o", str(parts), *args)
    before = _tree(parts)
    result = run_cli("split", str(split_reads), "-o", str(parts), *args)
    assert result.code == 0 and "already holds this split" in result.stderr, result.stderr
    assert "UP TO DATE: 576 record(s) in 3 part(s)" in result.stderr and "PASSED" not in result.stderr
    assert _tree(parts) == before
    # the same bytes from stdin, and cuts asked another way that fall on the same shards
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(split_reads.read_bytes())))
    assert run_cli("split", "-", "-o", str(parts), *args).code == 0
    records = [p["records"] for p in json.loads((parts / "split.json").read_text())["parts"]]
    assert records == [200, 200, 176]
    _ok("split", str(split_reads), "-o", str(parts), "--records-per-part", "200", "--shard-records", "100")
    assert _tree(parts) == before

    other = tmp_path / "other.fa"
    other.write_bytes(split_reads.read_bytes().replace(b"ACGT", b"ACGA", 1))
    for call, message in (
        ([str(split_reads), "--parts", "2", "--shard-records", "100"], "other part cuts than --parts 2"),
        ([str(split_reads), *args, "--gzip"], "holds another split (plain parts)"),
        ([str(split_reads), "--parts", "3", "--shard-records", "50"], "(--shard-records 100)"),
        ([str(split_reads), "--parts", "3"], "(--shard-records 100)"),
        ([str(split_reads), *args, "--chunk-length", "300"], "(--chunk-length 500)"),
        ([str(other), *args], "holds another split (of another input)"),
    ):
        result = run_cli("split", call[0], "-o", str(parts), *call[1:])
        assert result.code == 2 and message in result.stderr, (call, result.stderr)
        assert len(error_lines(result)) == 1
        assert _tree(parts) == before

    edited = parts / "part-0002.fa"
    edited.write_bytes(edited.read_bytes().replace(b"A", b"C", 1))
    result = run_cli("split", str(split_reads), "-o", str(parts), *args)
    assert result.code == 2 and "holds this split, but its part-0002.fa was changed" in result.stderr
    edited.unlink()
    result = run_cli("split", str(split_reads), "-o", str(parts), *args)
    assert result.code == 2 and "its part-0002.fa was changed or removed" in result.stderr

    theirs = tmp_path / "theirs"
    _ok("split", str(split_reads), "-o", str(theirs), *args)
    (theirs / "notes.txt").write_text("mine")
    result = run_cli("split", str(split_reads), "-o", str(theirs), *args)
    assert result.code == 2 and "is not empty (notes.txt)" in result.stderr
    (theirs / "notes.txt").unlink()
    manifest = theirs / "split.json"
    manifest.write_text(manifest.read_text().replace('"records": 200', '"records": 201', 1))
    result = run_cli("split", str(split_reads), "-o", str(theirs), *args)
    assert result.code == 2 and "holds no split this command can reuse" in result.stderr
    assert (theirs / "part-0001.fa").exists() and len(list(theirs.iterdir())) == 4


def test_a_merge_record_that_leaves_a_result_file_out_is_no_finished_merge(small_shards, tmp_path):
    """A merged run.json with frames.tsv taken out of its outputs, and frames.tsv deleted: the rerun said
    "already holds the results of this merge" with the file gone (merge looked only at the files present;
    predict's rule, the same function now, asks for every file the run writes)."""
    _, _, a, _ = small_shards
    out = tmp_path / "m"
    _ok("merge", *map(str, a), "-o", str(out))
    run = _run(out)
    del run["outputs"]["frames.tsv"]
    (out / "run.json").write_text(json.dumps(run))
    (out / "frames.tsv").unlink()
    result = run_cli("merge", *map(str, a), "-o", str(out))
    assert result.code == 2 and len(error_lines(result)) == 1, result.stderr
    assert "its run.json does not account for frames.tsv" in result.stderr, result.stderr


def test_merge_rerun_onto_its_own_results_does_nothing_and_force_replaces_others(
    small_shards, default_shards, tmp_path
):
    """The same merge again: exit 0, nothing written. Another split's parts, this merge's results edited
    since, a user's file or a part's own predict results at the result names: refused, one line, the
    folder as it was; --force replaces them and leaves no earlier result file beside the new ones (a
    folder at a result name is refused even then)."""
    _, _, a, _ = small_shards
    _, merged_b, b, _ = default_shards
    out = tmp_path / "m"
    _ok("merge", *map(str, a), "-o", str(out))
    run = _run(out)
    assert sorted(run["outputs"]) == sorted((*TEXT_FILES, "embeddings.h5"))
    assert [p["run_json_sha256"] for p in run["parts"]] == [
        hashlib.sha256((folder / "run.json").read_bytes()).hexdigest() for folder in a
    ]
    before = _tree(out)
    result = run_cli("merge", *map(str, a), "-o", str(out))
    assert result.code == 0 and "already holds the results of this merge" in result.stderr, result.stderr
    assert "UP TO DATE: 3 part(s)" in result.stderr and "PASSED" not in result.stderr, result.stderr
    assert _tree(out) == before
    result = run_cli("merge", *map(str, a), "-o", str(out), "--force")  # asked to merge: it merges again
    assert result.code == 0 and "already holds" not in result.stderr, result.stderr
    assert _run(out)["outputs"] == run["outputs"] and _tree(out) != before  # same bytes, written anew
    before = _tree(out)

    def refused(outs: list[Path], outdir: Path, message: str) -> None:
        was = _tree(outdir)
        result = run_cli("merge", *map(str, outs), "-o", str(outdir))
        assert result.code == 2 and len(error_lines(result)) == 1, result.stderr
        fix = "make them again" if "of this merge" in message else "replace them"
        assert message in result.stderr and f"add --force to {fix}" in result.stderr, result.stderr
        assert _tree(outdir) == was

    refused(b, out, "a merge of another split")
    for force in ((), ("--force",)):  # a part's own folder: its predict results stay, even with --force
        was = _tree(a[0])
        result = run_cli("merge", *map(str, a), "-o", str(a[0]), *force)
        assert result.code == 2 and f"is part 1 ({a[0]})'s own folder" in result.stderr, result.stderr
        assert _tree(a[0]) == was
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    run_json = json.loads((damaged / "run.json").read_text())
    del run_json["counts"]
    (damaged / "run.json").write_text(json.dumps(run_json))
    refused(a, damaged, "its run.json is damaged: counts")  # one line naming the field, not a KeyError
    for edit in (  # a record that no longer says what its parts say is no record of this merge
        lambda r: r["counts"].update(virus_sequences=0),
        lambda r: r["counts"].update(frames=r["counts"]["frames"] + 1),
        lambda r: r.update(demo_random_weights=True),
    ):
        shutil.rmtree(damaged)
        shutil.copytree(out, damaged)
        run_json = json.loads((damaged / "run.json").read_text())
        edit(run_json)
        (damaged / "run.json").write_text(json.dumps(run_json, indent=2) + "\n")
        refused(a, damaged, "its run.json's counts or demo flag are not its parts' (edited since)")
    edited = _edited_copy(a[1], tmp_path / "repredicted", lambda r: r.update(finished="later"))
    refused([a[0], edited, a[2]], out, "a merge of other part results")
    frames = out / "frames.tsv"
    frames.write_text(frames.read_text() + "extra\trow\n")
    refused(a, out, "holds the results of this merge, but its own frames.tsv was changed")
    user = tmp_path / "user"
    user.mkdir()
    (user / "sequences.tsv").write_text("my notes\n")
    refused(a, user, "(sequences.tsv: no run.json accounts for them)")

    _ok("merge", *map(str, b), "-o", str(out), "--force")
    assert sorted(p.name for p in out.iterdir()) == sorted((*TEXT_FILES, "run.json"))  # embeddings.h5 gone
    for name in TEXT_FILES:
        assert (out / name).read_bytes() == (merged_b / name).read_bytes(), name
    (out / "embeddings.h5").mkdir()
    result = run_cli("merge", *map(str, a), "-o", str(out), "--force")
    assert result.code == 2 and "embeddings.h5 is a folder" in result.stderr


def test_a_merge_stopped_while_its_results_are_renamed_into_place_reruns(small_shards, tmp_path, monkeypatch):
    """The merged files are noted in the lock file before the first is renamed into place (a SIGKILL
    leaves that note too), and the lock file stays while no run.json accounts for them. Stopped in
    between, a merge left complete-looking files that its rerun refused ("no run.json accounts for
    them")."""
    from virnucpro_trt.files import no_replace

    _, merged, a, _ = small_shards
    out = tmp_path / "m"
    real_rename = no_replace.rename_no_replace

    def stopped_at_sequences(src, dst):
        if Path(dst).name == "sequences.tsv":
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(no_replace, "rename_no_replace", stopped_at_sequences)
    assert run_cli("merge", *map(str, a), "-o", str(out)).code == 130
    monkeypatch.undo()
    assert (out / "prediction_results_highestscore.csv").is_file() and not (out / "run.json").exists()
    assert "results" in (out / ".work.lock").read_text()
    result = run_cli("merge", *map(str, a), "-o", str(out))
    assert result.code == 0, result.stderr
    _assert_same_files(merged, out, embeddings=True)
    assert sorted(p.name for p in out.iterdir()) == sorted((*TEXT_FILES, "embeddings.h5", "run.json"))
    (out / "run.json").unlink()  # no note now: the files are refused as before
    refused = run_cli("merge", *map(str, a), "-o", str(out))
    assert refused.code == 2 and "no run.json accounts for them" in refused.stderr


def test_a_merge_stopped_after_its_run_json_leaves_no_lock_after_its_rerun(
    small_shards, tmp_path, monkeypatch
):
    """Stopped between run.json and dropping its note, the merge keeps its lock file; the rerun, which
    finds the merge finished, drops the note and the lock file with it (they stayed for good). The stop
    itself is no failure: run.json is in place, so the results are complete (it was exit 130)."""
    from virnucpro_trt.files.run_lock import RunLock

    _, _, a, _ = small_shards
    out = tmp_path / "m"
    real_forget = RunLock.forget_results

    def stopped(self):
        if self.results:
            raise KeyboardInterrupt
        real_forget(self)

    monkeypatch.setattr(RunLock, "forget_results", stopped)
    stopped_run = run_cli("merge", *map(str, a), "-o", str(out))
    monkeypatch.undo()
    assert stopped_run.code == 0, stopped_run.stderr
    assert "interrupted after the results were complete; they stand" in stopped_run.stderr
    assert (out / "run.json").is_file() and "results" in (out / ".work.lock").read_text()
    result = run_cli("merge", *map(str, a), "-o", str(out))
    assert result.code == 0 and "already holds the results of this merge" in result.stderr, result.stderr
    assert not (out / ".work.lock").exists()


def test_parts_of_an_input_with_a_few_protein_like_records_run_as_the_whole_does(tiny_set, tmp_path):
    """Whether an input is protein is judged on the whole input: a few protein-like records among reads
    pass. ``split`` judges the whole; a part holding mostly those records was refused by its own
    ``predict`` ("2 of 3 records are protein"), so the split input could not be run at all. A part
    now warns only, and the merge is the single run's bytes."""
    protein, dna = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ" * 4, "ACGTACGTTAGCATCGATCGATCGATCGTACG" * 4
    reads = tmp_path / "in.fa"
    reads.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in [
        ("p1", protein), ("p2", protein), ("d1", dna), ("d2", dna), ("d3", dna)]))  # fmt: skip
    single, merged, _, manifest = _split_predict_merge(
        tiny_set, reads, tmp_path, ["--records-per-part", "3"], ["--shard-records", "1"], []
    )
    assert len(manifest["parts"]) == 2
    _assert_same_files(single, merged, embeddings=False)
    alone = run_cli("predict", str(tmp_path / "parts" / manifest["parts"][0]["file"]), "-o",
                    str(tmp_path / "again"), *_models(tiny_set))  # fmt: skip
    assert alone.code == 0 and "2 of them look like protein" in alone.stderr, alone.stderr


@pytest.mark.slow
def test_a_part_lacking_a_count_or_with_figures_past_any_float_is_refused(small_shards, tmp_path):
    """A part's record without the counts the merge sums, or with a count it does not know (a resumed
    run's None), would make the merged total an under-count; timings past any float would overflow
    halfway through writing the results. Each is refused in one line, naming the field."""
    _, _, a, _ = small_shards
    for name, edit, field in (
        ("lacking", lambda r: r["counts"].pop("virus_sequences"), "counts.virus_sequences"),
        ("unknown", lambda r: r["counts"].update(esm_tokens=None), "counts.esm_tokens"),
        ("huge", lambda r: r["timings_s"].update(total=10**400), "timings_s.total"),
    ):
        part = _edited_copy(a[1], tmp_path / name, edit)
        _refused([a[0], part, a[2]], tmp_path / f"m-{name}", field)


def test_a_split_into_more_parts_than_it_may_make_is_refused(split_reads, tmp_path, monkeypatch):
    """``split --parts 1000000000`` wrote empty parts until the machine ran out of memory: at most
    MAX_PARTS parts, refused in one line, by --parts at once and by --records-per-part once counted."""
    result = run_cli("split", str(split_reads), "-o", str(tmp_path / "p"), "--parts", "1000000000")
    assert result.code == 2 and "'--parts': 1000000000 is not in the range 1<=x<=10000" in result.stderr
    monkeypatch.setattr("virnucpro_trt.pipeline.split.MAX_PARTS", 3)
    one_each = ("--records-per-part", "1", "--shard-records", "1")
    result = run_cli("split", str(split_reads), "-o", str(tmp_path / "p"), *one_each)
    assert result.code == 2 and "parts, more than the 3 one split makes; give larger parts" in result.stderr
    assert not (tmp_path / "p").exists()


def test_the_merged_device_block_says_only_what_every_part_shares(tiny_set, small_shards, tmp_path):
    """A part run with 2 threads among 1-thread parts: the merged run.json said ``threads: 1`` (the first
    part's block). A field the parts differ on is now null there; each part's value is under ``parts``."""
    _, merged, outs, manifest = small_shards
    assert _run(merged)["device"]["threads"] == 1
    second = tmp_path / "two_threads"
    models = _models(tiny_set)
    models[models.index("--threads") + 1] = "2"
    part = outs[1].parent / "parts" / manifest["parts"][1]["file"]
    _ok("predict", str(part), "-o", str(second), *models, "--save-embeddings")
    _ok("merge", str(outs[0]), str(second), str(outs[2]), "-o", str(tmp_path / "mixed"))
    run = _run(tmp_path / "mixed")
    assert run["device"]["threads"] is None and run["device"]["device"] == "cpu"
    assert [p["device"]["threads"] for p in run["parts"]] == [1, 2, 1]


def test_parts_on_other_gpu_indices_merge_to_their_device_type():
    from types import SimpleNamespace

    from virnucpro_trt.pipeline.merge_parts import _common_device

    def run(device: str, name: str) -> SimpleNamespace:
        return SimpleNamespace(device={"device": device, "name": name, "threads": 8}, device_type="cuda")

    merged = _common_device([run("cuda:0", "NVIDIA H100"), run("cuda:1", "NVIDIA H200")])
    assert merged == {"device": "cuda", "name": None, "threads": 8}


def test_merge_refuses_a_folder_holding_a_predict_runs_work(small_shards, tmp_path):
    """merge wrote its results beside a killed predict's ``.work``; that predict's rerun then removed the
    work as "left by this run after it finished" and reported the merge's results as its own."""
    _, _, parts, _ = small_shards
    out = tmp_path / "out"
    (out / ".work").mkdir(parents=True)
    result = run_cli("merge", *map(str, parts), "-o", str(out))
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {out} holds .work, a predict run's work folder")
    assert sorted(p.name for p in out.iterdir()) == [".work"]


def test_a_merge_of_more_parts_than_the_open_files_limit_raises_it_or_says_so_first(tiny_set, tmp_path):
    """merge reads every part's highest-score table side by side: past ~1,015 parts with scored frames
    the default ``ulimit -n`` of 1,024 failed it with the last part's "Too many open files", after the
    work (helper-80). It now raises its soft limit as far as needed, and where the hard limit is lower
    says so before anything is read."""
    import resource
    import subprocess

    reads = tmp_path / "coding.fa"
    reads.write_text("".join(f">r{i}\n{'GCT' * 50 + 'ACGT' * (i % 7)}\n" for i in range(60)))
    single, _, outs, _ = _split_predict_merge(
        tiny_set, reads, tmp_path, ["--parts", "60"], ["--shard-records", "1"], []
    )
    highest = [(out / "prediction_results_highestscore.csv").read_text().splitlines() for out in outs]
    assert all(len(rows) == 2 for rows in highest)  # every part has a row: every table is held open
    command = [sys.executable, "-m", "virnucpro_trt", "merge", *map(str, outs), "-o"]

    def limited(soft: int, hard: int):
        return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    raised = subprocess.run(
        [*command, str(tmp_path / "raised")], preexec_fn=limited(40, 4096), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert raised.returncode == 0, raised.stderr
    _assert_same_files(single, tmp_path / "raised", embeddings=False)
    short = subprocess.run(
        [*command, str(tmp_path / "short")], preexec_fn=limited(40, 40), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    errors = [line for line in short.stderr.splitlines() if line.startswith("error:")]
    assert short.returncode == 1 and errors == [
        "error: merging 60 parts (a file of each open) needs about 124 open files at once, more than the "
        "hard limit of 40 (ulimit -Hn): raise it and rerun the same command"
    ], short.stderr
    assert not (tmp_path / "short").exists()
