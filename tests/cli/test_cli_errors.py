"""CLI manners: exit codes, one-line errors, no result file after a failure, version and env."""

from __future__ import annotations

import json
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.cli.helpers import run_cli
from virnucpro_trt import __version__
from virnucpro_trt.models.classifier import (
    ClassifierWeights,
    load_classifier_weights,
    save_classifier_safetensors,
)
from virnucpro_trt.models.random_checkpoints import TINY_DNABERT_CONFIG, TINY_ESM2_CONFIG
from virnucpro_trt.models.random_classifier import random_upstream_classifier, save_as_upstream_pickle
from virnucpro_trt.pipeline import predict as predict_module
from virnucpro_trt.sequences.synthetic import generate_reads

GOOD = ">a\nACGTACGTAAACCCGGGTTT\n>b\nTTTTGGGGCCCCAAAA\n"

BAD_INPUTS = {
    "protein_fasta": (b">p1\nMKVLAAGIVGLLLAEEPQRS\n", "record 1"),
    "digits": (b">ok\nACGT\n>d1\nACGT1234ACGT\n", "record 2"),
    "binary": (bytes(range(256)) * 4, "binary"),
    "duplicate_ids": (b">x first\nACGT\n>y\nAC\n>x again\nGGTT\n", "duplicate"),
    "not_fasta": (b"this is just a text file\nwith two lines\n", "FASTA"),
    "zstd": (b"\x28\xb5\x2f\xfd" + b"\0" * 32, "zstd"),
    "empty_id": (b">\nACGT\n", "id"),
}


def _assert_one_line_error(result, needle: str) -> None:
    assert result.code == 2, (result.code, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert needle.lower() in errors[0].lower(), errors[0]


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_predict_exits_2_with_one_line_and_no_results(case, tiny_set, tmp_path):
    data, needle = BAD_INPUTS[case]
    path = tmp_path / "input.fa"
    path.write_bytes(data)
    out = tmp_path / "out"
    result = run_cli(
        "predict", str(path), "-o", str(out), "--dnabert", str(tiny_set.dnabert), "--esm",
        str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier), "--device", "cpu",
    )  # fmt: skip
    _assert_one_line_error(result, needle)
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


@pytest.mark.parametrize("case", ["protein_fasta", "duplicate_ids", "binary"])
def test_bad_input_prepare_and_compressed(case, tmp_path):
    data, needle = BAD_INPUTS[case]
    path = tmp_path / "input.xz"
    path.write_bytes(lzma.compress(data))
    result = run_cli("prepare", str(path), "-o", str(tmp_path / "out"))
    _assert_one_line_error(result, needle)
    assert not (tmp_path / "out" / "identified_nucleotide.fa").exists()


def test_missing_input_and_missing_model_say_where(tiny_set, tmp_path):
    result = run_cli("prepare", str(tmp_path / "nope.fa"), "-o", str(tmp_path / "o"))
    _assert_one_line_error(result, "no such file")
    reads = tmp_path / "r.fa"
    reads.write_text(GOOD)
    result = run_cli(
        "predict", str(reads), "-o", str(tmp_path / "o2"), "--dnabert", "zhihan1996/DNABERT-S",
        "--esm", str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier),
    )  # fmt: skip
    _assert_one_line_error(result, "looked in")
    assert "download zhihan1996/DNABERT-S" in result.stderr
    result = run_cli(
        "predict", str(reads), "-o", str(tmp_path / "o3"), "--dnabert", str(tiny_set.dnabert),
        "--esm", "esm2_t36_3B_UR50D", "--classifier", str(tiny_set.classifier),
    )  # fmt: skip
    _assert_one_line_error(result, "hub")


