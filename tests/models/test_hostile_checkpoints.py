"""Hostile encoder checkpoints: each is refused in one line (CheckpointError, exit 2), before it costs
memory or time, and never as a traceback, a Rust panic or an "unexpected failure".

The cases come from a black-box audit: tokenizer.json files that make the Rust ``tokenizers`` library
panic, a pytorch_model.bin of many keys viewing one storage, a fair-esm file whose one key claims 20
million layers, malformed fields and configs, a negative LayerNorm epsilon, a vocab.txt that is not a
file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import types
from pathlib import Path
from typing import Any

import pytest
import tokenizers
import torch

from tests.cli.helpers import run_cli
from virnucpro_trt.errors import CheckpointError
from virnucpro_trt.models import dnabert_checkpoint, esm_checkpoint, tokenization
from virnucpro_trt.models.checkpoint_io import safe_torch_load
from virnucpro_trt.models.checkpoints import load_dnabert, load_esm2, precheck_encoder
from virnucpro_trt.models.dnabert import DnabertEncoder, dnabert_state_shapes
from virnucpro_trt.models.esm_checkpoint import fair_esm_state_shapes
from virnucpro_trt.models.random_checkpoints import (
    TINY_DNABERT_CONFIG,
    TINY_ESM2_CONFIG,
    esm_fairesm_state_dict,
    random_esm2,
    write_esm_hf_checkpoint,
)
from virnucpro_trt.models.tokenization import DnaTokenizer

NAMESPACE = {("argparse", "Namespace"): types.SimpleNamespace}


# ----------------------------------------------------------------------------- helpers
def _copy(folder: Path, target: Path) -> Path:
    return Path(shutil.copytree(folder, target))


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _one_line(exc: pytest.ExceptionInfo[CheckpointError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def _fair_esm_parts(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The args (as a plain dict) and the state dict of a fair-esm file written by the test helpers."""
    data = safe_torch_load(path, NAMESPACE)
    return dict(vars(data["cfg"]["model"])), dict(data["model"])


def _save_fair_esm(path: Path, args: dict[str, Any], model: dict[Any, Any]) -> Path:
    torch.save({"cfg": {"model": argparse.Namespace(**args)}, "model": model}, path)
    return path


def _never(name: str):
    """A stand-in for something that must not run before every check has passed."""

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError(f"{name} ran before the checkpoint was refused")

    return refuse


# ----------------------------------------------------------------------------- 1. tokenizer panics
def _undefined_special(data: dict[str, Any]) -> None:
    data["post_processor"]["special_tokens"].pop("[CLS]")


def _precompiled(charsmap: str):
    def edit(data: dict[str, Any]) -> None:
        data["normalizer"] = {"type": "Precompiled", "precompiled_charsmap": charsmap}

    return edit


def _template_twice(data: dict[str, Any]) -> None:
    template = data["post_processor"]
    data["post_processor"] = {"type": "Sequence", "processors": [template, template]}


def _prefix_longer_than_a_merge(data: dict[str, Any]) -> None:
    data["model"]["continuing_subword_prefix"] = "##"  # the merges' second tokens are bases, 1 byte


TOKENIZER_PANICS = {
    "template_undefined_special": (_undefined_special, r"names the special token '\[CLS\]'"),
    "precompiled_garbage": (_precompiled("AAAAAAAAAAAAAAAA"), "'Precompiled' .*normalizer"),
    "precompiled_short": (_precompiled("AQ=="), "'Precompiled' .*normalizer"),
    "template_twice": (_template_twice, "chains 2 TemplateProcessing steps"),
    "prefix_longer_than_a_merge": (_prefix_longer_than_a_merge, "lacks the continuing_subword_prefix '##'"),
}


