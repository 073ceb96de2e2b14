"""The three checkpoints a benchmark runs: named by the user, or random weights of the real shapes.

Engines are built by the real build code, which reads checkpoint FILES; so random weights are written in
the real formats first and every configuration (eager or engine) loads the same files. That is what
makes parity between configurations meaningful: same bytes in, the only difference is how they run.
With ``--workdir`` the random set is written once and reused (the full-size ESM-2 takes minutes).

The ``-outliers`` sets are the same weights with a few LayerNorm gain channels scaled 20-50x
(:func:`~virnucpro_trt.models.random_checkpoints.add_outlier_channels`): trained transformers have such
outlier channels and plain random weights do not, so fp8 parity is judged on these too.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from virnucpro_trt.bench.config_names import RANDOM_SIZES
from virnucpro_trt.errors import UserError
from virnucpro_trt.files.json_fields import FieldError, read_json_object
from virnucpro_trt.files.whole_folder import write_folder_whole
from virnucpro_trt.models.kinds import checkpoint_specs
from virnucpro_trt.models.origin import EncoderOrigin

log = logging.getLogger(__name__)

RandomSize = Literal["full", "tiny", "full-outliers", "tiny-outliers"]
_MARKER = "random-weights.json"  # written last: a folder without it is unfinished
_SEEDS = {"dnabert": 1, "esm": 2, "classifier": 3, "outliers": 4}


@dataclass(frozen=True)
class ModelSet:
    """Paths of DNABERT-S, ESM-2 and the classifier, and how to describe them in a result."""

    dnabert: Path
    esm: Path
    classifier: Path
    source: str  # "random-weights full", "random-weights tiny" or "checkpoints"

    def specs(self) -> dict[str, str]:
        """As the engine code names them (``dnabert-s``/``esm2``/``classifier``)."""
        specs = checkpoint_specs(self.dnabert, self.esm, self.classifier)
        return {kind: str(spec) for kind, spec in specs.items()}

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


def random_models_in(workdir: Path, size: RandomSize, device: str | torch.device = "cpu") -> ModelSet:
    """:func:`write_random_models` into ``workdir/models-random-<size>``: one folder name for ``bench`` and
    the benchmark scripts, so that they share a ``--workdir`` (the full-size set takes minutes to write,
    and engines built for it are reused only for the same weights)."""
    return write_random_models(workdir / f"models-random-{size}", size, device)


def write_random_models(root: Path, size: RandomSize, device: str | torch.device = "cpu") -> ModelSet:
    """Random checkpoints in the real formats under ``root`` (reused when a finished set is there).

    The set is written whole or not at all, marker last
    (:func:`~virnucpro_trt.files.whole_folder.write_folder_whole`): a folder at ``root`` is a finished set
    exactly when it holds the marker. Anything else there (a user's files, links, a set cut short before
    this rule) is refused in one line, never written into, through or over, so bench never runs on
    weights it did not make.

    ``full``: DNABERT-S 12x768 with a 4096-token BPE tokenizer, ESM-2 3B as a Hugging Face folder in fp16
    safetensors (the published files are fp16), an upstream-pickled 3328->512->2 classifier. ``tiny``: the
    test-suite sizes. ``-outliers``: the same with outlier channels in both encoders. The ESM-2 weights are
    drawn on ``device`` (drawing 2.8e9 numbers on a CPU is slow).
    """
    if size not in RANDOM_SIZES:
        raise UserError(f"--random-weights {size}: expected one of {', '.join(RANDOM_SIZES)}")
    full = size.startswith("full")
    models = ModelSet(
        root / "DNABERT-S",
        root / ("esm2_t36_3B_UR50D" if full else "esm2_tiny"),
        root / "500_model.pth",
        f"random-weights {size}",
    )
    foreign = (
        f"{root} is not a random-weight set bench finished (no {_MARKER} of one in it); move it away or "
        "choose another --workdir"
    )
    names = (models.dnabert.name, models.esm.name, models.classifier.name)

    def write(staging: Path) -> None:
        _write_set(staging, size, device, ModelSet(*(staging / name for name in names), models.source))

    def finished(folder: Path) -> bool:
        return _finished_set(folder / _MARKER) == size

    made = write_folder_whole(root, write, finished, foreign, "--workdir")
    if not made:
        log.info("reusing %s random-weight checkpoints in %s", size, root)
    return models


def _write_set(root: Path, size: RandomSize, device: str | torch.device, models: ModelSet) -> None:
    """Write the checkpoints of ``models`` (all under ``root``) and then the marker."""
    from virnucpro_trt.models.dnabert import DNABERT_S_CONFIG
    from virnucpro_trt.models.esm2 import ESM2_T36_3B_CONFIG
    from virnucpro_trt.models.random_checkpoints import (
        TINY_DNABERT_CONFIG,
        TINY_ESM2_CONFIG,
        add_outlier_channels,
        random_dnabert,
        random_esm2,
        write_dnabert_checkpoint,
        write_esm_hf_checkpoint,
    )
    from virnucpro_trt.models.random_classifier import write_upstream_classifier

    started = time.perf_counter()
    full = size.startswith("full")
    outliers = size.endswith("-outliers")
    dna_config = DNABERT_S_CONFIG if full else TINY_DNABERT_CONFIG
    esm_config = ESM2_T36_3B_CONFIG if full else TINY_ESM2_CONFIG
    dna_model = random_dnabert(dna_config, seed=_SEEDS["dnabert"])
    dtype = torch.bfloat16 if full else torch.float32
    esm_model = random_esm2(esm_config, device=device, dtype=dtype, seed=_SEEDS["esm"])
    facts: dict[str, Any] = {"size": size, "seeds": _SEEDS}
    if outliers:
        facts["outliers"] = {
            "dnabert": add_outlier_channels(dna_model, _SEEDS["outliers"]),
            "esm": add_outlier_channels(esm_model, _SEEDS["outliers"]),
        }
    write_dnabert_checkpoint(
        models.dnabert, seed=_SEEDS["dnabert"], vocab_size=4096 if full else None, model=dna_model
    )
    write_esm_hf_checkpoint(
        models.esm, model=esm_model, dtype=torch.float16 if full else torch.float32, seed=_SEEDS["esm"]
    )
    del esm_model, dna_model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    width = dna_config.hidden_size + esm_config.embed_dim
    write_upstream_classifier(models.classifier, width, seed=_SEEDS["classifier"])
    (root / _MARKER).write_text(json.dumps(facts) + "\n")
    log.info("wrote %s random-weight checkpoints in %.1fs", size, time.perf_counter() - started)


def _finished_set(marker: Path) -> object:
    """The size a finished set's marker names (read as hostile: bounded, an object, a regular file), or
    None when there is none to reuse (missing, or anything else: the set is then written again)."""
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        return read_json_object(marker, 1 << 16).get("size")
    except (OSError, FieldError):
        return None


@dataclass
class MasterEncoders:
    """The fp32 CPU masters of the encoders, each loaded once; every eager configuration gets a deep copy.

    An :data:`~virnucpro_trt.pipeline.encoders.EncoderLoader`: ``bench`` opens its configurations through
    ``predict``'s own opening code, and this saves reading (and hashing) a 6 GB checkpoint per
    configuration. Moving or casting a module changes it in place, hence the copies.
    """

    loaded: dict[tuple[str, str], tuple[torch.nn.Module, Any, EncoderOrigin, int]] = field(
        default_factory=dict
    )
    load_s: float = 0.0

    def __call__(
        self, kind: str, path: Path, known: Any = None
    ) -> tuple[torch.nn.Module, Any, EncoderOrigin, int]:
        """A copy of the master (``known``, a run's checked identity, does not arise in bench); the
        origin is frozen, so every copy shares it."""
        model, tokenizer, origin, dim = self.master(kind, path)
        return copy.deepcopy(model), tokenizer, origin, dim

    def master(self, kind: str, path: Path) -> tuple[torch.nn.Module, Any, EncoderOrigin, int]:
        """The loaded master itself (not a copy: never move or cast it)."""
        from virnucpro_trt.models.checkpoints import load_encoder

        key = (kind, str(path))
        if key not in self.loaded:
            started = time.perf_counter()
            self.loaded[key] = load_encoder(kind, path)
            self.load_s += time.perf_counter() - started
        return self.loaded[key]

    def tokenizers(self, models: ModelSet) -> tuple[Any, Any]:
        """DNABERT-S's and ESM-2's tokenizers (loading the masters if needed)."""
        return self.master("dnabert-s", models.dnabert)[1], self.master("esm2", models.esm)[1]


def load_masters(models: ModelSet) -> MasterEncoders:
    """Load the checkpoints once (through the loaders ``predict`` uses) and check that they fit together,
    so a mismatched set fails before any configuration runs."""
    from virnucpro_trt.models.classifier import check_classifier_width, load_classifier_weights

    masters = MasterEncoders()
    dna_dim = masters.master("dnabert-s", models.dnabert)[3]
    esm_dim = masters.master("esm2", models.esm)[3]
    check_classifier_width(load_classifier_weights(models.classifier), dna_dim, esm_dim, models.classifier)
    log.info("loaded the checkpoints in %.1fs", masters.load_s)
    return masters
