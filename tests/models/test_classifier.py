"""The upstream classifier checkpoint: safe loading, exact numerics, refusal of code-running pickles."""

from __future__ import annotations

import io
import os
import pickle
import re
import resource
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from virnucpro_trt.errors import CheckpointError, UnsafePickleError
from virnucpro_trt.models.classifier import (
    MLPClassifier,
    check_classifier_width,
    classify,
    labels_from_probabilities,
    load_classifier_weights,
    save_classifier_safetensors,
)
from virnucpro_trt.models.random_classifier import (
    MLPClassifier as UpstreamClass,
)
from virnucpro_trt.models.random_classifier import (
    random_upstream_classifier,
    save_as_upstream_pickle,
    write_upstream_classifier,
)


def _upstream_probs(path, x: torch.Tensor) -> torch.Tensor:
    """What upstream does: torch.load the whole module (trusted here: we wrote it) and softmax."""
    main = sys.modules["__main__"]
    main.MLPClassifier = UpstreamClass
    try:
        model = torch.load(path, weights_only=False).eval()
    finally:
        del main.MLPClassifier
    with torch.no_grad():
        return torch.softmax(model(x), dim=1)


def test_upstream_pickle_loads_and_matches_upstream_numerics(tmp_path):
    path = write_upstream_classifier(tmp_path / "500_model.pth", input_dim=96, seed=3)
    weights = load_classifier_weights(path)
    assert (weights.input_dim, weights.hidden_dim, weights.num_classes) == (96, 512, 2)
    x = torch.randn(33, 96, generator=torch.Generator().manual_seed(1))
    expected = _upstream_probs(path, x).numpy()
    got = classify(MLPClassifier.from_weights(weights), x.numpy())
    np.testing.assert_array_equal(got, expected)


def test_pickle_records_main_class_like_upstream(tmp_path):
    path = write_upstream_classifier(tmp_path / "m.pth", input_dim=8)
    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    assert b"__main__" in data and b"MLPClassifier" in data
    with pytest.raises(Exception):  # noqa: B017 - torch's own safe loader refuses it too
        torch.load(path, weights_only=True)


def test_the_upstream_class_pickled_from_a_module_other_than_main_loads_the_same(tmp_path, monkeypatch):
    """``torch.save(model)`` with MLPClassifier imported from a module names that module, not __main__."""
    model = random_upstream_classifier(24, hidden_dim=16, seed=4)
    reference = tmp_path / "main.pth"
    save_as_upstream_pickle(model, reference)
    monkeypatch.setattr(UpstreamClass, "__module__", "train_virnucpro")
    monkeypatch.setitem(sys.modules, "train_virnucpro", type(sys)("train_virnucpro"))
    monkeypatch.setattr(sys.modules["train_virnucpro"], "MLPClassifier", UpstreamClass, raising=False)
    moved = tmp_path / "moved.pth"
    torch.save(model, moved)
    with zipfile.ZipFile(moved) as zf:
        assert b"train_virnucpro" in zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    expected, got = load_classifier_weights(reference), load_classifier_weights(moved)
    assert expected.tensors.keys() == got.tensors.keys()
    for name, tensor in expected.tensors.items():
        assert torch.equal(tensor, got.tensors[name]), name


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_refuses_pickle_that_runs_code(tmp_path, monkeypatch):
    path = tmp_path / "evil.pth"
    # A classifier whose state smuggles a call to os.system.
    model = random_upstream_classifier(16)
    model.payload = _Evil()
    main = sys.modules["__main__"]
    UpstreamClass.__module__ = "__main__"
    main.MLPClassifier = UpstreamClass
    try:
        torch.save(model, path)
    finally:
        UpstreamClass.__module__ = "virnucpro_trt.models.random_classifier"
        del main.MLPClassifier
    called = []
    monkeypatch.setattr(os, "system", lambda cmd: called.append(cmd))
    with pytest.raises(UnsafePickleError, match=r"posix\.system|os\.system"):
        load_classifier_weights(path)
    assert called == []


def test_refuses_pickle_of_builtins_eval_plain_or_in_an_archive(tmp_path):
    class EvalPayload:
        def __reduce__(self):
            return (eval, ("1+1",))

    buf = io.BytesIO()
    pickle.dump({"x": EvalPayload()}, buf, protocol=2)
    plain = tmp_path / "evil2.pth"
    plain.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="legacy"):  # refused by format, before unpickling
        load_classifier_weights(plain)
    archive = tmp_path / "evil3.pth"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("evil3/data.pkl", buf.getvalue())
    with pytest.raises(UnsafePickleError, match="eval"):
        load_classifier_weights(archive)