def test_models_given_in_each_others_place_are_named_before_the_input_is_read(tiny_set, tmp_path):
    """Each swap is one line that says what the file is, before the input is read: the input here is
    bad at record 2, so an input error would mean the models were checked too late. The classifier as
    --esm is named as the classifier, not reported as a code-execution attempt; any other whole pickled
    module is refused as one, and a pickle that calls a function still is (nothing runs)."""
    reads = tmp_path / "r.fa"
    reads.write_bytes(BAD_INPUTS["digits"][0])
    dnabert, esm, classifier = str(tiny_set.dnabert), str(tiny_set.esm_hf), str(tiny_set.classifier)
    module = tmp_path / "linear.pt"
    torch.save(torch.nn.Linear(2, 2), module)
    for models, needle in (
        ((dnabert, classifier, classifier), "upstream's VirNucPro classifier (a pickled "),
        ((dnabert, esm, str(tiny_set.esm_pt)), "a fair-esm (ESM) checkpoint, not a VirNucPro classifier"),
        ((dnabert, str(module), classifier), "holds a pickled torch.nn.modules.linear.Linear object"),
        ((classifier, esm, classifier), "not a DNABERT-S model folder"),
        ((esm, esm, classifier), "expected 'bert'"),
        ((dnabert, dnabert, classifier), "expected 'esm'"),
    ):
        out = tmp_path / "o"
        result = run_cli(
            "predict", str(reads), "-o", str(out), "--dnabert", models[0], "--esm", models[1],
            "--classifier", models[2], "--device", "cpu",
        )  # fmt: skip
        _assert_one_line_error(result, needle)
        assert "record 2" not in result.stderr and not out.exists(), result.stderr
    assert "arbitrary code" not in run_cli(
        "predict", str(reads), "-o", str(tmp_path / "o"), "--dnabert", dnabert, "--esm", classifier,
        "--classifier", classifier, "--device", "cpu",
    ).stderr  # fmt: skip
    # a checkpoint far larger than any classifier (a sparse file: an encoder's size) as --classifier
    big = tmp_path / "big.pth"
    with open(big, "wb") as handle:
        handle.truncate(300 << 20)
    result = run_cli(
        "predict", str(reads), "-o", str(tmp_path / "o"), "--dnabert", dnabert, "--esm", esm,
        "--classifier", str(big), "--device", "cpu",
    )  # fmt: skip
    _assert_one_line_error(result, "300 MiB, far too large for a VirNucPro classifier")
    # a pickle that calls a function is refused as before, and nothing of it runs
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "args": {}, "x": _Calls(marker)}, evil)
    result = run_cli(
        "predict", str(reads), "-o", str(tmp_path / "o"), "--dnabert", dnabert, "--esm", str(evil),
        "--classifier", classifier, "--device", "cpu",
    )  # fmt: skip
    _assert_one_line_error(result, "refused to unpickle global")
    assert not marker.exists()


class _Calls:
    """Pickles as a call of ``os.system`` (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_classifier_width_mismatch_is_a_user_error(tiny_set, tmp_path, monkeypatch):
    """Refused from the widths the encoder configs declare, before any model loads (it was refused once
    both had loaded)."""
    import virnucpro_trt.models.checkpoints as checkpoints

    def loaded(*args: object) -> None:
        raise AssertionError("an encoder was loaded before the classifier's width was checked")

    monkeypatch.setattr(checkpoints, "load_dnabert", loaded)
    monkeypatch.setattr(checkpoints, "load_esm2", loaded)
    reads = tmp_path / "r.fa"
    reads.write_text(GOOD)
    result = run_cli(
        "predict", str(reads), "-o", str(tmp_path / "o"), "--dnabert", str(tiny_set.dnabert),
        "--esm", str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier_wrong_width),
        "--device", "cpu",
    )  # fmt: skip
    _assert_one_line_error(result, "input features")
    assert not (tmp_path / "o" / "prediction_results.txt").exists()


def test_usage_errors_exit_2(tmp_path):
    assert run_cli("predict", "-o", str(tmp_path)).code == 2
    assert run_cli("prepare", "x.fa", "-o", str(tmp_path), "--chunk-length", "400").code == 2
    result = run_cli(
        "embed",
        "x.fa",
        "--model",
        "dnabert-s",
        "--weights",
        "w",
        "-o",
        str(tmp_path / "e.h5"),
        "--device",
        "cuda:7",
    )
    assert result.code == 2


def test_cuda_request_without_gpu_is_one_line(tiny_set, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the error path cannot be exercised")
    reads = tmp_path / "r.fa"
    reads.write_text(GOOD)
    result = run_cli(
        "predict", str(reads), "-o", str(tmp_path / "o"), "--dnabert", str(tiny_set.dnabert),
        "--esm", str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier), "--device", "cuda",
    )  # fmt: skip
    _assert_one_line_error(result, "no CUDA device")


def test_version_and_env(tmp_path):
    result = run_cli("--version")
    assert result.code == 0 and __version__ in result.stdout
    result = run_cli("env", "--json")
    assert result.code == 0
    report = json.loads(result.stdout)
    assert report["virnucpro_trt"] == __version__
    assert "torch" in report["libraries"] and "importable" in report["tensorrt"]
    assert isinstance(report["onnxruntime_providers"], list | str)
    assert run_cli("env").code == 0


def test_console_script_help_and_exit_code():
    proc = subprocess.run([sys.executable, "-m", "virnucpro_trt", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "predict" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "virnucpro_trt", "prepare", "/nonexistent.fa", "-o", "/tmp/x"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error:")
    assert "Traceback" not in proc.stderr


def test_log_file_gets_debug_details(tmp_path):
    log = tmp_path / "run.log"
    reads = tmp_path / "r.fa"
    reads.write_text(GOOD)
    result = run_cli("prepare", str(reads), "-o", str(tmp_path / "o"), "--log-file", str(log))
    assert result.code == 0
    assert "virnucpro-trt" in log.read_text()
    assert Path(tmp_path / "o" / "identified_protein.faa").exists()


# --- hostile model files: exit 2 (exit 1 for NaN scores), one line, before any result exists ---


@pytest.fixture(scope="module")
def coding_reads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Reads with stop-free frames and nothing to warn about: stderr holds only what the run says."""
    path = tmp_path_factory.mktemp("coding") / "coding.fa"
    path.write_text(
        "".join(
            f">c{i}\n{seq}\n"
            for i, (_, seq) in enumerate(generate_reads(6, 300, seed=3, coding_fraction=1.0))
        )
    )
    return path


