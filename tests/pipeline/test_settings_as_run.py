"""The settings a run records (run.json, ``.work``) and fingerprints are its choices as they act: naming
a default is the same run as leaving it out, so a rerun resumes, a finished run is found and ``merge``
takes the parts; a choice that changes the result bytes still changes the fingerprint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from virnucpro_trt.settings import EncoderSettings, PredictSettings, settings_difference, settings_fingerprint


def _settings(engines: Path | None = None, **encoders) -> PredictSettings:
    models = (None, None, None) if engines else ("d", "e", "c")
    encoder_settings = EncoderSettings(**encoders)
    return PredictSettings("in.fa", Path("out"), *models, encoders=encoder_settings, engines=engines)


def test_a_named_default_fingerprints_as_the_default():
    plain = _settings().fingerprint("cpu")
    for spelled in (
        {"precision": "fp32"}, {"backend": "torch"}, {"max_batch_tokens": 4096}, {"device": "cpu"},
        {"device": "auto", "precision": "fp32", "backend": "torch", "max_batch_tokens": 4096},
    ):  # fmt: skip
        assert _settings(**spelled).fingerprint("cpu") == plain, spelled
    cuda = _settings().fingerprint("cuda")
    assert _settings(device="cuda:1", max_batch_tokens=32768).fingerprint("cuda") == cuda
    assert cuda != plain  # CPU and GPU results are not the same bytes
    assert _settings(max_batch_tokens=4096).fingerprint("cuda") != cuda  # not the CUDA default


def test_what_changes_results_still_changes_the_fingerprint():
    plain = _settings().fingerprint("cpu")
    for other in ({"precision": "bf16"}, {"max_batch_tokens": 2048}, {"backend": "onnxruntime"}):
        assert _settings(**other).fingerprint("cpu") != plain, other
    built = _settings(backend="onnxruntime")
    assert _settings(backend="onnxruntime", precision="fp32").fingerprint("cpu") == built.fingerprint("cpu")
    # engines built into OUTDIR/engines run an unset budget at the set's own: not the device's default
    spelled = _settings(backend="onnxruntime", max_batch_tokens=4096)
    assert spelled.fingerprint("cpu") != built.fingerprint("cpu")
    assert dataclasses.replace(_settings(), chunk_length=300).fingerprint("cpu") != plain


def test_an_engine_sets_identity_stands_for_its_backend_and_precision():
    """With ``--engines`` the run refuses a backend or precision other than the set's, and the set's
    identity is part of the resume key: naming them or not is the same run."""
    engines = Path("engines")
    plain = _settings(engines).fingerprint("cpu")
    assert _settings(engines, backend="onnxruntime", precision="fp32").fingerprint("cpu") == plain
    assert _settings(engines, max_batch_tokens=2048).fingerprint("cpu") != plain


def test_the_recorded_settings_name_their_first_difference():
    a, b = _settings().to_json("cpu"), _settings(precision="bf16").to_json("cpu")
    assert settings_difference(a, b) == "encoders.precision: None vs bf16"
    assert settings_fingerprint(a) == _settings(precision="fp32").fingerprint("cpu")
    moved = dataclasses.replace(_settings(), dnabert="elsewhere", outdir=Path("o2")).to_json("cpu")
    assert settings_difference(a, moved) == "fingerprints differ"  # paths are not result settings
