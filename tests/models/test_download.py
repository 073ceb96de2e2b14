"""`download`: one weight format per model, chosen as the loaders choose; the hub itself is faked here."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import huggingface_hub
import pytest

from virnucpro_trt.models.resolve import download_model

ESM_3B_FILES = [
    "config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "README.md",
    "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
    "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json",
    "tf_model.h5",
]  # fmt: skip
DNABERT_S_FILES = ["config.json", "tokenizer.json", "bert_layers.py", "pytorch_model.bin", "README.md"]


def _fake_hub(monkeypatch, tmp_path: Path, files: list[str]) -> list[list[str] | None]:
    """snapshot_download that 'downloads' the repo's files matching allow_patterns into one snapshot."""
    calls: list[list[str] | None] = []
    snapshot = tmp_path / "snapshot"

    def snapshot_download(repo_id: str, allow_patterns: list[str] | None = None, **_: object) -> str:
        calls.append(allow_patterns)
        snapshot.mkdir(exist_ok=True)
        for name in files:
            if allow_patterns is None or any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (snapshot / name).write_text(name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


@pytest.mark.parametrize(
    ("files", "tries", "weights"),
    [
        (ESM_3B_FILES, 1, {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}),
        (DNABERT_S_FILES, 2, {"pytorch_model.bin"}),
        (["config.json", "tf_model.h5"], 3, {"tf_model.h5"}),
    ],
    ids=["safetensors-first", "bin-when-no-safetensors", "everything-when-neither"],
)
def test_a_download_fetches_one_weight_format_with_the_model_files(
    monkeypatch, tmp_path: Path, files: list[str], tries: int, weights: set[str]
) -> None:
    calls = _fake_hub(monkeypatch, tmp_path, files)
    folder = download_model("org/model")
    assert len(calls) == tries
    got = {p.name for p in folder.iterdir()}
    assert {n for n in got if n.endswith((".safetensors", ".bin", ".h5"))} == weights
    assert {"config.json"} <= got
    if files is ESM_3B_FILES:
        assert {"model.safetensors.index.json", "vocab.txt", "tokenizer_config.json"} <= got
    if files is DNABERT_S_FILES:
        assert "tokenizer.json" in got


@pytest.mark.parametrize(
    ("kind", "spec", "named"),
    [
        ("esm", "facebook/esm2_t6_8M_UR50D", "download facebook/esm2_t6_8M_UR50D"),
        ("esm", "esm2_t12_35M_UR50D", "download facebook/esm2_t12_35M_UR50D"),
        ("esm", "esm2_t12_35M_UR50D", "esm2_t12_35M_UR50D.pt in"),
        ("esm", "no/such-place/here", "download facebook/esm2_t36_3B_UR50D"),
        ("dnabert", "someone/DNABERT-2-117M", "download someone/DNABERT-2-117M"),
    ],
)
def test_a_missing_model_is_named_in_how_to_get_it(tmp_path: Path, monkeypatch, kind, spec, named) -> None:
    """The hint names the model asked for (it named ESM-2 3B whatever ESM-2 was missing: helper-43)."""
    from huggingface_hub import constants

    from virnucpro_trt.errors import ModelNotFoundError
    from virnucpro_trt.models.resolve import resolve_model

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=re.escape(named)):
        resolve_model(spec, kind)
