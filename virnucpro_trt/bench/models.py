"""The three checkpoints a benchmark runs: named by the user, or random weights of the real shapes.

Engines are built by the real build code, which reads checkpoint FILES; so random weights are written in
the real formats first and every configuration (eager or engine) loads the same files. That is what
makes parity between configurations meaningful: same bytes in, the only difference is how they run.
With ``--workdir`` the random set is written once and reused (the full-size ESM-2 takes minutes).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from virnucpro_trt.errors import UserError

log = logging.getLogger(__name__)

RandomSize = Literal["full", "tiny"]
_MARKER = "random-weights.json"  # written last: a folder without it is unfinished
_SEEDS = {"dnabert": 1, "esm": 2, "classifier": 3}


@dataclass(frozen=True)
class ModelSet:
    """Paths of DNABERT-S, ESM-2 and the classifier, and how to describe them in a result."""

    dnabert: Path
    esm: Path
    classifier: Path
    source: str  # "random-weights full", "random-weights tiny" or "checkpoints"

    def specs(self) -> dict[str, str]:
        """As the engine code names them (``dnabert-s``/``esm2``/``classifier``)."""
        return {"dnabert-s": str(self.dnabert), "esm2": str(self.esm), "classifier": str(self.classifier)}

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "dnabert": str(self.dnabert),
            "esm": str(self.esm),
            "classifier": str(self.classifier),
        }


def named_models(dnabert: str, esm: str, classifier: str) -> ModelSet:
    """Resolve user-named checkpoints (local paths or cache names; never the network)."""
    from virnucpro_trt.models.resolve import resolve_model

    return ModelSet(
        resolve_model(dnabert, "dnabert"),
        resolve_model(esm, "esm"),
        resolve_model(classifier, "classifier"),
        "checkpoints",
    )


def write_random_models(root: Path, size: RandomSize, device: str | torch.device = "cpu") -> ModelSet:
    """Random checkpoints in the real formats under ``root`` (reused when a finished set is there).

    ``full``: DNABERT-S 12x768 with a 4096-token BPE tokenizer, ESM-2 3B as a Hugging Face folder in fp16
    safetensors (the published files are fp16), an upstream-pickled 3328->512->2 classifier. ``tiny``: the
    test-suite sizes. The ESM-2 weights are drawn on ``device`` (drawing 2.8e9 numbers on a CPU is slow).
    """
    from virnucpro_trt.models.dnabert import DNABERT_S_CONFIG
    from virnucpro_trt.models.esm2 import ESM2_T36_3B_CONFIG
    from virnucpro_trt.models.random_checkpoints import (
        TINY_DNABERT_CONFIG,
        TINY_ESM2_CONFIG,
        random_esm2,
        write_dnabert_checkpoint,
        write_esm_hf_checkpoint,
    )
    from virnucpro_trt.models.random_classifier import write_upstream_classifier

    if size not in ("full", "tiny"):
        raise UserError(f"--random-weights {size}: expected full or tiny")
    full = size == "full"
    models = ModelSet(
        root / "DNABERT-S",
        root / ("esm2_t36_3B_UR50D" if full else "esm2_tiny"),
        root / "500_model.pth",
        f"random-weights {size}",
    )
    marker = root / _MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("size") == size:
        log.info("reusing %s random-weight checkpoints in %s", size, root)
        return models
    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    dna_config = DNABERT_S_CONFIG if full else TINY_DNABERT_CONFIG
    esm_config = ESM2_T36_3B_CONFIG if full else TINY_ESM2_CONFIG
    write_dnabert_checkpoint(
        models.dnabert, dna_config, seed=_SEEDS["dnabert"], vocab_size=4096 if full else None
    )
    dtype = torch.bfloat16 if full else torch.float32
    esm_model = random_esm2(esm_config, device=device, dtype=dtype, seed=_SEEDS["esm"])
    write_esm_hf_checkpoint(
        models.esm, model=esm_model, dtype=torch.float16 if full else torch.float32, seed=_SEEDS["esm"]
    )
    del esm_model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    width = dna_config.hidden_size + esm_config.embed_dim
    write_upstream_classifier(models.classifier, width, seed=_SEEDS["classifier"])
    marker.write_text(json.dumps({"size": size, "seeds": _SEEDS}) + "\n")
    log.info("wrote %s random-weight checkpoints in %.1fs (%s)", size, time.perf_counter() - started, root)
    return models


@dataclass
class EagerModels:
    """The fp32 CPU masters of both encoders, their tokenizers and the classifier, loaded once.

    Every eager configuration runs a deep copy (moving or casting a module changes it in place), so the
    masters stay fp32 on the CPU for the next one.
    """

    dnabert: torch.nn.Module
    esm: torch.nn.Module
    dnabert_tokenizer: Any
    esm_tokenizer: Any
    dnabert_dim: int
    esm_dim: int
    classifier: Any  # ClassifierWeights
    load_s: float


def load_eager_models(models: ModelSet) -> EagerModels:
    """Load the checkpoints once (through the same loaders ``predict`` uses) and check they fit."""
    from virnucpro_trt.models.checkpoints import load_encoder
    from virnucpro_trt.models.classifier import check_classifier_width, load_classifier_weights

    started = time.perf_counter()
    dnabert, dna_tokenizer, _, dna_dim = load_encoder("dnabert-s", models.dnabert)
    esm, esm_tokenizer, _, esm_dim = load_encoder("esm2", models.esm)
    classifier = load_classifier_weights(models.classifier)
    check_classifier_width(classifier, dna_dim, esm_dim, models.classifier)
    seconds = time.perf_counter() - started
    log.info("loaded the checkpoints in %.1fs", seconds)
    return EagerModels(dnabert, esm, dna_tokenizer, esm_tokenizer, dna_dim, esm_dim, classifier, seconds)