def test_state_dict_and_safetensors_round_trip(tmp_path):
    model = random_upstream_classifier(40, seed=5)
    sd_path = tmp_path / "sd.pth"
    torch.save(model.state_dict(), sd_path)
    from_sd = load_classifier_weights(sd_path)
    st_path = tmp_path / "clf.safetensors"
    save_classifier_safetensors(from_sd, st_path)
    from_st = load_classifier_weights(st_path)
    x = np.random.default_rng(0).standard_normal((9, 40)).astype(np.float32)
    a = classify(MLPClassifier.from_weights(from_sd), x)
    b = classify(MLPClassifier.from_weights(from_st), x)
    np.testing.assert_array_equal(a, b)
    assert from_st.bn_eps == pytest.approx(1e-5)


def test_the_same_weights_convert_to_the_same_bytes_in_every_process(tmp_path):
    """safetensors orders the metadata by a per-process hash map; the files are written with a sorted
    header, so converting (or building) again gives the same file and the same SHA-256 (a finished
    run then recognises its classifier). Each conversion runs in its own process."""
    import subprocess
    import sys

    model = random_upstream_classifier(40, seed=5)
    torch.save(model.state_dict(), tmp_path / "sd.pth")
    script = (
        "import sys; from virnucpro_trt.models.classifier import load_classifier_weights as L, "
        "save_classifier_safetensors as S; S(L(sys.argv[1]), sys.argv[2], 'sd.pth')"
    )
    outputs = [tmp_path / f"c{i}.safetensors" for i in range(4)]
    for out in outputs:
        subprocess.run([sys.executable, "-c", script, str(tmp_path / "sd.pth"), str(out)], check=True)
    assert len({out.read_bytes() for out in outputs}) == 1
    header = outputs[0].read_bytes()[8:]
    assert header.startswith(b'{"__metadata__":{"bn_eps":"1e-05","format":"virnucpro-classifier",')
    assert load_classifier_weights(outputs[0]).bn_eps == pytest.approx(1e-5)


def test_wrong_layout_is_a_clear_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(CheckpointError, match=r"missing hidden_layer\.weight"):
        load_classifier_weights(path)
    not_a_checkpoint = tmp_path / "junk.pth"
    not_a_checkpoint.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError):
        load_classifier_weights(not_a_checkpoint)


def test_width_check_names_both_sides(tmp_path):
    weights = load_classifier_weights(write_upstream_classifier(tmp_path / "m.pth", input_dim=3328))
    check_classifier_width(weights, 768, 2560, "m.pth")
    with pytest.raises(CheckpointError, match=r"3328 input features.*768 \(DNABERT-S\) \+ 1280 \(ESM-2\)"):
        check_classifier_width(weights, 768, 1280, "m.pth")


def test_ties_go_to_others():
    probs = np.array([[0.5, 0.5], [0.4, 0.6], [0.6, 0.4]], dtype=np.float32)
    assert labels_from_probabilities(probs).tolist() == [0, 1, 0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the H200 host)")
def test_classify_on_the_gpu_matches_the_cpu(tmp_path):
    """GPU predict workers keep the classifier on their GPU (fp32, TF32 off): same scores as the CPU
    to float32 rounding, the same labels away from ties, at the real width and in several chunks."""
    from virnucpro_trt.runtime.device import configure_fp32_reference

    configure_fp32_reference()
    path = write_upstream_classifier(tmp_path / "500_model.pth", input_dim=3328, seed=5)
    model = MLPClassifier.from_weights(load_classifier_weights(path))
    x = torch.randn(9000, 3328, generator=torch.Generator().manual_seed(2)).numpy()
    cpu = classify(model, x)
    gpu = classify(MLPClassifier.from_weights(load_classifier_weights(path)).to("cuda:0"), x)
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=2e-6)
    clear = np.abs(cpu[:, 1] - 0.5) > 1e-4
    assert (labels_from_probabilities(gpu)[clear] == labels_from_probabilities(cpu)[clear]).all()


# --- hostile classifier files: every value checked at load, one CheckpointError naming file and field ---


def _pickled(tmp_path, name: str, edit) -> Path:
    """Upstream's pickled module, changed by ``edit(model)`` before it is saved."""
    model = random_upstream_classifier(16, seed=2)
    edit(model)
    path = tmp_path / name
    save_as_upstream_pickle(model, path)
    return path


def _safetensors(tmp_path, name: str, edit=None, bn_eps: str = "1e-05") -> Path:
    """Our safetensors form, with its tensors changed by ``edit(tensors)`` and its ``bn_eps`` text."""
    model = random_upstream_classifier(16, seed=2)
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items() if k != "bn1.num_batches_tracked"}
    if edit is not None:
        edit(tensors)
    path = tmp_path / name
    save_file(
        tensors, str(path), metadata={"format": "virnucpro-classifier", "version": "1", "bn_eps": bn_eps}
    )
    return path


