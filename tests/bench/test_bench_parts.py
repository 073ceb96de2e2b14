"""The pieces under the run: parity arithmetic, timing discipline, configuration planning."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from virnucpro_trt.bench.configs import ConfigSpec, parse_backends, plan_configurations
from virnucpro_trt.bench.parity import path_parity
from virnucpro_trt.bench.path import PathResult
from virnucpro_trt.bench.timing import StageClock, measure
from virnucpro_trt.engines.parity import cosines
from virnucpro_trt.errors import UserError


def _result(ids: list[str], seed: int = 0, probs: np.ndarray | None = None) -> PathResult:
    rng = np.random.default_rng(seed)
    n = len(ids)
    if probs is None:
        p = rng.random(n).astype(np.float32)
        probs = np.stack([1 - p, p], axis=1)
    return PathResult(
        ids,
        rng.standard_normal((n, 8)).astype(np.float32),
        rng.standard_normal((n, 16)).astype(np.float32),
        probs,
        reads=n,
        dnabert_tokens=10 * n,
        esm_tokens=20 * n,
        stages_s={},
    )


def test_parity_with_itself_is_exactly_perfect() -> None:
    ref = _result([f"f{i}" for i in range(50)])
    parity = path_parity(ref, ref, "fp32")
    assert parity["dnabert_min_cos"] == parity["esm_min_cos"] == parity["label_agreement"] == 1.0
    assert parity["max_abs_score_diff"] == 0.0 and parity["passed"] and parity["frames"] == 50


def test_fp32_rows_follow_the_build_gate_rule() -> None:
    """A bench row in fp32 holds each frame to the build gate's two bounds: a drift of 2e-4 of each
    value (rounding a deep model amplifies) passes though its max abs is over 1e-4; 1e-3 does not."""
    ref = _result([f"f{i}" for i in range(20)])
    for scale, passed in ((1 + 2e-4, True), (1 + 1e-3, False)):
        got = _result(ref.frame_ids, probs=ref.probabilities.copy())
        got.dnabert, got.esm = ref.dnabert.copy(), ref.esm * np.float32(scale)
        parity = path_parity(ref, got, "fp32")
        assert parity["esm_max_abs"] > 1e-4 and parity["passed"] is passed, parity
        assert "relative L2 <= 0.0005" in parity["rule"]


def test_parity_sees_noise_flipped_labels_and_aligns_by_frame_id() -> None:
    ids = [f"f{i}" for i in range(40)]
    ref = _result(ids[:10])  # the reference computed a subset
    ref.probabilities[0] = [0.2, 0.8]
    got = _result(ids[::-1], seed=1)  # another order, more frames
    order = {frame: i for i, frame in enumerate(got.frame_ids)}
    rows = [order[f] for f in ref.frame_ids]
    got.dnabert[rows] = ref.dnabert * 1.5  # same direction: cosine 1, values differ
    got.esm[rows] = ref.esm + 0.3 * np.random.default_rng(2).standard_normal(ref.esm.shape).astype(np.float32)
    got.probabilities[rows] = ref.probabilities
    got.probabilities[rows[0]] = ref.probabilities[0, ::-1]  # one label flips
    parity = path_parity(ref, got, "bf16")
    assert parity["frames"] == 10
    assert parity["dnabert_min_cos"] == pytest.approx(1.0, abs=1e-6) and parity["dnabert_max_abs"] > 0.1
    assert 0.5 < parity["esm_min_cos"] < 0.999
    assert parity["label_agreement"] == pytest.approx(0.9)
    assert parity["max_abs_score_diff"] == pytest.approx(0.6)
    assert parity["passed"] is False and "0.9995" in parity["rule"]


def test_label_flips_on_the_boundary_do_not_fail_parity_but_decisive_ones_do() -> None:
    ids = [f"f{i}" for i in range(10)]
    p = np.array([0.505, 0.9, 0.1, 0.8, 0.3, 0.7, 0.2, 0.6, 0.4, 0.95], dtype=np.float32)
    ref = _result(ids, probs=np.stack([1 - p, p], axis=1))
    got = _result(ids, probs=ref.probabilities.copy())
    got.dnabert, got.esm = ref.dnabert.copy(), ref.esm.copy()
    got.probabilities[0] = [0.503, 0.497]  # 0.505 -> 0.497: rounding noise on the boundary flips it
    near = path_parity(ref, got, "bf16")
    assert near["label_agreement"] == pytest.approx(0.9) and near["decisive_frames"] == 9
    assert near["decisive_label_agreement"] == 1.0 and near["passed"] is True
    got.probabilities[1] = [0.6, 0.4]  # 0.9 -> 0.4: a real disagreement
    far = path_parity(ref, got, "bf16")
    assert far["decisive_label_agreement"] == pytest.approx(8 / 9) and far["passed"] is False


def test_parity_names_the_frames_off_worst_first_and_at_most_twenty() -> None:
    """A frame is off when an embedding misses the rule or its decisive label flipped; the list is worst
    first (a non-finite row before any cosine), capped, and the count is of all of them."""
    ids = [f"f{i}" for i in range(60)]
    p = np.where(np.arange(60) % 2 == 0, 0.9, 0.1).astype(np.float32)  # every frame decisive
    ref = _result(ids, probs=np.stack([1 - p, p], axis=1))
    got = _result(ids, probs=ref.probabilities.copy())
    got.dnabert, got.esm = ref.dnabert.copy(), ref.esm.copy()
    assert path_parity(ref, got, "bf16")["frames_off"] == [] and path_parity(ref, got, "bf16")["passed"]
    got.esm[3] = -ref.esm[3]  # cosine -1
    got.dnabert[7] += 0.2 * np.abs(ref.dnabert[7]).max()  # a little off
    got.probabilities[11] = got.probabilities[11, ::-1]  # a decisive flip, embeddings exact
    parity = path_parity(ref, got, "bf16")
    assert parity["frames_off_count"] == 3 and parity["passed"] is False
    assert [f["frame"] for f in parity["frames_off"]] == ["f3", "f7", "f11"]
    assert parity["frames_off"][0]["esm_cos"] == pytest.approx(-1.0)
    flip = {"frame": "f11", "dnabert_cos": 1.0, "esm_cos": 1.0, "label_flipped": True}
    assert parity["frames_off"][2] == flip
    got.esm[5] = np.nan
    got.esm[20:50] = -ref.esm[20:50]
    parity = path_parity(ref, got, "bf16")
    assert parity["frames_off_count"] == 34 and len(parity["frames_off"]) == 20
    assert parity["frames_off"][0]["frame"] == "f5" and np.isnan(parity["frames_off"][0]["esm_cos"])
    fp32 = path_parity(ref, got, "fp32")  # fp32: by max |diff|, the same frames
    assert fp32["frames_off_count"] == 34


def test_a_failing_rows_note_names_its_worst_frame_and_the_rows_off_on_the_same_frames() -> None:
    """The footnote of a row that failed parity says how many frames are off and the worst, and names the
    other rows of its precision that are off on all of them (not rows of another precision, not rows
    whose list was cut)."""
    from virnucpro_trt.bench.table import footnotes

    def row(config: str, precision: str, off: list[str], count: int | None = None) -> dict:
        frames = [{"frame": f, "dnabert_cos": 0.998, "esm_cos": 1.0, "label_flipped": False} for f in off]
        parity = {"passed": not off, "rule": "r", "frames_off": frames, "frames_off_count": count or len(off)}
        return {"config": config, "backend": config.split("-")[0], "precision": precision, "status": "ok",
                "parity": parity, "extrapolated": False, "compile_baseline": None}  # fmt: skip

    rows = [
        row("compile-bf16", "bf16", ["a", "b"]),
        row("inductor-bf16", "bf16", ["a"]),
        row("onnxruntime-bf16", "bf16", ["a", "c"], count=40),  # more off than listed: not comparable
        row("inductor-fp8", "fp8", ["a"]),
    ]
    notes = {n.split(":")[0]: n for n in footnotes({"results": rows, "workload": {"frames": 9}})}
    assert notes["inductor-bf16"].endswith(
        "; 1 frame(s) off, worst a (DNABERT-S cos 0.998000, ESM-2 1.000000); "
        "compile-bf16 off on the same frames"
    )
    assert notes["compile-bf16"].endswith("2 frame(s) off, worst a (DNABERT-S cos 0.998000, ESM-2 1.000000)")
    assert "same frames" not in notes["inductor-fp8"] and "same frames" not in notes["onnxruntime-bf16"]


def test_parity_without_common_frames_is_an_error() -> None:
    with pytest.raises(ValueError, match="no frame in common"):
        path_parity(_result(["a"]), _result(["b"]), "fp32")


def test_cosines_are_clipped_and_exact_for_identical_rows() -> None:
    a = np.random.default_rng(0).standard_normal((100, 64)).astype(np.float32)
    assert (cosines(a, a) == 1.0).all()
    assert (cosines(a, -a) >= -1.0).all() and cosines(a, -a).max() == pytest.approx(-1.0)


def test_measure_warms_up_then_times_each_pass() -> None:
    seen: list[int] = []
    result = measure(lambda i: seen.append(i) or i * 10, repeats=3, device=torch.device("cpu"))
    assert seen == [0, 1, 2, 3]
    assert result.warmup_result == 0 and result.results == (10, 20, 30)
    assert len(result.passes_s) == 3 and result.median_s == sorted(result.passes_s)[1]
    with pytest.raises(ValueError):
        measure(lambda i: i, repeats=0, device=torch.device("cpu"))


def test_stage_clock_accumulates() -> None:
    clock = StageClock(torch.device("cpu"))
    for _ in range(2):
        with clock.stage("a"):
            pass
    assert set(clock.seconds) == {"a"} and clock.seconds["a"] >= 0.0


def test_backends_and_planning() -> None:
    assert parse_backends("torch, inductor,torch,reference") == ("torch", "inductor")
    with pytest.raises(UserError, match="available: torch, onnxruntime, inductor, tensorrt"):
        parse_backends("torch,trt")
    for empty in ("", " ", ",", " , "):  # an unset shell variable: refused, not read as the default set
        with pytest.raises(UserError, match="--backends: empty; name one or more of torch"):
            parse_backends(empty)
    specs = plan_configurations(("torch", "tensorrt"), "bf16")
    assert specs == [
        ConfigSpec("reference", "fp32"),
        ConfigSpec("torch", "bf16"),
        ConfigSpec("tensorrt", "bf16"),
    ]
    assert [s.name for s in specs] == ["reference", "torch-bf16", "tensorrt-bf16"]
    assert [s.is_engine for s in specs] == [False, False, True]


def test_a_failing_build_child_is_one_line(tmp_path) -> None:
    from virnucpro_trt.bench.build_worker import BuildFailed, build_in_child
    from virnucpro_trt.engines.build import BuildSettings

    missing = str(tmp_path / "no-such-model")
    with pytest.raises(BuildFailed, match=r"^ModelNotFoundError: ") as caught:
        build_in_child(
            BuildSettings(missing, missing, missing, tmp_path / "engines", "onnxruntime", "fp32", "cpu")
        )
    assert "\n" not in str(caught.value)


def test_a_crashing_build_child_is_named_by_its_signal(tmp_path, monkeypatch) -> None:
    from virnucpro_trt.bench import build_worker
    from virnucpro_trt.engines.build import BuildSettings

    crash = tmp_path / "crash.sh"
    crash.write_text("#!/bin/sh\necho 'compiling...'\nkill -SEGV $$\n")
    crash.chmod(0o755)
    monkeypatch.setattr(build_worker.sys, "executable", str(crash))
    with pytest.raises(build_worker.BuildFailed, match="killed by SIGSEGV"):
        build_worker.build_in_child(
            BuildSettings("d", "e", "c", tmp_path / "engines", "inductor", "bf16", "cpu")
        )


def test_an_interrupted_bench_stops_its_build_child(tmp_path, monkeypatch) -> None:
    """Ctrl-C (or SIGTERM, which the CLI turns into it) reaches only bench's own process; the build child
    must not go on compiling into a folder the interrupted run is about to clean up."""
    from virnucpro_trt.bench import build_worker
    from virnucpro_trt.engines.build import BuildSettings

    pid_file = tmp_path / "child.pid"
    slow = tmp_path / "slow.sh"
    slow.write_text(f"#!/bin/sh\necho $$ > {pid_file}\necho 'compiling...'\nexec sleep 30\n")
    slow.chmod(0o755)
    monkeypatch.setattr(build_worker.sys, "executable", str(slow))

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(build_worker.log, "debug", interrupted)  # the Ctrl-C lands as the first line is read
    with pytest.raises(KeyboardInterrupt):
        build_worker.build_in_child(
            BuildSettings("d", "e", "c", tmp_path / "engines", "inductor", "bf16", "cpu")
        )
    child = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # stopped and reaped, not left sleeping
        os.kill(child, 0)


def test_a_random_set_is_written_whole_and_a_folder_bench_did_not_finish_is_refused(tmp_path) -> None:
    """The random-weight set is written beside its folder and renamed into place whole. A folder at its
    name without a finished set's marker (a user's files, a planted link, a damaged marker) is refused
    in one line: bench wrote its checkpoints into it in place, over a user's file and through a link
    (helper-37), and ran on weights it did not make; a JSON list as the marker crashed it."""
    from virnucpro_trt.bench.models import write_random_models
    from virnucpro_trt.errors import UserError

    root = tmp_path / "set"
    models = write_random_models(root, "tiny")
    assert models.classifier.is_file() and not [p for p in tmp_path.iterdir() if p.name != "set"]
    assert write_random_models(root, "tiny") == models  # reused
    marker = root / "random-weights.json"
    for damaged in ("[1, 2]", "{", '"tiny"'):
        marker.write_text(damaged)
        with pytest.raises(UserError, match="not a random-weight set bench finished"):
            write_random_models(root, "tiny")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    other = tmp_path / "other"
    (other / "DNABERT-S").mkdir(parents=True)
    (other / "DNABERT-S" / "config.json").symlink_to(victim)
    (other / "500_model.pth").write_text("mine\n")
    with pytest.raises(UserError, match="not a random-weight set bench finished"):
        write_random_models(other, "tiny")
    assert victim.read_text() == "precious\n" and (other / "500_model.pth").read_text() == "mine\n"
    (tmp_path / "empty").mkdir()
    assert write_random_models(tmp_path / "empty", "tiny").classifier.is_file()  # an empty folder is fine
