"""Load DNABERT-S (or a DNABERT-2 masked-LM checkpoint) into :class:`DnabertEncoder` without remote code.

Accepted layouts, told apart by their keys:

* ``dnabert-s``: the DNABERT-S ``BertModel`` file, keys without prefix (``embeddings.word_embeddings...``);
* ``dnabert2-mlm``: the DNABERT-2 ``BertForMaskedLM`` file, keys prefixed ``bert.`` plus an unused
  ``cls.predictions.*`` head.

``pooler.*`` is unused by VirNucPro (it mean-pools the last layer) and ignored, as are the integer index
buffers some saves contain. Anything else that is missing, extra or of the wrong shape is a
:class:`CheckpointError` naming the keys.

Every check reads names, shapes and dtypes only, and all of them run before a tensor is converted to
fp32 or the module is built: converting is what costs memory, and a hostile file (1,500 extra keys
viewing one storage, a config of absurd sizes) must be refused before it costs any.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from virnucpro_trt.errors import CheckpointError, shown
from virnucpro_trt.models.checkpoint_io import (
    StateDict,
    check_fp32_bytes_fit_files,
    check_state_dict,
    check_state_shapes,
    embedding_shape,
    hf_weight_files,
    is_present,
    layer_count,
    load_weight_files,
    read_json,
    summarize,
    to_float32,
    with_current_norm_names,
)
from virnucpro_trt.models.dnabert import DnabertConfig, DnabertEncoder, dnabert_state_shapes
from virnucpro_trt.models.tokenization import DnaTokenizer, check_token_ids_fit

_IGNORED = ("pooler.", "embeddings.position_ids", "embeddings.token_type_ids")
_SIGNATURE = "embeddings.word_embeddings.weight"
_LAYER_KEY = r"^encoder\.layer\.(\d+)\."


def load_dnabert(path: str | Path) -> tuple[DnabertEncoder, DnaTokenizer, dict[str, Any]]:
    """Load DNABERT-S (fp32, CPU, eval) from a folder; returns (model, tokenizer, info).

    The folder holds ``config.json``, ``pytorch_model.bin`` or ``model.safetensors`` (or a shard index) and
    ``tokenizer.json``. ``info`` holds ``layout``, ``weight_files`` (for the weights identity),
    ``config`` and ``ignored_keys``.
    """
    folder = Path(path)
    config, tokenizer = _config_and_tokenizer(folder)
    files = hf_weight_files(folder)
    raw = with_current_norm_names(load_weight_files(files), str(folder))
    state, layout, ignored = _strip_layout(raw, folder)
    what = f"{folder}: DNABERT-S weights ({layout} layout)"
    _cross_check(state, config, folder)
    expected = dnabert_state_shapes(config)
    check_state_shapes(state, expected, what)
    check_fp32_bytes_fit_files(expected, files, what)
    check_token_ids_fit(tokenizer, int(state[_SIGNATURE].shape[0]), str(folder / "tokenizer.json"))

    state = to_float32(state)
    with torch.device("meta"):
        model = DnabertEncoder(config)
    check_state_dict(state, model, what)
    model.load_state_dict(state, strict=True, assign=True)
    model.eval().requires_grad_(False)
    info = {
        "format": "huggingface",
        "layout": layout,
        "path": str(folder),
        "weight_files": [str(p) for p in files],
        "config": asdict(config),
        "ignored_keys": sorted(ignored),
    }
    return model, tokenizer, info


def precheck_dnabert(path: str | Path) -> int:
    """Without reading the weights: every id of the folder's ``tokenizer.json`` must index a row of the
    word embedding config.json declares (the loader checks the tensors against config.json, and the ids
    against the tensors). Cheap, so a run's main process can refuse the pair before any worker starts.
    Returns the embedding width config.json declares (what the loaded model gives, or its load fails)."""
    folder = Path(path)
    config, tokenizer = _config_and_tokenizer(folder)
    check_token_ids_fit(tokenizer, config.vocab_size, str(folder / "tokenizer.json"))
    return config.hidden_size


def _config_and_tokenizer(folder: Path) -> tuple[DnabertConfig, DnaTokenizer]:
    """The folder's config.json and tokenizer.json, both checked."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a DNABERT-S model folder")
    cfg = read_json(folder / "config.json")
    if cfg.get("model_type", "bert") != "bert":
        found = shown(repr(cfg.get("model_type")))
        raise CheckpointError(f"{folder / 'config.json'}: model_type is {found}, expected 'bert' (DNABERT-S)")
    try:
        config = DnabertConfig.from_hf_config(cfg)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise CheckpointError(f"{folder / 'config.json'}: not a usable BERT config ({reason})") from None
    tokenizer_file = folder / "tokenizer.json"
    if not is_present(tokenizer_file):
        raise CheckpointError(f"{folder}: no tokenizer.json")
    return config, DnaTokenizer.from_file(tokenizer_file)


def _strip_layout(raw: StateDict, folder: Path) -> tuple[StateDict, str, list[str]]:
    """Detect the layout from the keys; return the encoder's tensors, the layout name and ignored keys."""
    if f"bert.{_SIGNATURE}" in raw:
        layout, prefix = "dnabert2-mlm", "bert."
    elif _SIGNATURE in raw:
        layout, prefix = "dnabert-s", ""
    else:
        raise CheckpointError(
            f"{folder}: not a DNABERT-S/DNABERT-2 checkpoint: expected key '{_SIGNATURE}' "
            f"(or 'bert.{_SIGNATURE}'), found {summarize(sorted(raw))}"
        )
    state: StateDict = {}
    ignored: list[str] = []
    for key, tensor in raw.items():
        if prefix and key.startswith("cls."):
            ignored.append(key)
            continue
        name = key.removeprefix(prefix) if key.startswith(prefix) else key
        if name.startswith(_IGNORED):
            ignored.append(key)
        else:
            state[name] = tensor
    return state, layout, ignored


def _cross_check(state: StateDict, config: DnabertConfig, folder: Path) -> None:
    """Compare the shapes the tensors imply with config.json; report every disagreement.

    Shapes only, never values. The layers named by the keys must be 0..N-1 with none absent: one key
    ``encoder.layer.20000000.x`` must not stand for 20 million layers.
    """
    if _SIGNATURE not in state:
        return
    where = f"{folder}: DNABERT-S weights"
    vocab, hidden = embedding_shape(state, _SIGNATURE, _LAYER_KEY, where, "[vocab_size, hidden_size]")
    wo = state.get("encoder.layer.0.mlp.wo.weight")
    found = {
        "num_hidden_layers": (config.num_hidden_layers, layer_count(state, _LAYER_KEY)),
        "hidden_size": (config.hidden_size, hidden),
        "vocab_size": (config.vocab_size, vocab),
        "intermediate_size": (
            config.intermediate_size,
            wo.shape[1] if wo is not None and wo.dim() == 2 else config.intermediate_size,
        ),
    }
    wrong = [f"{name} {said} (tensors: {seen})" for name, (said, seen) in found.items() if said != seen]
    if wrong:
        raise CheckpointError(f"{folder / 'config.json'}: disagrees with the weights: {'; '.join(wrong)}")