@pytest.mark.parametrize("case", sorted(TOKENIZER_PANICS))
def test_tokenizer_files_that_make_the_library_panic_are_refused_at_load(
    case: str, dnabert_dir: Path, tmp_path: Path
) -> None:
    """These files panicked in Rust (pyo3 PanicException, a BaseException) at from_str or at the
    first encode, escaping as a traceback with exit 1."""
    edit, message = TOKENIZER_PANICS[case]
    folder = _copy(dnabert_dir, tmp_path / case)
    _edit_json(folder / "tokenizer.json", edit)
    for load in (
        DnaTokenizer.from_file,
        lambda _: load_dnabert(folder),
        lambda _: precheck_encoder("dnabert-s", folder),
    ):
        with pytest.raises(CheckpointError, match=message) as caught:
            load(folder / "tokenizer.json")
        assert "tokenizer.json" in _one_line(caught)


def test_a_prefix_cut_inside_a_character_is_refused_before_the_library_aborts(
    dnabert_dir: Path, tmp_path: Path
) -> None:
    """A one-byte prefix cut off a merge's second token that starts with a two-byte character: the
    library's panic could not even be raised as an exception, and the whole process aborted (exit 134,
    a Python traceback and a Rust backtrace). The static check must refuse it before Rust reads it."""
    folder = _copy(dnabert_dir, tmp_path / "abort")
    path = folder / "tokenizer.json"

    def edit(data: dict[str, Any]) -> None:
        data["model"].update(continuing_subword_prefix="#")
        data["model"]["vocab"]["\u00e9"] = len(data["model"]["vocab"])
        data["model"]["merges"].insert(0, ["A", "\u00e9"])

    _edit_json(path, edit)
    with pytest.raises(CheckpointError, match="lacks the continuing_subword_prefix '#'"):
        tokenization.check_tokenizer_json(json.loads(path.read_text()), str(path))
    for load in (DnaTokenizer.from_file, lambda _: precheck_encoder("dnabert-s", folder)):
        with pytest.raises(CheckpointError, match="lacks the continuing_subword_prefix") as caught:
            load(path)
        assert "tokenizer.json" in _one_line(caught)


@pytest.mark.parametrize(
    "piece",
    [{"SpecialToken": {"id": ["[CLS]"], "type_id": 0}}, {"SpecialToken": {"id": {"[CLS]": 1}, "type_id": 0}}],
)
def test_a_template_naming_a_special_token_by_a_list_is_refused(
    piece: dict[str, Any], dnabert_dir: Path, tmp_path: Path
) -> None:
    """The static check looked the name up in a dict: a list or an object there raised TypeError, an
    "unexpected failure" (exit 1) instead of a refusal."""
    folder = _copy(dnabert_dir, tmp_path / "template")
    _edit_json(folder / "tokenizer.json", lambda data: data["post_processor"]["single"].insert(0, piece))
    with pytest.raises(CheckpointError, match="names the special token") as caught:
        DnaTokenizer.from_file(folder / "tokenizer.json")
    assert "tokenizer.json" in _one_line(caught)


@pytest.mark.parametrize("template", [7, True, {"a": 1}])
def test_a_template_that_is_not_a_list_is_a_checkpoint_error(
    template: Any, dnabert_dir: Path, tmp_path: Path
) -> None:
    """``single`` as a number was iterated by the static check (TypeError: an "unexpected failure");
    it is the library's to refuse, as a CheckpointError naming the file."""
    folder = _copy(dnabert_dir, tmp_path / "template")
    _edit_json(folder / "tokenizer.json", lambda data: data["post_processor"].update(single=template))
    with pytest.raises(CheckpointError) as caught:
        DnaTokenizer.from_file(folder / "tokenizer.json")
    assert "tokenizer.json" in _one_line(caught)


