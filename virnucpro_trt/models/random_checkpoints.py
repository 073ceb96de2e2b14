"""Random-weight encoders and checkpoints in the REAL file formats (for the demo, tests and benchmarks).

Real weights cannot be downloaded on the project's machines, so every loader is exercised on files that
have exactly the real layouts: the DNABERT-S folder (``config.json``, pickled ``OrderedDict`` in
``pytorch_model.bin``, a BPE ``tokenizer.json`` trained with the ``tokenizers`` library, plus the unused
pooler), the Hugging Face ``EsmForMaskedLM`` folder (``esm.`` keys, per-layer fp16-rounded ``inv_freq``,
LM and contact heads, optionally sharded) and the fair-esm ``.pt`` (``cfg['model']`` namespace and
``encoder.sentence_encoder.*`` keys).

Writers take the tensors from a model (by default :func:`random_dnabert` / :func:`random_esm2` with the
given seed), so a Hugging Face folder and a fair-esm file written with the same seed hold the same
weights. The in-memory builders initialise directly on the target device, which makes full-size speed
work possible without touching the disk.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

from virnucpro_trt.files.atomic import umask_file_mode
from virnucpro_trt.models.dnabert import DNABERT_S_CONFIG, DnabertConfig, DnabertEncoder
from virnucpro_trt.models.esm2 import ESM2_T36_3B_CONFIG, Esm2Config, Esm2Encoder, default_inv_freq
from virnucpro_trt.models.layers import Fp32LayerNorm, init_random_
from virnucpro_trt.models.tokenization import FAIR_ESM_ALPHABET

__all__ = [
    "DNABERT_S_CONFIG",
    "DNA_SPECIAL_TOKENS",
    "ESM2_T36_3B_CONFIG",
    "TINY_DNABERT_CONFIG",
    "TINY_ESM2_CONFIG",
    "add_outlier_channels",
    "random_dna",
    "random_dnabert",
    "random_esm2",
    "random_proteins",
    "train_dna_tokenizer",
    "write_dnabert_checkpoint",
    "write_esm_fairesm_checkpoint",
    "write_esm_hf_checkpoint",
]

TINY_DNABERT_CONFIG = DnabertConfig(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=256
)
TINY_ESM2_CONFIG = Esm2Config(num_layers=2, embed_dim=64, attention_heads=4)
DNA_SPECIAL_TOKENS: tuple[str, ...] = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"

DnabertLayout = Literal["dnabert-s", "dnabert2-mlm"]
WeightsFormat = Literal["bin", "safetensors"]


# ----------------------------------------------------------------------------- sequences and tokenizer
def random_dna(count: int, length: int, seed: int = 0) -> list[str]:
    """``count`` seeded random ACGT strings of ``length`` bases."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 4, size=(count, length), dtype=np.uint8)
    return [bytes(row).decode("ascii") for row in np.frombuffer(b"ACGT", np.uint8)[codes]]


