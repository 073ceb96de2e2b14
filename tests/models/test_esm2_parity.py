"""ESM-2: native encoder vs transformers.EsmModel (the parity reference), across checkpoint formats."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from virnucpro_trt.errors import CheckpointError
from virnucpro_trt.models.checkpoints import load_esm2
from virnucpro_trt.models.esm2 import ESM2_CONFIGS, MASK_RATIO_TRAIN, Esm2Config, default_inv_freq
from virnucpro_trt.models.random_checkpoints import (
    TINY_ESM2_CONFIG,
    random_esm2,
    random_proteins,
    write_esm_hf_checkpoint,
)
from virnucpro_trt.models.tokenization import ProteinTokenizer

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

ATOL = 1e-5


def hf_model(folder: Path):
    return transformers.EsmModel.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()


def protein_batch(as_tensors, seed: int = 0, count: int = 5, with_mask: bool = False):
    tokenizer = ProteinTokenizer()
    proteins = random_proteins(count, 3, 40, seed=seed)
    if with_mask:
        proteins[1] = proteins[1][:2] + "<mask>" + proteins[1][3:]
    return as_tensors(tokenizer.encode_batch(proteins), tokenizer.pad_id)


def hf_outputs(model, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' last hidden state and the VirNucPro pooling of it, computed row by row."""
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    lengths = mask.sum(-1).tolist()
    pooled = torch.stack([hidden[b, 1 : n - 1].mean(0) for b, n in enumerate(lengths)])
    return hidden, pooled