def test_a_sparse_vocabulary_id_is_refused_without_serialising_the_tokenizer(
    dnabert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One vocabulary id of 2**31 in a 35 KB tokenizer.json: the loader serialised the parsed tokenizer
    again (``to_str``) to read its settings, which walks every id up to the largest, and took 8.6 GB
    and 44 s before the ids were checked against the embedding (2**32 - 1: twice that)."""
    folder = _copy(dnabert_dir, tmp_path / "sparse")
    _edit_json(folder / "tokenizer.json", lambda data: data["model"]["vocab"].update(AATTT=2**31))
    from_str = tokenizers.Tokenizer.from_str

    class NeverSerialised:
        def __init__(self, inner: tokenizers.Tokenizer) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            if name in ("to_str", "save"):
                raise AssertionError(f"the file's tokenizer was serialised ({name})")
            return getattr(self._inner, name)

    read = types.SimpleNamespace(from_str=lambda text: NeverSerialised(from_str(text)))
    library = types.SimpleNamespace(Tokenizer=read)
    monkeypatch.setattr(tokenization, "tokenizers", library)
    assert DnaTokenizer.from_file(folder / "tokenizer.json").max_id == 2**31
    monkeypatch.undo()
    for load in (lambda: load_dnabert(folder), lambda: precheck_encoder("dnabert-s", folder)):
        with pytest.raises(
            CheckpointError, match=r"emits token ids up to 2147483648, but the word embedding"
        ):
            load()


@pytest.mark.parametrize("dropout", [0.9, 1, "0.5", True])
def test_bpe_dropout_is_refused_as_it_makes_tokenization_random(
    dropout: Any, dnabert_dir: Path, tmp_path: Path
) -> None:
    """``model.dropout`` 0.9 passed every check and made two identical runs' results differ (helper-42):
    tokenization must be a function of the read. Null or 0 is what trained tokenizers ship."""
    folder = _copy(dnabert_dir, tmp_path / "dropout")
    path = folder / "tokenizer.json"
    for accepted in (None, 0, 0.0):
        _edit_json(path, lambda data, value=accepted: data["model"].update(dropout=value))
        DnaTokenizer.from_file(path)
    _edit_json(path, lambda data: data["model"].update(dropout=dropout))
    for load in (
        DnaTokenizer.from_file,
        lambda _: load_dnabert(folder),
        lambda _: precheck_encoder("dnabert-s", folder),
    ):
        with pytest.raises(CheckpointError, match=r"BPE dropout .* makes tokenization random") as caught:
            load(path)
        assert "tokenizer.json" in _one_line(caught)


@pytest.mark.parametrize("case", sorted(TOKENIZER_PANICS))
def test_a_panic_past_the_static_checks_is_still_a_checkpoint_error(
    case: str, dnabert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The static checks cover the panics we know; any other panic, at load or at the first encode,
    is caught as well (the load-time probe makes it fail at load)."""
    edit, _ = TOKENIZER_PANICS[case]
    path = tmp_path / "tokenizer.json"
    shutil.copy(dnabert_dir / "tokenizer.json", path)
    _edit_json(path, edit)
    monkeypatch.setattr(tokenization, "check_tokenizer_json", lambda *_: None)
    with pytest.raises(CheckpointError, match="the tokenizers library panicked") as caught:
        DnaTokenizer.from_file(path)
    assert str(path) in _one_line(caught)


def test_a_panic_while_encoding_names_the_file(dnabert_dir: Path, tmp_path: Path) -> None:
    """encode_batch is where a worker first uses the tokenizer: a panic there is a CheckpointError."""
    tokenizer = DnaTokenizer.from_file(dnabert_dir / "tokenizer.json")
    data = json.loads((dnabert_dir / "tokenizer.json").read_text())
    _undefined_special(data)
    tokenizer._tokenizer = tokenizers.Tokenizer.from_str(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"encoding failed \(the tokenizers library panicked"):
        tokenizer.encode_batch(["ACGTACGT", "TTGCA"])


def _template_piece_named_by_a_list(data: dict[str, Any]) -> None:
    data["post_processor"]["single"][0]["SpecialToken"]["id"] = ["[CLS]"]


@pytest.mark.parametrize("edit", [_undefined_special, _template_twice, _template_piece_named_by_a_list])
@pytest.mark.parametrize("command", ["embed", "predict"])
def test_cli_with_a_panicking_tokenizer_exits_2_in_one_line(
    command: str, edit, tiny_set, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = _copy(tiny_set.dnabert, tmp_path / "dnabert")
    _edit_json(folder / "tokenizer.json", edit)
    reads = tmp_path / "reads.fa"
    reads.write_text(">r1\nACGTACGTTAGCATCGATCGATCGTAGCTAGCTAGCATCGA\n")
    out = tmp_path / "out"
    if command == "embed":
        args = ["embed", str(reads), "--model", "dnabert-s", "--weights", str(folder), "-o", f"{out}.h5"]
    else:
        args = [
            "predict", str(reads), "-o", str(out), "--dnabert", str(folder), "--esm", str(tiny_set.esm_hf),
            "--classifier", str(tiny_set.classifier),
        ]  # fmt: skip
    result = run_cli(*args, "--device", "cpu")
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr and "unexpected failure" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {folder / 'tokenizer.json'}")
    assert "panicked" not in capfd.readouterr().err  # Rust writes a panic's report to fd 2 itself


# ----------------------------------------------------------------------------- 2. storage aliasing
def test_extra_keys_viewing_one_storage_are_refused_before_any_conversion(
    dnabert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each extra key passes the per-tensor bound (no more elements than its storage), but every one
    was converted to its own fp32 copy before the unexpected keys were reported: 1,500 keys over one
    4 MB fp16 storage peaked at 12 GB. The key set is now checked on names and shapes first."""
    folder = _copy(dnabert_dir, tmp_path / "alias")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    shared = torch.zeros(100_000, dtype=torch.float16)
    state.update({f"extra.{i}": shared for i in range(300)})  # torch.save writes the storage once
    torch.save(state, folder / "pytorch_model.bin")
    monkeypatch.setattr(dnabert_checkpoint, "to_float32", _never("to_float32"))
    with pytest.raises(CheckpointError, match=r"unexpected keys extra\.0, extra\.1, .*\(\+296 more\)"):
        load_dnabert(folder)


def test_layers_viewing_one_layers_tensors_are_refused_by_size(
    dnabert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config of many layers whose keys all view layer 0's storages has every key and shape right,
    and costs a full fp32 copy per layer from a file the size of one: refused by the fp32 total the
    config implies against the files' size."""
    folder = _copy(dnabert_dir, tmp_path / "layers")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    layer0 = {
        k.removeprefix("encoder.layer.0."): v for k, v in state.items() if k.startswith("encoder.layer.0.")
    }
    for index in range(1, 24):
        state.update({f"encoder.layer.{index}.{name}": tensor for name, tensor in layer0.items()})
    torch.save(state, folder / "pytorch_model.bin")
    _edit_json(folder / "config.json", lambda c: c.update(num_hidden_layers=24))
    monkeypatch.setattr(dnabert_checkpoint, "to_float32", _never("to_float32"))
    with pytest.raises(CheckpointError, match="tensors share storage") as caught:
        load_dnabert(folder)
    assert "refused before converting them" in _one_line(caught)


def test_fair_esm_layers_viewing_one_storage_are_refused_by_size(
    esm_fairesm_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args, model = _fair_esm_parts(esm_fairesm_file)
    prefix = "encoder.sentence_encoder.layers."
    layer0 = {k.removeprefix(f"{prefix}0."): v for k, v in model.items() if k.startswith(f"{prefix}0.")}
    for index in range(1, 24):
        model.update({f"{prefix}{index}.{name}": tensor for name, tensor in layer0.items()})
    path = _save_fair_esm(tmp_path / "alias.pt", {**args, "encoder_layers": 24}, model)
    monkeypatch.setattr(esm_checkpoint, "to_float32", _never("to_float32"))
    with pytest.raises(CheckpointError, match="tensors share storage"):
        load_esm2(path)


# ----------------------------------------------------------------------------- 3. layer counts
def test_one_key_claiming_twenty_million_layers_is_refused_before_anything_is_built(
    esm_fairesm_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 73 KB file whose config and one key name claim 20,000,001 layers passed the cross-check (layer
    count = largest index + 1), then ran for minutes building the layers."""
    args, model = _fair_esm_parts(esm_fairesm_file)
    model["encoder.sentence_encoder.layers.20000000.fc1.bias"] = torch.zeros(1)
    path = _save_fair_esm(tmp_path / "dos.pt", {**args, "encoder_layers": 20_000_001}, model)
    monkeypatch.setattr(esm_checkpoint, "to_float32", _never("to_float32"))
    monkeypatch.setattr(esm_checkpoint, "Esm2Encoder", _never("Esm2Encoder"))
    with pytest.raises(CheckpointError, match="layers is 20000001, more than any encoder has"):
        load_esm2(path)


def test_layers_missing_between_the_named_ones_are_refused_before_anything_is_built(
    esm_fairesm_file: Path, dnabert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the layer cap the same trick is a config that agrees with the largest index: every layer
    up to it must have tensors."""
    args, model = _fair_esm_parts(esm_fairesm_file)
    model["encoder.sentence_encoder.layers.40.fc1.bias"] = torch.zeros(1)
    path = _save_fair_esm(tmp_path / "gap.pt", {**args, "encoder_layers": 41}, model)
    folder = _copy(dnabert_dir, tmp_path / "dnabert_gap")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["encoder.layer.40.mlp.wo.bias"] = torch.zeros(1)
    torch.save(state, folder / "pytorch_model.bin")
    _edit_json(folder / "config.json", lambda c: c.update(num_hidden_layers=41))
    for module, encoder in ((esm_checkpoint, "Esm2Encoder"), (dnabert_checkpoint, "DnabertEncoder")):
        monkeypatch.setattr(module, "to_float32", _never("to_float32"))
        monkeypatch.setattr(module, encoder, _never(encoder))
    for load, where in ((load_esm2, path), (load_dnabert, folder)):
        with pytest.raises(
            CheckpointError, match=r"run to 40 but only 3 layers have tensors \(first missing: layer 2\)"
        ):
            load(where)


# ----------------------------------------------------------------------------- 4. malformed fields
FAIR_ESM_FIELDS = {
    "non_tensor_value": (
        lambda a, m: (a, {**m, "encoder.sentence_encoder.layers.0.fc1.bias": 5}),
        r"holds 5 \(int\)",
    ),
    "non_string_key": (lambda a, m: (a, {**m, 7: torch.zeros(1)}), r"a state-dict key is 7 \(int\)"),
    "one_d_embedding": (
        lambda a, m: (a, {**m, "encoder.sentence_encoder.embed_tokens.weight": torch.zeros(33)}),
        r"embed_tokens\.weight has shape \(33,\)",
    ),
    "zero_heads": (lambda a, m: ({**a, "encoder_attention_heads": 0}, m), "attention_heads is 0"),
    "negative_heads": (lambda a, m: ({**a, "encoder_attention_heads": -8}, m), "attention_heads is -8"),
    "string_layers": (lambda a, m: ({**a, "encoder_layers": "2"}, m), r"encoder_layers is '2' \(str\)"),
}


@pytest.mark.parametrize("case", sorted(FAIR_ESM_FIELDS))
def test_malformed_fair_esm_fields_are_refused(case: str, esm_fairesm_file: Path, tmp_path: Path) -> None:
    """These ended as AttributeError / ValueError / ZeroDivisionError: "unexpected failure", exit 1."""
    edit, message = FAIR_ESM_FIELDS[case]
    args, model = edit(*_fair_esm_parts(esm_fairesm_file))
    path = _save_fair_esm(tmp_path / f"{case}.pt", args, model)
    with pytest.raises(CheckpointError, match=message) as caught:
        load_esm2(path)
    assert str(path) in _one_line(caught)


@pytest.mark.parametrize("heads", [0, -8, 7])
def test_config_head_counts_that_do_not_split_the_width_are_refused(
    heads: int, dnabert_dir: Path, esm_hf_dir: Path, tmp_path: Path
) -> None:
    for folder, load in ((dnabert_dir, load_dnabert), (esm_hf_dir, load_esm2)):
        copy = _copy(folder, tmp_path / f"{folder.name}_{heads}")
        _edit_json(copy / "config.json", lambda c: c.update(num_attention_heads=heads))
        with pytest.raises(CheckpointError, match=r"config\.json: not a usable .*heads") as caught:
            load(copy)
        _one_line(caught)


def test_cli_refuses_a_malformed_fair_esm_file_with_exit_2(esm_fairesm_file: Path, tmp_path: Path) -> None:
    args, model = _fair_esm_parts(esm_fairesm_file)
    path = _save_fair_esm(
        tmp_path / "bad.pt", args, {**model, "encoder.sentence_encoder.layers.0.fc1.bias": 5}
    )
    reads = tmp_path / "p.fa"
    reads.write_text(">p1\nMKTAYIAKQRQISFVKSHFSRQ\n")
    result = run_cli(
        "embed", str(reads), "--model", "esm2", "--weights", str(path), "-o", str(tmp_path / "o.h5")
    )
    assert result.code == 2, result.stderr
    assert "unexpected failure" not in result.stderr and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- 5. LayerNorm epsilon
@pytest.mark.parametrize("eps", [-1, 0, 1.0, math.nan, math.inf, "1e-12", True])
def test_encoder_layer_norm_eps_must_be_a_small_positive_number(
    eps: Any, dnabert_dir: Path, esm_hf_dir: Path, tmp_path: Path
) -> None:
    """DNABERT-S took layer_norm_eps -1 (the classifier's epsilon was checked, the encoders' were not)."""
    for folder, load in ((dnabert_dir, load_dnabert), (esm_hf_dir, load_esm2)):
        copy = _copy(folder, tmp_path / folder.name)
        _edit_json(copy / "config.json", lambda c: c.update(layer_norm_eps=eps))
        with pytest.raises(CheckpointError, match=r"layer_norm_eps is .*expected") as caught:
            load(copy)
        _one_line(caught)
        shutil.rmtree(copy)


# ----------------------------------------------------------------------------- 6. vocab.txt
def _dev_zero(path: Path) -> None:
    os.symlink("/dev/zero", path)


def _folder(path: Path) -> None:
    path.mkdir()


def _broken_link(path: Path) -> None:
    os.symlink(path.parent / "absent.txt", path)


@pytest.mark.parametrize(
    "make", [_dev_zero, _folder, _broken_link], ids=["dev_zero", "folder", "broken_link"]
)
def test_a_vocab_txt_that_is_not_a_regular_file_is_refused_not_ignored(
    make, esm_hf_dir: Path, tmp_path: Path
) -> None:
    """A vocab.txt that is /dev/zero (or a folder, or a broken link) was ignored and fair-esm's default
    alphabet used: a present vocabulary that cannot be read must not be replaced silently."""
    folder = _copy(esm_hf_dir, tmp_path / "esm")
    (folder / "vocab.txt").unlink()
    make(folder / "vocab.txt")
    for load in (load_esm2, lambda f: precheck_encoder("esm2", f)):
        with pytest.raises(
            CheckpointError, match=r"vocab\.txt: (not a regular file|a broken link)"
        ) as caught:
            load(folder)
        _one_line(caught)


def test_a_weight_file_name_that_is_not_a_regular_file_is_refused_not_skipped(
    dnabert_dir: Path, tmp_path: Path
) -> None:
    """model.safetensors -> /dev/zero beside a pytorch_model.bin was skipped for the .bin: which weights
    a folder holds must not depend on a name that cannot be read."""
    folder = _copy(dnabert_dir, tmp_path / "dnabert")
    _dev_zero(folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a regular file") as caught:
        load_dnabert(folder)
    _one_line(caught)


# ----------------------------------------------------------------------------- the expected shapes
def test_expected_shapes_are_the_modules_own() -> None:
    """The loaders compare checkpoints with shapes computed from the config, before building anything:
    those must stay what the modules (and the fair-esm writer) actually hold."""
    with torch.device("meta"):
        dnabert = DnabertEncoder(TINY_DNABERT_CONFIG)
    assert dnabert_state_shapes(TINY_DNABERT_CONFIG) == {
        k: tuple(v.shape) for k, v in dnabert.state_dict().items()
    }
    written = esm_fairesm_state_dict(random_esm2(TINY_ESM2_CONFIG))
    prefix = "encoder.sentence_encoder."
    encoder = {
        k.removeprefix(prefix): tuple(v.shape)
        for k, v in written.items()
        if k.startswith(prefix) and not k.endswith("rot_emb.inv_freq")
    }
    assert fair_esm_state_shapes(TINY_ESM2_CONFIG) == encoder


def test_a_file_of_a_hugging_face_esm_folder_is_named_as_such(tiny_set) -> None:
    """``--esm FOLDER/model.safetensors`` (the weights file, not its folder) says to give the folder,
    rather than that the file is no torch.save archive."""
    from virnucpro_trt.models.esm_checkpoint import load_esm2

    for name in sorted(p.name for p in tiny_set.esm_hf.iterdir() if p.is_file()):
        with pytest.raises(CheckpointError, match=r"a file of a Hugging Face model folder; give the folder"):
            load_esm2(tiny_set.esm_hf / name)


def test_messages_show_hostile_values_without_failing_on_them() -> None:
    """A 5000-digit integer's repr raises and a deeply nested list's recurses: a refusal message must not
    (the epsilon check once put ``repr(value)`` in its message; ``shown`` took any value's repr)."""
    from virnucpro_trt.errors import show_value, shown
    from virnucpro_trt.models.config_checks import checked_layer_norm_eps

    nested: list = []
    inner = nested
    for _ in range(100_000):
        inner.append([])
        inner = inner[0]
    assert show_value(10**5000) == "a value of type int" and show_value(nested) == "a value of type list"
    assert shown(10**5000) == "a value of type int" and shown(nested) == "a value of type list"
    assert [shown(v) for v in (None, 7, 0.5, "a b", "a\nb")] == ["None", "7", "0.5", "a b", "'a\\nb'"]
    with pytest.raises(ValueError, match="layer_norm_eps is a value of type int, expected a finite number"):
        checked_layer_norm_eps(10**5000, "layer_norm_eps")


def _add_to_safetensors_header(path: Path, name: str, entry_of_end: Any) -> None:
    """Add ``name`` to a safetensors file's JSON header (its 8-byte length rewritten, the data kept)."""
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    header[name] = entry_of_end(end)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + length :])


def test_a_safetensors_shape_torch_cannot_make_is_a_checkpoint_error(tmp_path: Path) -> None:
    """``shape: [0, 2**63]`` holds no bytes, so safetensors accepts it, and torch's reshape then raised a
    TypeError with its C++ trace in the message: exit 1 from every command (helper-42). It is the file's
    fault: exit 2, one line naming it."""
    folder = write_esm_hf_checkpoint(tmp_path / "esm", seed=3)
    huge = {"dtype": "F32", "shape": [0, 2**63]}
    weights = folder / "model.safetensors"
    _add_to_safetensors_header(weights, "zz", lambda end: {**huge, "data_offsets": [end, end]})
    with pytest.raises(CheckpointError, match=r"model\.safetensors: a tensor its header describes cannot be"):
        load_esm2(folder)
    proteins, out = tmp_path / "p.fa", tmp_path / "out.h5"
    proteins.write_text(">p1\nMKTAYIAKQR\n")
    result = run_cli("embed", str(proteins), "--model", "esm2", "--weights", str(folder), "-o", str(out))
    assert result.code == 2 and result.stderr.count("\n") == 1 and "cannot be made" in result.stderr
    assert not out.exists()
