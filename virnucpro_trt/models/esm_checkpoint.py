"""Load ESM-2 from a Hugging Face folder or a fair-esm ``.pt`` file into :class:`Esm2Encoder`.

Both formats are first renamed to fair-esm's names after its own ``_upgrade_state_dict`` (``layers.N.
self_attn.q_proj``, ``embed_tokens``...), then the separate q/k/v projections are concatenated into the
fused ``qkv`` Linear and the rotary ``inv_freq`` is taken from the checkpoint. Shapes read from the
tensors are cross-checked with the config, so a wrong or inconsistent checkpoint fails with a message
saying what was found instead of loading into something else.

The module is built on the meta device and the tensors are assigned to it: no time is spent on a random
initialisation that would be overwritten, and a 3B model is not held twice in memory.

Every check reads names, shapes and dtypes only, and all of them run before a tensor is converted to
fp32 or anything is built: the config's sizes (:class:`Esm2Config`), the layers the keys name (all of
0..N-1, none absent), the exact key set and shapes in fair-esm names, and the fp32 total against the
files' size (:func:`~virnucpro_trt.models.checkpoint_io.check_fp32_bytes_fit_files`).
"""

from __future__ import annotations

import logging
import re
import types
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from virnucpro_trt.errors import CheckpointError, show_value, shown
from virnucpro_trt.models.checkpoint_io import (
    StateDict,
    check_fp32_bytes_fit_files,
    check_state_dict,
    check_state_shapes,
    check_tensor_entries,
    embedding_shape,
    hf_weight_files,
    is_present,
    layer_count,
    load_weight_files,
    read_json,
    require_regular_file,
    safe_torch_load,
    summarize,
    to_float32,
    with_current_norm_names,
)
from virnucpro_trt.models.config_checks import checked_layer_norm_eps, config_bool, config_int
from virnucpro_trt.models.esm2 import ROTARY_BASE, Esm2Config, Esm2Encoder, default_inv_freq
from virnucpro_trt.models.tokenization import ProteinTokenizer, check_token_ids_fit

log = logging.getLogger(__name__)
# config.json fields whose EsmConfig default (what a file leaving them out means) is not ESM-2's own
# value, which every published ESM-2 config states: field -> (EsmConfig's default, ESM-2's).
_DEFAULT_NOT_ESM2: dict[str, tuple[bool | float, bool | float]] = {
    "token_dropout": (False, True),
    "layer_norm_eps": (1e-12, 1e-5),
}

