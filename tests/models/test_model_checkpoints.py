"""Checkpoint loading: errors for broken or foreign layouts, safe unpickling, weight hashes."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import types
from pathlib import Path

import pytest
import torch

from virnucpro_trt.errors import CheckpointError, UnsafePickleError
from virnucpro_trt.files.digests import sha256_of_files as weights_sha256
from virnucpro_trt.models.checkpoint_io import load_weight_files, safe_torch_load
from virnucpro_trt.models.checkpoints import load_dnabert, load_esm2
from virnucpro_trt.models.random_checkpoints import (
    TINY_ESM2_CONFIG,
    random_esm2,
    write_esm_fairesm_checkpoint,
)


def _copy(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target)
    return target


def test_loaders_return_fp32_cpu_eval_models(dnabert_dir: Path, esm_hf_dir: Path) -> None:
    for model, _, _ in (load_dnabert(dnabert_dir), load_esm2(esm_hf_dir)):
        assert not model.training
        assert all(
            p.dtype == torch.float32 and p.device.type == "cpu" and not p.requires_grad
            for p in model.parameters()
        )


def test_dnabert_missing_key_is_named(tmp_path: Path, dnabert_dir: Path) -> None:
    folder = _copy(dnabert_dir, tmp_path / "broken")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["encoder.layer.1.mlp.wo.bias"]
    state["encoder.layer.0.extra.weight"] = torch.zeros(2)
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(
        CheckpointError,
        match=r"missing keys encoder\.layer\.1\.mlp\.wo\.bias.*unexpected keys encoder\.layer\.0\.extra",
    ):
        load_dnabert(folder)


def test_esm_missing_key_is_named(tmp_path: Path, esm_hf_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = _copy(esm_hf_dir, tmp_path / "broken")
    state = load_file(folder / "model.safetensors")
    del state["esm.encoder.layer.1.output.dense.bias"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys layers\.1\.fc2\.bias"):
        load_esm2(folder)


def _legacy_norm_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LayerNorm parameters named as transformers 5.x's save_pretrained writes them (gamma/beta)."""
    return {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in state.items()
    }


def test_folders_saved_by_transformers_5_load_as_the_same_model(
    tmp_path: Path, dnabert_dir: Path, esm_hf_dir: Path
) -> None:
    from safetensors.torch import load_file, save_file

    esm = _copy(esm_hf_dir, tmp_path / "esm")
    state = _legacy_norm_names(load_file(esm / "model.safetensors"))
    assert any(k.endswith("LayerNorm.gamma") for k in state)
    shared = [k for k in state if k.endswith("rotary_embeddings.inv_freq")]
    inv_freq = state[shared[0]]
    for key in shared:  # one wildcard key for the layers' one inv_freq, as transformers 5.x writes it
        del state[key]
    state["esm.encoder.layer.*.attention.self.rotary_embeddings.inv_freq"] = inv_freq
    save_file(state, esm / "model.safetensors")
    dnabert = _copy(dnabert_dir, tmp_path / "dnabert")
    dna_state = _legacy_norm_names(torch.load(dnabert / "pytorch_model.bin", weights_only=True))
    assert any(k.endswith("LayerNorm.gamma") for k in dna_state)
    torch.save(dna_state, dnabert / "pytorch_model.bin")
    for load, original, legacy in ((load_esm2, esm_hf_dir, esm), (load_dnabert, dnabert_dir, dnabert)):
        expected, _, expected_info = load(original)
        found, _, info = load(legacy)
        assert info["ignored_keys"] == expected_info["ignored_keys"]
        pairs = zip(expected.state_dict().items(), found.state_dict().items(), strict=True)
        for (name, want), (_, got) in pairs:
            assert torch.equal(want, got), name
    gamma = state["esm.encoder.layer.0.LayerNorm.gamma"].clone()
    save_file(dict(state, **{"esm.encoder.layer.0.LayerNorm.weight": gamma}), esm / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"both esm\.encoder\.layer\.0\.LayerNorm\.gamma and"):
        load_esm2(esm)


def test_esm_special_ids_given_as_null_are_vocab_txts_and_a_disagreeing_one_is_refused(
    tmp_path: Path, esm_hf_dir: Path
) -> None:
    expected, tokenizer, _ = load_esm2(esm_hf_dir)
    folder = _copy(esm_hf_dir, tmp_path / "null_ids")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "mask_token_id": None, "pad_token_id": None}))
    found, _, _ = load_esm2(folder)
    assert found.config == expected.config and found.config.mask_id == tokenizer.mask_id
    (folder / "config.json").write_text(json.dumps({**config, "pad_token_id": 7}))
    with pytest.raises(CheckpointError, match=r"pad_token_id 7 disagrees with vocab.txt \(1\)"):
        load_esm2(folder)


@pytest.mark.parametrize("kind", ["esm", "dnabert"])
def test_a_hostile_model_type_is_quoted_short(
    kind: str, tmp_path: Path, dnabert_dir: Path, esm_hf_dir: Path
) -> None:
    """A 4,000-digit model_type was quoted whole: one line, but 4 KB of it."""
    folder = _copy(esm_hf_dir if kind == "esm" else dnabert_dir, tmp_path / kind)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "7" * 4000}))
    with pytest.raises(CheckpointError, match=r"model_type is '7{50,60}\.\.\., expected") as caught:
        (load_esm2 if kind == "esm" else load_dnabert)(folder)
    assert len(str(caught.value)) < 300