def _set(tensor: torch.Tensor, value: float) -> None:
    with torch.no_grad():
        tensor.view(-1)[3 % tensor.numel()] = value


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize(
    "name", ["hidden_layer.weight", "bn1.bias", "bn1.running_var", "output_layer.weight", "output_layer.bias"]
)
def test_non_finite_weights_are_refused_in_both_formats(tmp_path, name: str, value: float) -> None:
    """NaN/Inf anywhere in the weights gave NaN scores written as results with exit 0."""
    module, attr = name.split(".")
    pickled = _pickled(tmp_path, "m.pth", lambda m: _set(getattr(getattr(m, module), attr), value))
    converted = _safetensors(tmp_path, "m.safetensors", lambda t: _set(t[name], value))
    for path in (pickled, converted):
        with pytest.raises(
            CheckpointError, match=rf"^{re.escape(str(path))}: '{re.escape(name)}' holds 1 NaN/Inf"
        ):
            load_classifier_weights(path)


def test_weights_that_overflow_fp32_and_negative_variances_are_refused(tmp_path) -> None:
    """A float64 state dict whose values only become Inf in fp32; a variance below zero (NaN under sqrt)."""
    model = random_upstream_classifier(16, seed=2)
    state = {k: v.double() for k, v in model.state_dict().items() if k != "bn1.num_batches_tracked"}
    state["bn1.weight"][0] = 1e300
    torch.save(state, tmp_path / "f64.pth")
    with pytest.raises(CheckpointError, match=r"'bn1\.weight' holds 1 NaN/Inf value\(s\) \(in fp32\)"):
        load_classifier_weights(tmp_path / "f64.pth")
    negative = _safetensors(tmp_path, "neg.safetensors", lambda t: _set(t["bn1.running_var"], -0.5))
    with pytest.raises(CheckpointError, match=r"'bn1\.running_var' holds negative variances"):
        load_classifier_weights(negative)


@pytest.mark.parametrize(
    ("eps", "shown"),
    [
        ("abc", r"'abc' \(str\)"),
        ("1e-5", r"'1e-5' \(str\)"),  # a number written as text is still not a number in a pickle
        ((1e-5,), "a value of type tuple"),
        (None, "a value of type NoneType"),
        (True, r"True \(bool\)"),
        (-1.0, r"-1\.0 \(float\)"),
        (0.0, r"0\.0 \(float\)"),
        (0, r"0 \(int\)"),
        (float("nan"), r"nan \(float\)"),
        (float("inf"), r"inf \(float\)"),
        pytest.param(10**400, "a value of type int", id="huge-int"),
        (torch.tensor([1e-5, 1e-5]), "tensor of shape"),
        (1e300, r"1e\+300 \(float\), more than 0\.1"),  # accepted before: every score became alike
    ],
)
def test_pickled_bn_eps_must_be_a_finite_positive_number(tmp_path, eps, shown: str) -> None:
    """A string or tuple eps ended as 'unexpected failure' (exit 1); a negative one crashed every worker
    three times; NaN/Inf/0 gave NaN scores with exit 0."""
    path = _pickled(tmp_path, "eps.pth", lambda m: setattr(m.bn1, "eps", eps))
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: bn1\.eps is .*{shown}"):
        load_classifier_weights(path)


@pytest.mark.parametrize(
    "text",
    [
        "nan", "NaN", "inf", "-inf", "abc", "", "-1e-05", "0", "0.0", "1e-400", "1e300",
        # float() takes these, the C++ host did not (and it took hex, which float() does not): both now
        # read a decimal number as repr writes it, nothing else (helper-64's audit)
        " 1e-05", "1e-05 ", "1e-05\n", "1_0e-6", "\u0661e-5", "0x1p-17",
    ],
)  # fmt: skip
def test_safetensors_bn_eps_must_be_a_finite_positive_number(tmp_path, text: str) -> None:
    path = _safetensors(tmp_path, "eps.safetensors", bn_eps=text)
    with pytest.raises(
        CheckpointError, match=rf"^{re.escape(str(path))}: metadata bn_eps is {re.escape(repr(text))}"
    ):
        load_classifier_weights(path)


def test_usable_eps_values_are_kept(tmp_path) -> None:
    bound = _pickled(tmp_path, "bound.pth", lambda m: setattr(m.bn1, "eps", 0.1))  # MAX_BN_EPS itself
    assert load_classifier_weights(bound).bn_eps == 0.1
    assert load_classifier_weights(_safetensors(tmp_path, "a.safetensors", bn_eps="0.001")).bn_eps == 1e-3
    assert load_classifier_weights(_pickled(tmp_path, "d.pth", lambda m: None)).bn_eps == 1e-5


