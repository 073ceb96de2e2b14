"""One frozen dataclass per command's settings: what run.json records and what a resume key hashes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK_LENGTHS = (300, 500)
# "torch" runs the native models eagerly; the others are compiled engines (built into ENGINE_DIR or,
# without --engines, into OUTDIR/engines and reused while they match). "auto" picks an engine backend.
BACKENDS = ("torch", "auto", "onnxruntime", "inductor", "tensorrt")
DEFAULT_CPU_BATCH_TOKENS = 4096
# Attention kernels a CUDA engine can be built with (runtime/attention_kernel.py says why); here, torch-free,
# so the CLI offers the same names the runtime accepts.
ATTENTION_KERNELS = ("efficient", "cudnn", "auto")
DEFAULT_ATTENTION = "efficient"
DEFAULT_CUDA_BATCH_TOKENS = 32768


@dataclass(frozen=True)
class EncoderSettings:
    """How the encoders run: backend, device, precision and the batch token budget.

    ``backend``/``precision`` are None when the user did not choose: eager torch in fp32, or whatever
    an engine directory's manifest says.
    """

    backend: str | None = None
    device: str = "auto"
    precision: str | None = None
    max_batch_tokens: int | None = None
    threads: int | None = None

    def batch_tokens_for(self, device_type: str) -> int:
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        return DEFAULT_CUDA_BATCH_TOKENS if device_type == "cuda" else DEFAULT_CPU_BATCH_TOKENS


@dataclass(frozen=True)
class RunControl:
    """How a ``predict`` run is carried out, as opposed to what it computes.

    None of this changes a result byte (shard size does, so it lives in :class:`PredictSettings`), which
    is why it is left out of the fingerprint: a run interrupted on 4 GPUs may be resumed on 2.
    """

    gpus: tuple[int, ...] | None = None  # None: every visible CUDA device
    workers: int | None = None  # CPU worker count; None: 1
    keep_work: bool = False  # keep OUTDIR/.work after success
    force: bool = False  # discard unfinished work of another input or other settings


@dataclass(frozen=True)
class PredictSettings:
    """Everything that decides what ``predict`` writes (plus, in ``run``, how the run is carried out)."""

    input: str
    outdir: Path
    dnabert: str | None  # None: taken from --engines
    esm: str | None
    classifier: str | None
    chunk_length: int = 500
    encoders: EncoderSettings = dataclasses.field(default_factory=EncoderSettings)
    save_embeddings: bool = False
    engines: Path | None = None
    rebuild: bool = False
    # Records per shard (None: the input-size rule in runtime/shards.py). Shards are batched on their
    # own, so this changes fp32 sums in the last bits: it is part of the fingerprint.
    shard_records: int | None = None
    run: RunControl = dataclasses.field(default_factory=RunControl)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["outdir"] = str(self.outdir)
        data["engines"] = str(self.engines) if self.engines else None
        gpus = self.run.gpus
        data["run"]["gpus"] = list(gpus) if gpus is not None else None
        return data

    def fingerprint(self) -> str:
        """Hash of the settings that change results (not where they are written, nor by how many workers).

        It is the resume key of ``OUTDIR/.work`` together with the input's SHA-256 and the model identity.
        Model and engine paths stay out: the identity (content hashes) stands for them, so a moved
        checkpoint folder still resumes while a file replaced at the same path does not.
        """
        data = self.to_json()
        for path_setting in ("outdir", "dnabert", "esm", "classifier", "engines"):
            data.pop(path_setting)
        data.pop("rebuild")
        data.pop("run")
        data["encoders"].pop("threads", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class EmbedSettings:
    """Everything that decides what ``embed`` writes."""

    input: str
    output: Path
    model: str
    weights: str | None
    encoders: EncoderSettings = dataclasses.field(default_factory=EncoderSettings)
    engines: Path | None = None
    rebuild: bool = False