def assert_matches_hf(encoder, reference, ids, mask) -> None:
    ref_hidden, ref_pooled = hf_outputs(reference, ids, mask)
    with torch.no_grad():
        hidden = encoder.last_hidden_state(ids, mask)
        pooled = encoder(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(hidden[real], ref_hidden[real], atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled, ref_pooled, atol=ATOL, rtol=0)


def test_named_configs() -> None:
    big = Esm2Config.named("facebook/esm2_t36_3B_UR50D")
    assert big == ESM2_CONFIGS["t36_3B"] == Esm2Config.named("esm2_t36_3B_UR50D")
    assert (big.num_layers, big.embed_dim, big.attention_heads, big.head_dim, big.ffn_dim) == (
        36,
        2560,
        40,
        64,
        10240,
    )
    assert [ESM2_CONFIGS[name].num_layers for name in ESM2_CONFIGS] == [6, 12, 30, 33, 36, 48]
    with pytest.raises(KeyError, match="t36_3B"):
        Esm2Config.named("t99_1T")


def test_hf_folder_matches_transformers(esm_hf_dir: Path, as_tensors) -> None:
    encoder, _, info = load_esm2(esm_hf_dir)
    assert info["layout"] == "EsmForMaskedLM" and info["inv_freq"] == "checkpoint"
    ids, mask = protein_batch(as_tensors)
    assert not mask.all(), "the batch must contain padding"
    assert_matches_hf(encoder, hf_model(esm_hf_dir), ids, mask)


def test_fair_esm_file_matches_hf_folder(esm_hf_dir: Path, esm_fairesm_file: Path, as_tensors) -> None:
    from_hf, _, _ = load_esm2(esm_hf_dir)
    from_pt, _, info = load_esm2(esm_fairesm_file)
    assert info["format"] == "fair-esm"
    ids, mask = protein_batch(as_tensors, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(from_pt(ids, mask), from_hf(ids, mask), atol=ATOL, rtol=0)
    assert_matches_hf(from_pt, hf_model(esm_hf_dir), ids, mask)


@pytest.mark.parametrize("location", ["per-layer", "model"])
def test_inv_freq_comes_from_the_checkpoint(tmp_path: Path, location: str, as_tensors) -> None:
    base = random_esm2(TINY_ESM2_CONFIG, seed=3)
    perturbed = random_esm2(TINY_ESM2_CONFIG, seed=3)
    perturbed.rotary.inv_freq = perturbed.rotary.inv_freq * 1.37
    write_esm_hf_checkpoint(tmp_path / "base", model=base, inv_freq_location=location)
    write_esm_hf_checkpoint(tmp_path / "perturbed", model=perturbed, inv_freq_location=location)

    loaded_base, _, _ = load_esm2(tmp_path / "base")
    loaded, _, info = load_esm2(tmp_path / "perturbed")
    assert info["inv_freq"] == "checkpoint"
    assert torch.equal(loaded.rotary.inv_freq, perturbed.rotary.inv_freq)
    ids, mask = protein_batch(as_tensors, seed=2)
    with torch.no_grad():
        assert (loaded(ids, mask) - loaded_base(ids, mask)).abs().max() > 1e-3
    assert_matches_hf(loaded, hf_model(tmp_path / "perturbed"), ids, mask)


def test_frozen_rotary_tables_are_the_computed_ones(as_tensors) -> None:
    """Engines freeze cos/sin before export: same tables, same outputs, same state dict; a sequence
    longer than the frozen tables is refused, never silently cut."""
    model = random_esm2(TINY_ESM2_CONFIG, seed=5)
    model.rotary.inv_freq = model.rotary.inv_freq * 1.37  # the checkpoint's frequencies are what count
    ids, mask = protein_batch(as_tensors, seed=3)
    keys = list(model.state_dict())
    with torch.no_grad():
        before = model(ids, mask)
        computed = model.rotary.tables(40, torch.device("cpu"))
        model.rotary.freeze(40)
        for got, want in zip(model.rotary.tables(ids.shape[1], torch.device("cpu")), computed, strict=True):
            assert torch.equal(got, want[: ids.shape[1]])
        assert torch.equal(model(ids, mask), before)
        assert list(model.state_dict()) == keys
        with pytest.raises(RuntimeError):
            model.rotary.tables(41, torch.device("cpu"))
    model.to(torch.bfloat16)  # casts leave the frozen tables fp32, like inv_freq
    assert all(t.dtype == torch.float32 for t in model.rotary.frozen)


def test_inv_freq_is_computed_when_absent(tmp_path: Path) -> None:
    write_esm_hf_checkpoint(tmp_path / "none", seed=4, inv_freq_location="none")
    encoder, _, info = load_esm2(tmp_path / "none")
    assert info["inv_freq"] == "computed"
    assert torch.equal(encoder.rotary.inv_freq, default_inv_freq(TINY_ESM2_CONFIG.head_dim))


def test_checkpoint_inv_freq_is_fp16_rounded_not_recomputed(esm_hf_dir: Path) -> None:
    encoder, _, _ = load_esm2(esm_hf_dir)
    exact = default_inv_freq(TINY_ESM2_CONFIG.head_dim)
    assert torch.equal(encoder.rotary.inv_freq, exact.half().float())
    assert not torch.equal(encoder.rotary.inv_freq, exact)


def test_token_dropout_scaling_without_and_with_mask(esm_hf_dir: Path, as_tensors) -> None:
    encoder, tokenizer, _ = load_esm2(esm_hf_dir)
    ids, mask = protein_batch(as_tensors, with_mask=True)
    is_mask = ids == tokenizer.mask_id
    assert is_mask.sum() == 1 and is_mask[1].any()  # row 1 has one <mask>, the others none
    real = mask.bool()
    with torch.no_grad():
        embedded = encoder.embed(ids, real)
        table = encoder.embed_tokens.weight
    for row in range(ids.shape[0]):
        masked_fraction = int(is_mask[row].sum()) / int(mask[row].sum())
        expected = table[ids[row]] * (1 - MASK_RATIO_TRAIN) / (1 - masked_fraction)
        expected[is_mask[row] | ~real[row]] = 0  # <mask> rows and padded rows are zeroed
        torch.testing.assert_close(embedded[row], expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(embedded[0][real[0]], table[ids[0][real[0]]] * 0.88, atol=1e-6, rtol=1e-6)
    assert_matches_hf(encoder, hf_model(esm_hf_dir), ids, mask)


def test_a_config_that_leaves_fields_out_means_what_transformers_reads(
    tmp_path: Path, as_tensors, caplog
) -> None:
    """A hand-written config.json without ``token_dropout`` and ``layer_norm_eps`` gets EsmConfig's
    defaults (false, 1e-12), as transformers loads it; ESM-2's own values (true, 1e-5) scaled every
    embedding by 0.88. The embeddings then differ from ESM-2's, so it is warned about."""
    folder = write_esm_hf_checkpoint(tmp_path / "minimal", seed=6)
    config = json.loads((folder / "config.json").read_text())
    assert config.pop("token_dropout") is True and config.pop("layer_norm_eps") == 1e-5
    (folder / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING"):
        encoder, _, info = load_esm2(folder)
    assert info["config"]["token_dropout"] is False and info["config"]["layer_norm_eps"] == 1e-12
    assert (
        "config.json states no token_dropout or layer_norm_eps: read as transformers reads it "
        "(token_dropout False, layer_norm_eps 1e-12), not as ESM-2's own values (token_dropout True, "
        "layer_norm_eps 1e-05)" in caplog.text
    ), caplog.text
    assert_matches_hf(encoder, hf_model(folder), *protein_batch(as_tensors, seed=6))


@pytest.mark.parametrize("theta", [500000.0, "10000", True])
def test_a_rotary_base_other_than_esm2s_is_refused(tmp_path: Path, theta: object) -> None:
    folder = write_esm_hf_checkpoint(tmp_path / "theta", seed=6)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rope_theta": theta}))
    with pytest.raises(CheckpointError, match=r"rope_theta is .*base 10000, and no other is supported"):
        load_esm2(folder)
    (folder / "config.json").write_text(json.dumps({**config, "rope_theta": 10000.0}))  # transformers 5
    load_esm2(folder)


@pytest.mark.parametrize("weights_format", ["safetensors", "bin"])
def test_sharded_checkpoints(tmp_path: Path, weights_format: str, as_tensors) -> None:
    single = write_esm_hf_checkpoint(tmp_path / "single", seed=5)
    sharded = write_esm_hf_checkpoint(tmp_path / "sharded", seed=5, shards=3, weights_format=weights_format)
    index = (
        "model.safetensors.index.json" if weights_format == "safetensors" else "pytorch_model.bin.index.json"
    )
    assert (sharded / index).is_file()
    reference, _, _ = load_esm2(single)
    encoder, _, info = load_esm2(sharded)
    assert len(info["weight_files"]) == 3
    ids, mask = protein_batch(as_tensors, seed=3)
    with torch.no_grad():
        assert torch.equal(encoder(ids, mask), reference(ids, mask))
    assert_matches_hf(encoder, hf_model(sharded), ids, mask)


def _as_hub_cache(folder: Path, cache: Path, repo_id: str) -> Path:
    """``folder`` laid out as huggingface_hub's cache keeps a download: each snapshot file is a relative
    link into the repository's ``blobs/`` folder, named by its content hash."""
    import hashlib

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        (repo / "blobs" / digest).write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(Path("../../blobs") / digest)
    return snapshot


@pytest.mark.parametrize("weights_format", ["safetensors", "bin"])
def test_a_sharded_checkpoint_in_the_hugging_face_cache_loads_by_its_id(
    tmp_path: Path, weights_format: str, as_tensors, monkeypatch
) -> None:
    from huggingface_hub import constants

    from virnucpro_trt.models.resolve import resolve_model

    sharded = write_esm_hf_checkpoint(tmp_path / "sharded", seed=5, shards=2, weights_format=weights_format)
    snapshot = _as_hub_cache(sharded, tmp_path / "hub", "facebook/esm2_t36_3B_UR50D")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    found = resolve_model("facebook/esm2_t36_3B_UR50D", "esm2")
    assert found.resolve() == snapshot.resolve()
    encoder, _, info = load_esm2(found)
    assert len(info["weight_files"]) == 2
    reference, _, _ = load_esm2(sharded)
    ids, mask = protein_batch(as_tensors, seed=3)
    with torch.no_grad():
        assert torch.equal(encoder(ids, mask), reference(ids, mask))


def test_a_shard_index_naming_a_path_or_a_folder_is_refused(tmp_path: Path) -> None:
    import json

    from virnucpro_trt.errors import UserError

    sharded = write_esm_hf_checkpoint(tmp_path / "sharded", seed=5, shards=2)
    index = sharded / "model.safetensors.index.json"
    plan = json.loads(index.read_text())
    first = next(iter(plan["weight_map"]))
    (sharded / "sub").mkdir()
    refusals = (("../sharded/x.safetensors", "not a plain file name"), ("sub", "not a regular file"))
    for name, message in refusals:
        plan["weight_map"][first] = name
        index.write_text(json.dumps(plan))
        with pytest.raises(UserError, match=message):
            load_esm2(sharded)


def test_bare_esmmodel_layout_without_prefix(tmp_path: Path, esm_hf_dir: Path, as_tensors) -> None:
    from safetensors.torch import load_file, save_file

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "vocab.txt"):
        (bare / name).write_bytes((esm_hf_dir / name).read_bytes())
    state = load_file(esm_hf_dir / "model.safetensors")
    state = {k.removeprefix("esm."): v for k, v in state.items() if not k.startswith("lm_head.")}
    save_file(state, bare / "model.safetensors")
    encoder, _, info = load_esm2(bare)
    reference, _, _ = load_esm2(esm_hf_dir)
    assert info["layout"] == "EsmModel"
    ids, mask = protein_batch(as_tensors, seed=4)
    with torch.no_grad():
        assert torch.equal(encoder(ids, mask), reference(ids, mask))


def test_a_fine_tuned_sequence_classifier_loads_its_encoder(
    tmp_path: Path, esm_hf_dir: Path, as_tensors
) -> None:
    """``EsmForSequenceClassification`` (``esm.`` + a ``classifier.`` head) holds the same encoder: its
    head is set aside as the masked-LM head is (it was refused as unexpected keys: helper-48)."""
    from safetensors.torch import load_file, save_file

    tuned = shutil.copytree(esm_hf_dir, tmp_path / "tuned")
    state = load_file(esm_hf_dir / "model.safetensors")
    state = {k: v for k, v in state.items() if not k.startswith("lm_head.")}
    width = state["esm.embeddings.word_embeddings.weight"].shape[1]
    state.update({
        "classifier.dense.weight": torch.zeros(width, width), "classifier.dense.bias": torch.zeros(width),
        "classifier.out_proj.weight": torch.zeros(2, width), "classifier.out_proj.bias": torch.zeros(2),
    })  # fmt: skip
    save_file(state, tuned / "model.safetensors")
    encoder, _, _ = load_esm2(tuned)
    reference, _, _ = load_esm2(esm_hf_dir)
    ids, mask = protein_batch(as_tensors, seed=6)
    with torch.no_grad():
        assert torch.equal(encoder(ids, mask), reference(ids, mask))


def test_a_cache_ref_leading_out_of_the_cache_is_refused(tmp_path: Path, monkeypatch) -> None:
    """``refs/main`` holding ``../../../elsewhere`` made the lookup load a folder outside the Hugging Face
    cache under the repository's name (helper-42): refused, naming the repository."""
    from huggingface_hub import constants

    from virnucpro_trt.errors import ModelNotFoundError
    from virnucpro_trt.models.resolve import resolve_model

    folder = write_esm_hf_checkpoint(tmp_path / "model", seed=5)
    snapshot = _as_hub_cache(folder, tmp_path / "hub", "facebook/esm2_t6_8M_UR50D")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_model("facebook/esm2_t6_8M_UR50D", "esm").resolve() == snapshot.resolve()
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(folder, elsewhere)
    (snapshot.parent.parent / "refs" / "main").write_text("../../../elsewhere")  # snapshots/<ref>
    assert (snapshot.parent / "../../../elsewhere").resolve() == elsewhere.resolve()
    with pytest.raises(ModelNotFoundError, match="ref leads outside its snapshots"):
        resolve_model("facebook/esm2_t6_8M_UR50D", "esm")
    other = _as_hub_cache(folder, tmp_path / "hub", "someone/other-model")  # another repository's snapshot
    ref = f"../../models--someone--other-model/snapshots/{other.name}"
    (snapshot.parent.parent / "refs" / "main").write_text(ref)
    assert (snapshot.parent / ref).resolve() == other.resolve()
    with pytest.raises(ModelNotFoundError, match="ref leads outside its snapshots"):
        resolve_model("facebook/esm2_t6_8M_UR50D", "esm")