def _replace_state(module: torch.nn.Module, key: str, value) -> None:
    module.__dict__[key] = value


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (
            lambda m: _replace_state(m.hidden_layer, "in_features", "wide"),
            r"hidden_layer\.in_features is 'wide'",
        ),
        (
            lambda m: _replace_state(m.output_layer, "out_features", 3),
            r"output_layer\.out_features is 3 \(int\)",
        ),
        (lambda m: _replace_state(m.bn1, "num_features", 1.5), r"bn1\.num_features is 1\.5"),
        (lambda m: _replace_state(m, "_modules", ["hidden_layer"]), r"_modules is a list"),
        (lambda m: _replace_state(m.bn1, "_buffers", "running_mean"), r"'bn1'\._buffers is a str"),
        (
            lambda m: _replace_state(m.hidden_layer, "_parameters", {1: 2}),
            r"'hidden_layer'\._parameters is a dict",
        ),
        (lambda m: _replace_state(m, "_modules", {**m._modules, "bn1": m.dropout}), r"'bn1' is a .*Dropout"),
        (lambda m: m.bn1.register_buffer("running_mean", torch.zeros(512, dtype=torch.long)), "int64 values"),
        (lambda m: _replace_state(m.bn1, "_buffers", {**m.bn1._buffers, "running_var": 1.0}), "not a tensor"),
    ],
)
def test_pickled_attributes_of_the_wrong_type_are_bad_input(tmp_path, edit, needle: str) -> None:
    """Each of these ended as an AttributeError/TypeError ('unexpected failure', exit 1) or was ignored."""
    path = _pickled(tmp_path, "attr.pth", edit)
    with pytest.raises(CheckpointError, match=needle):
        load_classifier_weights(path)


def test_a_module_that_contains_itself_is_read_without_recursing(tmp_path) -> None:
    """Only the three direct submodules are read: a cycle in the module tree cannot recurse forever."""
    path = _pickled(tmp_path, "cycle.pth", lambda m: _replace_state(m, "_modules", {**m._modules, "self": m}))
    assert load_classifier_weights(path).input_dim == 16


@pytest.mark.parametrize("form", ["module", "state_dict"])
def test_a_zero_stride_view_is_refused_before_it_is_copied(tmp_path, form: str) -> None:
    """One stored float viewed as 10**9 x 16 (stride 0): a 20 KB file that cost 64 GB when copied."""
    model = random_upstream_classifier(16, seed=2)
    huge = torch.zeros(1, 1).expand(10**9, 16)
    path = tmp_path / f"{form}.pth"
    if form == "module":
        model.hidden_layer.weight = torch.nn.Parameter(huge, requires_grad=False)
        save_as_upstream_pickle(model, path)
    else:
        state = dict(model.state_dict())
        state["hidden_layer.weight"] = huge
        torch.save(state, path)
    assert path.stat().st_size < 1 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match=r"shows more elements than its storage of 1 holds"):
        load_classifier_weights(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10  # KiB


def test_shapes_are_checked_before_the_tensors_are_copied(tmp_path, monkeypatch) -> None:
    """A wrong shape is reported from the loaded views, before any fp32 copy is made."""
    model = random_upstream_classifier(16, seed=2)
    state = dict(model.state_dict())
    state["output_layer.weight"] = torch.zeros(2, 7)
    torch.save(state, tmp_path / "shape.pth")
    copies = []
    monkeypatch.setattr(torch.Tensor, "clone", lambda self, *a, **k: copies.append(self) or self)
    with pytest.raises(
        CheckpointError, match=r"'output_layer\.weight' has shape \(2, 7\), expected \(2, 512\)"
    ):
        load_classifier_weights(tmp_path / "shape.pth")
    assert copies == []
    for bad, needle in [(torch.zeros(5), r"expected \[hidden, input\]"), (torch.zeros(0, 16), r"\(0, 16\)")]:
        state["hidden_layer.weight"] = bad
        torch.save(state, tmp_path / "hidden.pth")
        with pytest.raises(CheckpointError, match=needle):
            load_classifier_weights(tmp_path / "hidden.pth")


def test_the_chunk_length_hint_reads_no_fifo(tmp_path) -> None:
    """`predict --engines DIR` reads DIR/classifier.safetensors's metadata for a hint before the engine
    set is checked: a FIFO there blocked the run for ever, deaf to Ctrl-C and SIGTERM (the safetensors
    call holds the GIL while open() waits; helper-64's audit). The hint reads regular files only; the
    engine check then refuses the FIFO in one line. Run in a child, which the timeout can kill."""
    import subprocess

    fifo = tmp_path / "classifier.safetensors"
    os.mkfifo(fifo)
    code = (
        "import sys; from pathlib import Path\n"
        "from virnucpro_trt.models.classifier import classifier_source\n"
        "print(classifier_source(Path(sys.argv[1])))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail("classifier_source blocked on a FIFO")
    assert done.returncode == 0 and done.stdout.strip() == "None", done.stderr[-2000:]