# Hugging Face EsmModel names -> fair-esm names (applied after the ``esm.`` prefix is removed).
_HF_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^embeddings\.word_embeddings\.", "embed_tokens."),
        (r"^encoder\.layer\.(\d+)\.attention\.self\.query\.", r"layers.\1.self_attn.q_proj."),
        (r"^encoder\.layer\.(\d+)\.attention\.self\.key\.", r"layers.\1.self_attn.k_proj."),
        (r"^encoder\.layer\.(\d+)\.attention\.self\.value\.", r"layers.\1.self_attn.v_proj."),
        (r"^encoder\.layer\.(\d+)\.attention\.self\.rotary_embeddings\.", r"layers.\1.self_attn.rot_emb."),
        (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.self_attn.out_proj."),
        (r"^encoder\.layer\.(\d+)\.attention\.LayerNorm\.", r"layers.\1.self_attn_layer_norm."),
        (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.fc1."),
        (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.fc2."),
        (r"^encoder\.layer\.(\d+)\.LayerNorm\.", r"layers.\1.final_layer_norm."),
        (r"^encoder\.emb_layer_norm_after\.", "emb_layer_norm_after."),
        (r"^rotary_embeddings\.inv_freq$", "rot_emb.inv_freq"),
        # transformers 5.x saves the layers' one shared inv_freq once, under a wildcard layer index.
        (r"^encoder\.layer\.\*\.attention\.self\.rotary_embeddings\.inv_freq$", "rot_emb.inv_freq"),
    )
)
# Heads and bookkeeping tensors the encoder does not use.
_HF_IGNORED = (  # heads on top of the encoder (masked LM, contacts, pooler, a fine-tuned classifier)
    "lm_head.",
    "classifier.",
    "contact_head.",
    "pooler.",
    "embeddings.position_ids",
    "embeddings.position_embeddings.",
)
_FAIR_ESM_IGNORED = ("lm_head.", "contact_head.")
_INV_FREQ = re.compile(r"^(layers\.\d+\.self_attn\.)?rot_emb\.inv_freq$")
_LAYER_KEY = r"^layers\.(\d+)\."


def load_esm2(path: str | Path) -> tuple[Esm2Encoder, ProteinTokenizer, dict[str, Any]]:
    """Load ESM-2 (fp32, CPU, eval) from an HF folder or a fair-esm ``.pt``; returns (model, tokenizer, info).

    ``info`` holds ``format``, ``layout``, ``weight_files`` (for the weights identity), ``config``,
    ``inv_freq`` (``"checkpoint"`` or ``"computed"``) and ``ignored_keys``.
    """
    path = Path(path)
    if path.is_dir():
        state, config, tokenizer, info = _read_hf_folder(path)
    elif is_present(path):
        state, config, tokenizer, info = _read_esm_file(path)
    else:
        raise CheckpointError(f"{path}: no such ESM-2 checkpoint file or folder")
    files = [Path(name) for name in info["weight_files"]]
    state, info["inv_freq"] = _to_encoder_state(state, config, str(path), files)
    check_token_ids_fit(tokenizer, int(state["embed_tokens.weight"].shape[0]), _vocab_source(path))
    with torch.device("meta"):
        model = Esm2Encoder(config)
    check_state_dict(state, model, f"{path}: ESM-2 weights")
    model.load_state_dict(state, strict=True, assign=True)
    model.eval().requires_grad_(False)
    info["config"] = asdict(config)
    return model, tokenizer, info


def precheck_esm2(path: str | Path) -> int | None:
    """Without reading the weights: every id of an HF folder's ``vocab.txt`` must index a row of the
    embedding config.json declares (the loader checks the tensors against config.json, and the ids
    against the tensors). A fair-esm ``.pt`` has no tokenizer file (its alphabet is fair-esm's own,
    checked against the tensors when they are loaded); its archive is read memory-mapped and its keys
    and arguments checked (:func:`_read_fair_esm`), so a file of another kind (the classifier given as
    ``--esm``) is refused here too. Cheap, so a run's main process can refuse a wrong or mismatched
    checkpoint before it reads the input or any worker starts. Returns the embedding width the config or
    the arguments declare (what the loaded model gives, or its load fails); None where nothing is at
    ``path`` (the loader names that)."""
    path = Path(path)
    if path.is_dir():
        config, tokenizer = _hf_config_and_tokenizer(path)
        check_token_ids_fit(tokenizer, config.vocab_size, _vocab_source(path))
        return config.embed_dim
    if is_present(path):
        return _read_esm_file(path)[1].embed_dim
    return None


def _read_esm_file(path: Path) -> tuple[StateDict, Esm2Config, ProteinTokenizer, dict[str, Any]]:
    """A checkpoint given as a file: a fair-esm ``.pt`` (a weight file of an HF folder is refused)."""
    require_regular_file(path)
    if (path.parent / "config.json").is_file() and path.suffix != ".pt":
        raise CheckpointError(
            f"{path}: a file of a Hugging Face model folder; give the folder itself ({path.parent}), "
            "or a fair-esm .pt file"
        )
    return _read_fair_esm(path)


def _vocab_source(path: Path) -> str:
    """Where the tokenizer came from, for messages: the folder's vocab.txt, else the checkpoint."""
    vocab = path / "vocab.txt"
    return str(vocab) if path.is_dir() and is_present(vocab) else str(path)


def _hf_config_and_tokenizer(folder: Path) -> tuple[Esm2Config, ProteinTokenizer]:
    """An HF folder's config.json and vocab.txt (fair-esm's alphabet when it has none), both checked."""
    cfg = read_json(folder / "config.json")
    where = f"{folder / 'config.json'}"
    if cfg.get("model_type") != "esm":
        found = shown(repr(cfg.get("model_type")))
        raise CheckpointError(f"{where}: model_type is {found}, expected 'esm' (ESM-2)")
    if cfg.get("position_embedding_type", "absolute") != "rotary" or cfg.get("emb_layer_norm_before"):
        raise CheckpointError(f"{where}: an ESM-1/ESM-1b configuration (absolute positions), not ESM-2")
    if cfg.get("is_folding_model"):
        raise CheckpointError(f"{where}: an ESMFold model, not an ESM-2 language model")
    vocab = folder / "vocab.txt"
    # Present but not a regular file (a FIFO, /dev/zero, a broken link) is refused by the reader, never
    # replaced by the default alphabet.
    tokenizer = ProteinTokenizer.from_vocab_file(vocab) if is_present(vocab) else ProteinTokenizer()
    return _hf_config(cfg, tokenizer, where), tokenizer


def _read_hf_folder(folder: Path) -> tuple[StateDict, Esm2Config, ProteinTokenizer, dict[str, Any]]:
    config, tokenizer = _hf_config_and_tokenizer(folder)

    files = hf_weight_files(folder)
    raw = with_current_norm_names(load_weight_files(files), str(folder))
    prefixed = any(key.startswith("esm.") for key in raw)
    state, ignored = _hf_to_fair_esm_names(raw, prefixed)
    if "embed_tokens.weight" not in state or "layers.0.self_attn.q_proj.weight" not in state:
        raise CheckpointError(
            f"{folder}: not an ESM-2 Hugging Face checkpoint: expected keys like "
            f"'esm.encoder.layer.0.attention.self.query.weight', found {summarize(sorted(raw))}"
        )
    info = {
        "format": "huggingface",
        "layout": "EsmForMaskedLM" if prefixed else "EsmModel",
        "path": str(folder),
        "weight_files": [str(p) for p in files],
        "ignored_keys": sorted(ignored),
    }
    return state, config, tokenizer, info


def _hf_config(cfg: dict[str, Any], tokenizer: ProteinTokenizer, where: str) -> Esm2Config:
    """EsmConfig fields -> Esm2Config; special ids must agree with vocab.txt.

    A field the file leaves out means what it means to transformers, the format's owner: EsmConfig's
    default (``token_dropout`` false, ``layer_norm_eps`` 1e-12), not ESM-2's values (true, 1e-5), which
    every published ESM-2 config states; so a config leaving them out (a hand-made one) is warned
    about, since its embeddings differ from ESM-2's. A special id given as null is not stated
    (EsmConfig's own default is None), so vocab.txt's is used. A rotary base other than ESM-2's 10000 is
    refused: the model takes ``inv_freq`` from the weights and computes it with that base only when
    they lack it.
    """
    theta = cfg.get("rope_theta", ROTARY_BASE)
    if isinstance(theta, bool) or not isinstance(theta, int | float) or theta != ROTARY_BASE:
        raise CheckpointError(
            f"{where}: rope_theta is {show_value(theta)}; ESM-2 rotates with base {ROTARY_BASE:g}, "
            "and no other is supported"
        )
    if left_out := [field for field in _DEFAULT_NOT_ESM2 if field not in cfg]:
        log.warning(
            "%s states no %s: read as transformers reads it (%s), not as ESM-2's own values (%s), which "
            "every published ESM-2 config states; the embeddings differ from ESM-2's",
            where, " or ".join(left_out),
            ", ".join(f"{f} {_DEFAULT_NOT_ESM2[f][0]}" for f in left_out),
            ", ".join(f"{f} {_DEFAULT_NOT_ESM2[f][1]}" for f in left_out),
        )  # fmt: skip
    cfg = {key: value for key, value in cfg.items() if not (key.endswith("_token_id") and value is None)}
    for field, token_id in (("mask_token_id", tokenizer.mask_id), ("pad_token_id", tokenizer.pad_id)):
        if field in cfg and token_id is not None and cfg[field] != token_id:
            raise CheckpointError(f"{where}: {field} {cfg[field]} disagrees with vocab.txt ({token_id})")
    # A vocabulary without <mask>: -1 never matches an id, so no row is treated as masked.
    vocab_mask_id = tokenizer.mask_id if tokenizer.mask_id is not None else -1
    try:
        return Esm2Config(
            num_layers=config_int(cfg["num_hidden_layers"], "num_hidden_layers"),
            embed_dim=config_int(cfg["hidden_size"], "hidden_size"),
            attention_heads=config_int(cfg["num_attention_heads"], "num_attention_heads"),
            ffn_dim=config_int(cfg["intermediate_size"], "intermediate_size"),
            vocab_size=config_int(cfg["vocab_size"], "vocab_size"),
            layer_norm_eps=checked_layer_norm_eps(
                cfg.get("layer_norm_eps", _DEFAULT_NOT_ESM2["layer_norm_eps"][0]), "layer_norm_eps"
            ),
            token_dropout=config_bool(
                cfg.get("token_dropout", _DEFAULT_NOT_ESM2["token_dropout"][0]), "token_dropout"
            ),
            cls_id=tokenizer.cls_id,
            pad_id=tokenizer.pad_id,
            eos_id=tokenizer.eos_id,
            mask_id=config_int(cfg.get("mask_token_id", vocab_mask_id), "mask_token_id"),
        )
    except KeyError as exc:
        raise CheckpointError(f"{where}: not a usable EsmConfig (no {exc.args[0]!r})") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(f"{where}: not a usable EsmConfig ({exc})") from None


def _hf_to_fair_esm_names(raw: StateDict, prefixed: bool) -> tuple[StateDict, list[str]]:
    """Rename EsmForMaskedLM (``esm.``-prefixed) or bare EsmModel keys; unused heads are set aside."""
    state: StateDict = {}
    ignored: list[str] = []
    for key, tensor in raw.items():
        name = key.removeprefix("esm.") if prefixed else key
        if name.startswith(_HF_IGNORED):
            ignored.append(key)
            continue
        for pattern, replacement in _HF_RENAMES:
            name, count = pattern.subn(replacement, name)
            if count:
                break
        state[name] = tensor
    return state, ignored


def _namespace_value(args: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = args.get(name) if isinstance(args, Mapping) else getattr(args, name, None)
        if value is not None:
            return value
    return default


def _namespace_int(args: Any, *names: str, default: int | None = None) -> int:
    """An integer fair-esm argument under any of ``names``; ValueError naming it when absent or not one."""
    value = _namespace_value(args, *names, default=default)
    if value is None:
        raise ValueError(f"{names[0]} is missing")
    return config_int(value, names[0])


def _read_fair_esm(path: Path) -> tuple[StateDict, Esm2Config, ProteinTokenizer, dict[str, Any]]:
    # fair-esm pickles its training arguments as an argparse.Namespace: read as a plain namespace.
    data = safe_torch_load(path, extra_globals={("argparse", "Namespace"): types.SimpleNamespace})
    if not isinstance(data, Mapping) or not isinstance(data.get("model"), Mapping):
        found = sorted(map(str, data)) if isinstance(data, Mapping) else type(data).__name__
        raise CheckpointError(
            f"{path}: not a fair-esm checkpoint (expected keys 'cfg'/'args' and 'model'; found {found})"
        )
    cfg = data.get("cfg")
    args = cfg.get("model") if isinstance(cfg, Mapping) else data.get("args")
    if args is None:
        raise CheckpointError(f"{path}: fair-esm checkpoint without 'cfg'['model'] or 'args'")

    state: StateDict = {}
    ignored: list[str] = []
    for key, tensor in check_tensor_entries(data["model"], f"{path}: fair-esm 'model'").items():
        name = key.removeprefix("encoder.sentence_encoder.").removeprefix("encoder.")
        if name.startswith(_FAIR_ESM_IGNORED):
            ignored.append(key)
        else:
            state[name] = tensor
    if "embed_positions.weight" in state:
        raise CheckpointError(f"{path}: an ESM-1/ESM-1b checkpoint (learned positions), not ESM-2")
    if "embed_tokens.weight" not in state or "layers.0.self_attn.q_proj.weight" not in state:
        raise CheckpointError(
            f"{path}: not an ESM-2 fair-esm checkpoint: expected keys like "
            f"'encoder.sentence_encoder.layers.0.self_attn.q_proj.weight', "
            f"found {summarize(sorted(data['model']))}"
        )
    tokenizer = ProteinTokenizer()
    try:
        embed_dim = _namespace_int(args, "encoder_embed_dim", "embed_dim")
        config = Esm2Config(
            num_layers=_namespace_int(args, "encoder_layers", "layers"),
            embed_dim=embed_dim,
            attention_heads=_namespace_int(args, "encoder_attention_heads", "attention_heads"),
            ffn_dim=_namespace_int(args, "encoder_ffn_embed_dim", "ffn_embed_dim", default=4 * embed_dim),
            token_dropout=config_bool(_namespace_value(args, "token_dropout", default=True), "token_dropout"),
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(f"{path}: fair-esm model arguments are not usable ({exc})") from None
    info = {
        "format": "fair-esm",
        "layout": "fair-esm",
        "path": str(path),
        "weight_files": [str(path)],
        "ignored_keys": sorted(ignored),
    }
    return state, config, tokenizer, info


def fair_esm_state_shapes(config: Esm2Config) -> dict[str, tuple[int, ...]]:
    """Names and shapes of an ESM-2 encoder's tensors in fair-esm names (before q/k/v are fused), for
    ``config``, rotary frequencies aside (optional in a checkpoint, checked on their own).

    A loader compares a checkpoint with this before converting a single tensor or building anything; a
    test keeps it equal to what the fair-esm writer produces from the module.
    """
    dim, ffn = config.embed_dim, config.ffn_dim
    shapes: dict[str, tuple[int, ...]] = {
        "embed_tokens.weight": (config.vocab_size, dim),
        "emb_layer_norm_after.weight": (dim,),
        "emb_layer_norm_after.bias": (dim,),
    }
    layer: dict[str, tuple[int, ...]] = {}
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        layer[f"self_attn.{proj}.weight"] = (dim, dim)
        layer[f"self_attn.{proj}.bias"] = (dim,)
    for norm in ("self_attn_layer_norm", "final_layer_norm"):
        layer[f"{norm}.weight"] = (dim,)
        layer[f"{norm}.bias"] = (dim,)
    layer.update({"fc1.weight": (ffn, dim), "fc1.bias": (ffn,), "fc2.weight": (dim, ffn), "fc2.bias": (dim,)})
    for index in range(config.num_layers):
        shapes.update({f"layers.{index}.{name}": shape for name, shape in layer.items()})
    return shapes


def _to_encoder_state(
    state: StateDict, config: Esm2Config, where: str, files: list[Path]
) -> tuple[StateDict, str]:
    """fair-esm-named tensors -> :class:`Esm2Encoder` state (fused qkv, one fp32 inv_freq).

    Everything is checked on names, shapes and dtypes first (module docstring); only then are the
    tensors converted to fp32. Returns the state and where ``inv_freq`` came from (``"checkpoint"`` or
    ``"computed"``).
    """
    _cross_check(state, config, where)
    state = dict(state)
    inv_freqs = {k: state.pop(k) for k in sorted(state) if _INV_FREQ.match(k)}
    inv_freq = _checked_inv_freq(inv_freqs, config, where)
    expected = fair_esm_state_shapes(config)
    check_state_shapes(state, expected, f"{where}: ESM-2 weights")
    check_fp32_bytes_fit_files(expected, files, f"{where}: ESM-2 weights")

    state = to_float32(state)
    state["rotary.inv_freq"] = inv_freq if inv_freq is not None else default_inv_freq(config.head_dim)
    for index in range(config.num_layers):
        prefix = f"layers.{index}.self_attn."
        for kind in ("weight", "bias"):
            parts = [f"{prefix}{p}_proj.{kind}" for p in ("q", "k", "v")]
            state[f"layers.{index}.qkv.{kind}"] = torch.cat([state.pop(p) for p in parts], dim=0)
            state[f"layers.{index}.out_proj.{kind}"] = state.pop(f"{prefix}out_proj.{kind}")
    return state, "checkpoint" if inv_freq is not None else "computed"


def _checked_inv_freq(inv_freqs: StateDict, config: Esm2Config, where: str) -> torch.Tensor | None:
    """The checkpoint's one rotary ``inv_freq`` as fp32, or None when it has none.

    Every copy (one per layer in the published files) must hold head_dim / 2 floating values, checked
    before any is compared or converted, and all copies must be equal.
    """
    if not inv_freqs:
        return None
    first_key, inv_freq = next(iter(inv_freqs.items()))
    for key, value in inv_freqs.items():
        if not value.is_floating_point():
            raise CheckpointError(f"{where}: rotary {key} is {value.dtype}, expected floating point")
        if 2 * value.numel() != config.head_dim:
            raise CheckpointError(
                f"{where}: rotary inv_freq has {value.numel()} frequencies (head size "
                f"{2 * value.numel()}), but {config.attention_heads} heads of {config.embed_dim} "
                f"give head size {config.head_dim}"
            )
    differing = [
        k
        for k, v in inv_freqs.items()
        if not torch.equal(v.reshape(-1).float(), inv_freq.reshape(-1).float())
    ]
    if differing:
        raise CheckpointError(
            f"{where}: rotary inv_freq differs between {first_key} and {summarize(differing)}"
        )
    return inv_freq.reshape(-1).float().contiguous()


def _cross_check(state: StateDict, config: Esm2Config, where: str) -> None:
    """Compare the shapes the tensors imply with what the config says; report every disagreement.

    Shapes only, never values. The layers named by the keys must be 0..N-1 with none absent: one key
    ``layers.20000000.fc1.bias`` must not stand for 20 million layers.
    """
    vocab, dim = embedding_shape(
        state, "embed_tokens.weight", _LAYER_KEY, f"{where}: ESM-2 weights", "[vocab, embed_dim]"
    )
    fc1 = state.get("layers.0.fc1.weight")
    found = {
        "layers": (config.num_layers, layer_count(state, _LAYER_KEY)),
        "embed_dim": (config.embed_dim, dim),
        "vocab_size": (config.vocab_size, vocab),
        "ffn_dim": (config.ffn_dim, fc1.shape[0] if fc1 is not None and fc1.dim() == 2 else config.ffn_dim),
    }
    wrong = [f"{name} {said} (tensors: {seen})" for name, (said, seen) in found.items() if said != seen]
    if wrong:
        raise CheckpointError(f"{where}: config disagrees with the weights: {'; '.join(wrong)}")