def test_wrong_layouts_say_what_was_found(
    tmp_path: Path, dnabert_dir: Path, esm_hf_dir: Path, esm_fairesm_file: Path
) -> None:
    with pytest.raises(CheckpointError, match="model_type is 'bert', expected 'esm'"):
        load_esm2(dnabert_dir)
    with pytest.raises(CheckpointError, match="model_type is 'esm', expected 'bert'"):
        load_dnabert(esm_hf_dir)
    # A BERT config over ESM weights: the keys give it away.
    folder = _copy(esm_hf_dir, tmp_path / "mixed")
    (folder / "config.json").write_text((dnabert_dir / "config.json").read_text())
    (folder / "tokenizer.json").write_text((dnabert_dir / "tokenizer.json").read_text())
    with pytest.raises(
        CheckpointError, match=r"not a DNABERT-S/DNABERT-2 checkpoint.*found esm\.contact_head"
    ):
        load_dnabert(folder)
    with pytest.raises(CheckpointError, match="no such ESM-2 checkpoint"):
        load_esm2(tmp_path / "absent.pt")
    empty = _copy(dnabert_dir, tmp_path / "noweights")
    (empty / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        load_dnabert(empty)


def test_config_that_disagrees_with_tensors(tmp_path: Path, dnabert_dir: Path, esm_hf_dir: Path) -> None:
    folder = _copy(dnabert_dir, tmp_path / "dn")
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"num_hidden_layers 3 \(tensors: 2\)"):
        load_dnabert(folder)
    folder = _copy(esm_hf_dir, tmp_path / "esm")
    config = json.loads((folder / "config.json").read_text())
    config["num_attention_heads"] = 8
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"inv_freq has 8 frequencies .* 8 heads of 64 give head size 8"
    ):
        load_esm2(folder)


def test_inconsistent_per_layer_inv_freq_is_refused(tmp_path: Path, esm_hf_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = _copy(esm_hf_dir, tmp_path / "esm")
    state = load_file(folder / "model.safetensors")
    state["esm.encoder.layer.1.attention.self.rotary_embeddings.inv_freq"] *= 2
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="inv_freq differs"):
        load_esm2(folder)


class _Payload:
    """A pickle that would run a shell command when loaded without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save(
        {"cfg": {"model": argparse.Namespace(encoder_layers=2)}, "model": {}, "x": _Payload(marker)},
        tmp_path / "evil.pt",
    )
    with pytest.raises(UnsafePickleError, match="refused to unpickle"):
        load_esm2(tmp_path / "evil.pt")
    folder = tmp_path / "evil_dnabert"
    folder.mkdir()
    torch.save({"w": _Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(UnsafePickleError):
        load_weight_files([folder / "pytorch_model.bin"])
    assert not marker.exists()


def test_fair_esm_legacy_args_and_esm1b(tmp_path: Path, esm_fairesm_file: Path, as_tensors) -> None:
    data = safe_torch_load(esm_fairesm_file, {("argparse", "Namespace"): types.SimpleNamespace})
    args = argparse.Namespace(**vars(data["cfg"]["model"]))
    legacy = {"args": args, "model": data["model"]}
    torch.save(legacy, tmp_path / "legacy.pt")
    modern, tokenizer, _ = load_esm2(esm_fairesm_file)
    old, _, _ = load_esm2(tmp_path / "legacy.pt")
    ids, mask = as_tensors(tokenizer.encode_batch(["MKVLA", "GG"]), tokenizer.pad_id)
    with torch.no_grad():
        assert torch.equal(modern(ids, mask), old(ids, mask))
    esm1b = dict(data["model"], **{"encoder.sentence_encoder.embed_positions.weight": torch.zeros(3, 64)})
    torch.save({"cfg": {"model": args}, "model": esm1b}, tmp_path / "esm1b.pt")
    with pytest.raises(CheckpointError, match="ESM-1/ESM-1b"):
        load_esm2(tmp_path / "esm1b.pt")


def test_fp16_fair_esm_file_loads_as_fp32(tmp_path: Path) -> None:
    reference = random_esm2(TINY_ESM2_CONFIG, seed=2)
    path = write_esm_fairesm_checkpoint(tmp_path / "half.pt", model=reference, dtype=torch.float16)
    model, _, _ = load_esm2(path)
    assert model.layers[0].qkv.weight.dtype == torch.float32
    assert torch.equal(model.rotary.inv_freq, reference.rotary.inv_freq)  # fp16-rounded values survive fp16


def test_weights_sha256_identifies_contents(tmp_path: Path, esm_hf_dir: Path) -> None:
    _, _, info = load_esm2(esm_hf_dir)
    digest = weights_sha256(info["weight_files"])
    copy = _copy(esm_hf_dir, tmp_path / "copy")
    assert weights_sha256([copy / "model.safetensors"]) == digest
    assert len(digest) == 64
    with (copy / "model.safetensors").open("r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 1]))
    assert weights_sha256([copy / "model.safetensors"]) != digest