def _only_line(result, code: int, needle: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.code == code and len(lines) == 1, (result.code, result.stderr)
    assert needle in lines[0] and "unexpected failure" not in lines[0], lines[0]


def _edit_pickled(model, edit: str) -> None:
    if edit == "nan_weight":
        with torch.no_grad():
            model.hidden_layer.weight[0, 0] = float("nan")
    elif edit == "inf_bias":
        with torch.no_grad():
            model.output_layer.bias[1] = float("inf")
    elif edit == "zero_stride":
        huge = torch.zeros(1, 1).expand(10**9, model.hidden_layer.in_features)
        model.hidden_layer.weight = torch.nn.Parameter(huge, requires_grad=False)
    else:  # eps_<value>
        model.bn1.eps = {
            "eps_abc": "abc",
            "eps_tuple": (1e-5,),
            "eps_negative": -1.0,
            "eps_nan": float("nan"),
        }[edit]


HOSTILE_CLASSIFIERS = {
    "nan_weight": "'hidden_layer.weight' holds 1 NaN/Inf",
    "inf_bias": "'output_layer.bias' holds 1 NaN/Inf",
    "zero_stride": "a tensor of size (1000000000, 128) shows more elements than its storage of 1 holds",
    "eps_abc": "bn1.eps is 'abc'",
    "eps_tuple": "bn1.eps is a value of type tuple",
    "eps_negative": "bn1.eps is -1.0",
    "eps_nan": "bn1.eps is nan",
    "safetensors_nan": "'bn1.running_mean' holds 1 NaN/Inf",
    "safetensors_eps_nan": "metadata bn_eps is 'nan'",
}


def _hostile_classifier(tiny_set, case: str, folder: Path) -> Path:
    if case.startswith("safetensors_"):
        weights = load_classifier_weights(tiny_set.classifier)
        if case == "safetensors_nan":
            weights.tensors["bn1.running_mean"][3] = float("nan")
        else:
            weights = ClassifierWeights(weights.tensors, bn_eps=float("nan"))
        save_classifier_safetensors(weights, folder / "classifier.safetensors")
        return folder / "classifier.safetensors"
    width = TINY_DNABERT_CONFIG.hidden_size + TINY_ESM2_CONFIG.embed_dim
    model = random_upstream_classifier(width, seed=3)
    _edit_pickled(model, case)
    save_as_upstream_pickle(model, folder / "500_model.pth")
    return folder / "500_model.pth"


@pytest.mark.parametrize("case", sorted(HOSTILE_CLASSIFIERS))
def test_hostile_classifier_is_refused_in_one_line_before_any_result(case, tiny_set, coding_reads, tmp_path):
    """These wrote NaN scores with exit 0, ended as 'unexpected failure' (exit 1), crashed each worker
    three times, or (zero strides) tried to allocate tens of GB from a 20 KB file."""
    classifier = _hostile_classifier(tiny_set, case, tmp_path)
    out = tmp_path / "out"
    predict = run_cli(
        "-q", "predict", str(coding_reads), "-o", str(out), "--dnabert", str(tiny_set.dnabert),
        "--esm", str(tiny_set.esm_hf), "--classifier", str(classifier), "--device", "cpu",
    )  # fmt: skip
    _only_line(predict, 2, f"{classifier}: {HOSTILE_CLASSIFIERS[case]}")
    assert not out.exists()
    converted = tmp_path / "converted.safetensors"
    convert = run_cli("convert-classifier", str(classifier), str(converted))
    _only_line(convert, 2, HOSTILE_CLASSIFIERS[case])
    assert not converted.exists()


def test_scores_that_overflow_to_nan_fail_the_run_without_results(tiny_set, coding_reads, tmp_path):
    """Finite weights so large that fp32 overflows: NaN probabilities were written as 'others' calls."""
    width = TINY_DNABERT_CONFIG.hidden_size + TINY_ESM2_CONFIG.embed_dim
    model = random_upstream_classifier(width, seed=3)
    with torch.no_grad():
        model.hidden_layer.weight.mul_(1e37)
        model.output_layer.weight.mul_(1e37)
    save_as_upstream_pickle(model, tmp_path / "500_model.pth")
    out = tmp_path / "out"
    result = run_cli(
        "-q", "predict", str(coding_reads), "-o", str(out), "--dnabert", str(tiny_set.dnabert),
        "--esm", str(tiny_set.esm_hf), "--classifier", str(tmp_path / "500_model.pth"), "--device", "cpu",
    )  # fmt: skip
    _only_line(result, 1, "the classifier produced NaN/Inf scores for")
    assert not (out / "prediction_results.txt").exists() and not (out / "run.json").exists()


def test_encoder_weights_with_nan_fail_the_run_in_one_line_that_names_the_weights(
    tiny_set, coding_reads, tmp_path
):
    """The message used to say only 'try --precision fp32', also to a run that was fp32 already."""
    from safetensors.torch import load_file, save_file

    esm = tmp_path / "esm"
    shutil.copytree(tiny_set.esm_hf, esm)
    state = load_file(esm / "model.safetensors")
    state["esm.encoder.layer.0.output.dense.bias"][:] = float("nan")
    save_file(state, esm / "model.safetensors")
    out = tmp_path / "out"
    result = run_cli(
        "-q", "predict", str(coding_reads), "-o", str(out), "--dnabert", str(tiny_set.dnabert),
        "--esm", str(esm), "--classifier", str(tiny_set.classifier), "--device", "cpu",
    )  # fmt: skip
    _only_line(result, 1, "produced NaN/Inf embeddings")
    assert "the model's weights hold NaN/Inf" in result.stderr
    assert not (out / "prediction_results.txt").exists() and not (out / "run.json").exists()


def test_tokenizer_past_the_embedding_is_refused_before_any_work(
    tiny_set, coding_reads, tmp_path, monkeypatch
):
    """Ids past the embedding rows were an IndexError in each worker, retried 3 times (exit 1)."""
    dnabert = shutil.copytree(tiny_set.dnabert, tmp_path / "dnabert")
    tokenizer = json.loads((dnabert / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    for token in list(vocab)[5:]:  # the same number of tokens, ids past the 512 rows
        vocab[token] += 1000
    (dnabert / "tokenizer.json").write_text(json.dumps(tokenizer))
    esm = shutil.copytree(tiny_set.esm_hf, tmp_path / "esm")
    with open(esm / "vocab.txt", "a") as handle:
        handle.write("<extra>\n")

    def no_run(*_args):
        raise AssertionError("the run started: the check must come before any worker")

    monkeypatch.setattr(predict_module, "_run", no_run)
    for bad_dnabert, bad_esm, where in ((dnabert, tiny_set.esm_hf, dnabert), (tiny_set.dnabert, esm, esm)):
        out = tmp_path / "out"
        result = run_cli(
            "-q", "predict", str(coding_reads), "-o", str(out), "--dnabert", str(bad_dnabert),
            "--esm", str(bad_esm), "--classifier", str(tiny_set.classifier), "--device", "cpu",
        )  # fmt: skip
        _only_line(result, 2, "the tokenizer emits token ids up to")
        assert str(where) in result.stderr and not out.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["predict", "--demo", "--workers", "0", "-o", "x"], "Invalid value for '--workers'"),
        (["predict", "--demo", "--workers", "100000000", "-o", "x"], "not in the range 1<=x<=1024"),
        (["predict", "--demo", "--threads", "99999", "-o", "x"], "not in the range 1<=x<=1024"),
        (["predict", "--demo", "--threads", str(2**31), "-o", "x"], "not in the range 1<=x<=1024"),
        (["predict", "--demo", "--workers-per-gpu", "17", "-o", "x"], "not in the range 1<=x<=16"),
        (
            ["embed", "r.fa", "--weights", "w", "-o", "e.h5"],
            "Missing option '--model'. Choose from: dnabert-s, esm2",
        ),
        (["predict", "reads.fa"], "Missing option '-o' / '--outdir'"),
        (["predict", "--demo", "--chunk-length", "400", "-o", "x"], "Invalid value for '--chunk-length'"),
        (["no-such-command"], "No such command 'no-such-command'"),
    ],
)
def test_usage_errors_are_one_line_that_points_to_help(args, needle, tmp_path):
    """click prints usage, a hint, a blank line and the error: four lines; the rule is one."""
    result = run_cli(*args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.code == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and needle in lines[0] and "--help'" in lines[0]


def test_a_rebuild_without_the_checkpoints_says_what_it_needs(tiny_set, reads_fasta, tmp_path):
    """``predict --engines DIR --rebuild`` on a folder that needs building, without all three checkpoints:
    the build's own line (as ``embed`` gives it); it used to say "missing ... (or --engines ENGINE_DIR)"
    with --engines given."""
    out = tmp_path / "out"
    result = run_cli("predict", str(reads_fasta), "-o", str(out), "--engines", str(tmp_path / "engines"),
                     "--rebuild", "--esm", str(tiny_set.esm_hf), "--device", "cpu")  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.code == 2 and lines == [
        "error: --rebuild needs the checkpoints to build from: missing --dnabert, --classifier"
    ], result.stderr
    assert not out.exists()


def test_the_program_alone_shows_its_help_not_an_error():
    """``virnucpro-trt`` with no command printed ``error: Usage: ...`` and the whole help on stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "virnucpro_trt"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("Usage: virnucpro-trt") and "predict" in proc.stdout


def test_a_line_break_in_a_path_is_shown_escaped_not_cut(tmp_path):
    """The error line was cut at the path's line break: ``error: input /data/a`` and no reason."""
    result = run_cli("prepare", str(tmp_path / "bad\nname.fa"), "-o", str(tmp_path / "o"))
    _assert_one_line_error(result, f"input {tmp_path}/bad\\nname.fa: no such file")


def test_a_closed_stdin_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "virnucpro_trt", "prepare", "-", "-o", str(tmp_path / "o")],
        stdin=None, capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: __import__("os").close(0),
    )  # fmt: skip
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and errors == [
        "error: input -: stdin is closed; pipe the reads in or give a file"
    ]
    assert "unexpected" not in proc.stderr and not (tmp_path / "o").exists()