def random_proteins(count: int, min_length: int, max_length: int, seed: int = 0) -> list[str]:
    """``count`` seeded random strings over the 20 amino acids, lengths uniform in [min, max]."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(AMINO_ACIDS.encode(), np.uint8)
    lengths = rng.integers(min_length, max_length + 1, size=count)
    return [bytes(letters[rng.integers(0, 20, size=n)]).decode("ascii") for n in lengths]


def train_dna_tokenizer(
    vocab_size: int, seed: int = 0, special_tokens: tuple[str, ...] = DNA_SPECIAL_TOKENS
) -> Tokenizer:
    """A DNABERT-2-style BPE tokenizer trained on seeded random DNA, with the ``[CLS] $A [SEP]`` template.

    Special tokens take ids 0.. in the order given, so a test can move [CLS]/[SEP] away from the usual ids.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=list("ACGTN"),
        show_progress=False,
    )
    tokenizer.train_from_iterator(random_dna(max(100, vocab_size // 8), 1000, seed), trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tokenizer


# ----------------------------------------------------------------------------- in-memory models
def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def random_dnabert(
    config: DnabertConfig = TINY_DNABERT_CONFIG,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> DnabertEncoder:
    """A DNABERT-S encoder with random weights, built directly on ``device`` in ``dtype`` (eval mode)."""
    device = torch.device(device)
    with torch.device("meta"):
        model = DnabertEncoder(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    init_random_(model, _generator(device, seed))
    return model.eval().requires_grad_(False)


def random_esm2(
    config: Esm2Config = TINY_ESM2_CONFIG,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    residual_fp32: bool = True,
) -> Esm2Encoder:
    """An ESM-2 encoder with random weights on ``device`` in ``dtype``; ``inv_freq`` is fp16-rounded as in
    the real checkpoints (and stays fp32)."""
    device = torch.device(device)
    with torch.device("meta"):
        model = Esm2Encoder(config, residual_fp32=residual_fp32)
    model = model.to(dtype=dtype).to_empty(device=device)
    init_random_(model, _generator(device, seed))
    model.rotary.inv_freq = default_inv_freq(config.head_dim).half().float().to(device)
    return model.eval().requires_grad_(False)


OUTLIER_GAINS = (20.0, 50.0)
"""Range of the factor an outlier channel's LayerNorm gain is multiplied by."""


def outlier_channel_count(width: int) -> int:
    """A few channels: 4 of ESM-2 3B's 2560, 2 of DNABERT-S's 768 (and of a tiny model's 64)."""
    return max(2, round(width / 640))


def add_outlier_channels(model: torch.nn.Module, seed: int) -> dict[str, object]:
    """Give ``model`` outlier channels, as trained transformers have: a few LayerNorm gains scaled 20-50x.

    Why: a trained transformer's activations carry a handful of channels tens of times larger than the
    rest, in the same channels layer after layer; random weights have none, so fp8 (one scale per token
    row) looks better on them than on real weights. The channels (``outlier_channel_count``) and their
    factors (uniform in :data:`OUTLIER_GAINS`) come from ``seed``; every LayerNorm is scaled in those
    channels except the model's last one, whose output is pooled into the embedding rather than fed to
    a linear layer. Changes ``model`` in place; returns what was done (for the checkpoint's marker).
    """
    norms = [m for m in model.modules() if isinstance(m, (Fp32LayerNorm, torch.nn.LayerNorm))]
    if len(norms) < 2:
        raise ValueError("the model has no LayerNorm that feeds a linear layer")
    width = norms[0].weight.shape[0]
    rng = np.random.default_rng(seed)
    channels = np.sort(rng.choice(width, size=outlier_channel_count(width), replace=False))
    factors = rng.uniform(*OUTLIER_GAINS, size=len(channels))
    index = torch.as_tensor(channels, device=norms[0].weight.device)
    with torch.no_grad():
        for norm in norms[:-1]:
            scale = torch.as_tensor(factors, dtype=norm.weight.dtype, device=norm.weight.device)
            norm.weight[index] = norm.weight[index] * scale
    return {
        "channels": channels.tolist(),
        "gain_factors": [round(float(f), 3) for f in factors],
        "layer_norms_scaled": len(norms) - 1,
    }


# ----------------------------------------------------------------------------- state dicts in real layouts
def _extra(shape: tuple[int, ...], gen: torch.Generator, std: float = 0.02) -> torch.Tensor:
    """Random tensors for heads the encoders ignore (pooler, LM head, contact head)."""
    return torch.randn(shape, generator=gen) * std


def dnabert_state_dict(
    model: DnabertEncoder, layout: DnabertLayout, seed: int = 0
) -> OrderedDict[str, torch.Tensor]:
    """The encoder's tensors as DNABERT-S (``pooler.*`` added) or DNABERT-2 MLM (``bert.`` + ``cls.*``)."""
    gen = torch.Generator().manual_seed(seed + 1)
    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    tensors = {k: v.detach().to("cpu", torch.float32).clone() for k, v in model.state_dict().items()}
    if layout == "dnabert-s":
        out = OrderedDict(tensors)
        out["pooler.dense.weight"] = _extra((hidden, hidden), gen)
        out["pooler.dense.bias"] = _extra((hidden,), gen)
        return out
    if layout == "dnabert2-mlm":
        out = OrderedDict((f"bert.{k}", v) for k, v in tensors.items())
        out["cls.predictions.bias"] = _extra((vocab,), gen)
        out["cls.predictions.transform.dense.weight"] = _extra((hidden, hidden), gen)
        out["cls.predictions.transform.dense.bias"] = _extra((hidden,), gen)
        out["cls.predictions.transform.LayerNorm.weight"] = 1.0 + _extra((hidden,), gen)
        out["cls.predictions.transform.LayerNorm.bias"] = _extra((hidden,), gen)
        out["cls.predictions.decoder.weight"] = tensors["embeddings.word_embeddings.weight"].clone()
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"].clone()
        return out
    raise ValueError(f"unknown DNABERT layout {layout!r}")


def _split_qkv(model: Esm2Encoder, index: int) -> dict[str, torch.Tensor]:
    layer = model.layers[index]
    out = {}
    for kind in ("weight", "bias"):
        fused = getattr(layer.qkv, kind).detach().cpu()
        for name, part in zip(("q", "k", "v"), fused.chunk(3, dim=0), strict=True):
            out[f"{name}.{kind}"] = part.clone()
    return out


def _esm_layer_tensors(model: Esm2Encoder, index: int) -> dict[str, torch.Tensor]:
    """fair-esm-named tensors of one layer (``self_attn.q_proj.weight``...), fp32 CPU copies."""
    layer = model.layers[index]
    qkv = _split_qkv(model, index)
    out = {
        f"self_attn.{p}_proj.{kind}": qkv[f"{p}.{kind}"]
        for p in ("q", "k", "v")
        for kind in ("weight", "bias")
    }
    for source, target in (
        ("out_proj", "self_attn.out_proj"),
        ("self_attn_layer_norm", "self_attn_layer_norm"),
        ("fc1", "fc1"),
        ("fc2", "fc2"),
        ("final_layer_norm", "final_layer_norm"),
    ):
        module = getattr(layer, source)
        for kind in ("weight", "bias"):
            out[f"{target}.{kind}"] = getattr(module, kind).detach().cpu().clone()
    out["self_attn.rot_emb.inv_freq"] = model.rotary.inv_freq.detach().cpu().clone()
    return out


_HF_LAYER_NAMES = {
    "self_attn.q_proj": "attention.self.query",
    "self_attn.k_proj": "attention.self.key",
    "self_attn.v_proj": "attention.self.value",
    "self_attn.rot_emb": "attention.self.rotary_embeddings",
    "self_attn.out_proj": "attention.output.dense",
    "self_attn_layer_norm": "attention.LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
    "final_layer_norm": "LayerNorm",
}


def esm_hf_state_dict(
    model: Esm2Encoder,
    inv_freq_location: Literal["per-layer", "model", "none"] = "per-layer",
    seed: int = 0,
) -> OrderedDict[str, torch.Tensor]:
    """EsmForMaskedLM keys: ``esm.`` encoder, ``esm.contact_head.*``, ``lm_head.*``.

    ``inv_freq_location`` says where the rotary frequencies go: per attention layer (the published files),
    once at model level (what recent transformers saves) or nowhere.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    config = model.config
    dim, vocab = config.embed_dim, config.vocab_size
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    out["esm.embeddings.word_embeddings.weight"] = model.embed_tokens.weight.detach().cpu().clone()
    for index in range(config.num_layers):
        for name, tensor in _esm_layer_tensors(model, index).items():
            module, kind = name.rsplit(".", 1)
            if module == "self_attn.rot_emb" and inv_freq_location != "per-layer":
                continue
            out[f"esm.encoder.layer.{index}.{_HF_LAYER_NAMES[module]}.{kind}"] = tensor
    for kind in ("weight", "bias"):
        out[f"esm.encoder.emb_layer_norm_after.{kind}"] = (
            getattr(model.emb_layer_norm_after, kind).detach().cpu().clone()
        )
    if inv_freq_location == "model":
        out["esm.rotary_embeddings.inv_freq"] = model.rotary.inv_freq.detach().cpu().clone()
    out["esm.contact_head.regression.weight"] = _extra((1, config.num_layers * config.attention_heads), gen)
    out["esm.contact_head.regression.bias"] = _extra((1,), gen)
    out["lm_head.dense.weight"] = _extra((dim, dim), gen)
    out["lm_head.dense.bias"] = _extra((dim,), gen)
    out["lm_head.layer_norm.weight"] = 1.0 + _extra((dim,), gen)
    out["lm_head.layer_norm.bias"] = _extra((dim,), gen)
    out["lm_head.decoder.weight"] = out["esm.embeddings.word_embeddings.weight"].clone()
    out["lm_head.bias"] = _extra((vocab,), gen)
    return out


def esm_fairesm_state_dict(model: Esm2Encoder, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """fair-esm ESM2 keys as in its ``.pt`` files: ``encoder.sentence_encoder.*``, ``encoder.lm_head.*``."""
    gen = torch.Generator().manual_seed(seed + 1)
    dim, vocab = model.config.embed_dim, model.config.vocab_size
    prefix = "encoder.sentence_encoder."
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    out[f"{prefix}embed_tokens.weight"] = model.embed_tokens.weight.detach().cpu().clone()
    for index in range(model.config.num_layers):
        for name, tensor in _esm_layer_tensors(model, index).items():
            out[f"{prefix}layers.{index}.{name}"] = tensor
    for kind in ("weight", "bias"):
        out[f"{prefix}emb_layer_norm_after.{kind}"] = (
            getattr(model.emb_layer_norm_after, kind).detach().cpu().clone()
        )
    out["encoder.lm_head.weight"] = out[f"{prefix}embed_tokens.weight"].clone()
    out["encoder.lm_head.bias"] = _extra((vocab,), gen)
    out["encoder.lm_head.dense.weight"] = _extra((dim, dim), gen)
    out["encoder.lm_head.dense.bias"] = _extra((dim,), gen)
    out["encoder.lm_head.layer_norm.weight"] = 1.0 + _extra((dim,), gen)
    out["encoder.lm_head.layer_norm.bias"] = _extra((dim,), gen)
    return out


# ----------------------------------------------------------------------------- files
def _cast(state: OrderedDict[str, torch.Tensor], dtype: torch.dtype) -> OrderedDict[str, torch.Tensor]:
    return OrderedDict((k, v.to(dtype).contiguous()) for k, v in state.items())


def _save_weights(
    folder: Path, state: OrderedDict[str, torch.Tensor], weights_format: WeightsFormat, shards: int = 1
) -> list[Path]:
    """Write ``model.safetensors`` / ``pytorch_model.bin``, or ``shards`` files plus the HF index json."""
    if weights_format not in ("bin", "safetensors"):
        raise ValueError(f"unknown weights format {weights_format!r}")
    stem, suffix = ("model", "safetensors") if weights_format == "safetensors" else ("pytorch_model", "bin")
    keys = list(state)
    per_shard = math.ceil(len(keys) / shards)
    groups = [keys[i : i + per_shard] for i in range(0, len(keys), per_shard)]
    names = (
        [f"{stem}.{suffix}"]
        if shards == 1
        else [f"{stem}-{i + 1:05d}-of-{len(groups):05d}.{suffix}" for i in range(len(groups))]
    )
    written = []
    for name, group in zip(names, groups, strict=True):
        part = OrderedDict((k, state[k]) for k in group)
        if weights_format == "safetensors":
            from safetensors.torch import save_file

            save_file(dict(part), str(folder / name), metadata={"format": "pt"})
            os.chmod(folder / name, umask_file_mode())  # save_file makes it 0600, unlike every other file
        else:
            torch.save(part, folder / name)
        written.append(folder / name)
    if shards > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {k: name for name, group in zip(names, groups, strict=True) for k in group},
        }
        (folder / f"{stem}.{suffix}.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return written


def _write_json(path: Path, data: dict[str, object]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_dnabert_checkpoint(
    folder: str | Path,
    config: DnabertConfig = TINY_DNABERT_CONFIG,
    seed: int = 0,
    layout: DnabertLayout = "dnabert-s",
    weights_format: WeightsFormat = "bin",
    vocab_size: int | None = None,
    model: DnabertEncoder | None = None,
    tokenizer: Tokenizer | None = None,
) -> Path:
    """Write a DNABERT-S-format folder with random (or ``model``'s) weights; returns the folder.

    ``vocab_size`` is the BPE vocabulary to train (default ``config.vocab_size``; 4096 is real size).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else random_dnabert(config, seed=seed)
    config = model.config
    _save_weights(folder, dnabert_state_dict(model, layout, seed), weights_format)
    tokenizer = (
        tokenizer if tokenizer is not None else train_dna_tokenizer(vocab_size or config.vocab_size, seed)
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    mlm = layout == "dnabert2-mlm"
    _write_json(
        folder / "config.json",
        {
            "_name_or_path": "zhihan1996/DNABERT-2-117M",
            "alibi_starting_size": 512,
            "architectures": ["BertForMaskedLM" if mlm else "BertModel"],
            "attention_probs_dropout_prob": 0.0,
            "auto_map": {
                "AutoConfig": "configuration_bert.BertConfig",
                "AutoModel": "bert_layers.BertModel",
                "AutoModelForMaskedLM": "bert_layers.BertForMaskedLM",
                "AutoModelForSequenceClassification": "bert_layers.BertForSequenceClassification",
            },
            "classifier_dropout": None,
            "gradient_checkpointing": False,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "hidden_size": config.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": config.intermediate_size,
            "layer_norm_eps": config.layer_norm_eps,
            "max_position_embeddings": 512,
            "model_type": "bert",
            "num_attention_heads": config.num_attention_heads,
            "num_hidden_layers": config.num_hidden_layers,
            "pad_token_id": 0,
            "position_embedding_type": "absolute",
            "torch_dtype": "float32",
            "transformers_version": "4.29.0",
            "type_vocab_size": config.type_vocab_size,
            "use_cache": True,
            "vocab_size": config.vocab_size,
        },
    )
    _write_json(
        folder / "tokenizer_config.json",
        {
            "clean_up_tokenization_spaces": True,
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
            "model_max_length": 512,
            "pad_token": "[PAD]",
            "sep_token": "[SEP]",
            "tokenizer_class": "PreTrainedTokenizerFast",
            "unk_token": "[UNK]",
        },
    )
    return folder


def write_esm_hf_checkpoint(
    folder: str | Path,
    config: Esm2Config = TINY_ESM2_CONFIG,
    seed: int = 0,
    shards: int = 1,
    weights_format: WeightsFormat = "safetensors",
    dtype: torch.dtype = torch.float32,
    inv_freq_location: Literal["per-layer", "model", "none"] = "per-layer",
    model: Esm2Encoder | None = None,
) -> Path:
    """Write a Hugging Face ``EsmForMaskedLM`` folder with random (or ``model``'s) weights; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else random_esm2(config, seed=seed)
    config = model.config
    state = _cast(esm_hf_state_dict(model, inv_freq_location, seed), dtype)
    _save_weights(folder, state, weights_format, shards)
    _write_json(
        folder / "config.json",
        {
            "architectures": ["EsmForMaskedLM"],
            "attention_probs_dropout_prob": 0.0,
            "classifier_dropout": None,
            "emb_layer_norm_before": False,
            "esmfold_config": None,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0,
            "hidden_size": config.embed_dim,
            "initializer_range": 0.02,
            "intermediate_size": config.ffn_dim,
            "is_folding_model": False,
            "layer_norm_eps": config.layer_norm_eps,
            "mask_token_id": config.mask_id,
            "max_position_embeddings": 1026,
            "model_type": "esm",
            "num_attention_heads": config.attention_heads,
            "num_hidden_layers": config.num_layers,
            "pad_token_id": config.pad_id,
            "position_embedding_type": "rotary",
            "token_dropout": config.token_dropout,
            "torch_dtype": str(dtype).removeprefix("torch."),
            "transformers_version": "4.25.0.dev0",
            "use_cache": True,
            "vocab_list": None,
            "vocab_size": config.vocab_size,
        },
    )
    (folder / "vocab.txt").write_text("\n".join(FAIR_ESM_ALPHABET) + "\n")
    _write_json(
        folder / "tokenizer_config.json", {"model_max_length": 1026, "tokenizer_class": "EsmTokenizer"}
    )
    _write_json(
        folder / "special_tokens_map.json",
        {
            "cls_token": "<cls>",
            "eos_token": "<eos>",
            "mask_token": "<mask>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
        },
    )
    return folder


def write_esm_fairesm_checkpoint(
    path: str | Path,
    config: Esm2Config = TINY_ESM2_CONFIG,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    model: Esm2Encoder | None = None,
) -> Path:
    """Write a fair-esm ESM-2 ``.pt`` (``{'cfg': {'model': Namespace}, 'model': state}``); returns the path.

    The published fair-esm files are fp16 (``dtype=torch.float16`` mimics them).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else random_esm2(config, seed=seed)
    config = model.config
    args = argparse.Namespace(
        arch="esm2",
        encoder_layers=config.num_layers,
        encoder_embed_dim=config.embed_dim,
        encoder_ffn_embed_dim=config.ffn_dim,
        encoder_attention_heads=config.attention_heads,
        token_dropout=config.token_dropout,
        max_positions=1024,
        dropout=0.0,
        attention_dropout=0.0,
    )
    torch.save({"cfg": {"model": args}, "model": _cast(esm_fairesm_state_dict(model, seed), dtype)}, path)
    return path
