"""The upstream classifier checkpoint: safe loading, exact numerics, refusal of code-running pickles."""

from __future__ import annotations

import io
import os
import pickle
import sys
import zipfile

import numpy as np
import pytest
import torch

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