def test_a_name_too_long_for_the_file_system_and_an_empty_log_file_are_usage_errors(tmp_path):
    result = run_cli("prepare", "-", "-o", str(tmp_path / ("x" * 300)))
    _assert_one_line_error(result, "File name too long")
    result = run_cli("prepare", "-", "-o", str(tmp_path / "o"), "--log-file", "")
    _assert_one_line_error(result, "--log-file: an empty path; name the output")  # was: IsADirectoryError
    assert "unexpected" not in result.stderr and not (tmp_path / "o").exists()


def test_a_log_line_naming_a_path_that_is_not_utf8_is_written_escaped(tmp_path):
    """With ``--log-file``, every record naming such a path printed "--- Logging error ---" and a
    traceback, on success too (the log file's strict UTF-8)."""
    reads = tmp_path / "r.fa"
    reads.write_text(GOOD)
    out = tmp_path / "o\udcff"  # the byte 0xff as Python keeps an undecodable file name
    log = tmp_path / "run.log"
    result = run_cli("prepare", str(reads), "-o", str(out), "--log-file", str(log))
    assert result.code == 0 and "Logging error" not in result.stderr, result.stderr
    assert "o\\udcff" in log.read_text(encoding="utf-8")


def test_usage_errors_stay_one_line_with_a_click_that_has_no_no_args_is_help_error():
    """click 8.1 (which pyproject allows) has no ``NoArgsIsHelpError``: naming it in an ``except`` clause
    raised an AttributeError for every usage error, a traceback instead of the one line."""
    script = (
        "import click.exceptions\n"
        "del click.exceptions.NoArgsIsHelpError\n"
        "from virnucpro_trt.cli.main import main\n"
        "main(['predict', 'reads.fa'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().startswith("error: Missing option '-o' / '--outdir'")
