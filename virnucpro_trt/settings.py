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
class PredictSettings:
    """Everything that decides what ``predict`` writes."""

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

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["outdir"] = str(self.outdir)
        data["engines"] = str(self.engines) if self.engines else None
        return data

    def fingerprint(self) -> str:
        """Hash of the settings that change results (not where they are written)."""
        data = self.to_json()
        data.pop("outdir")
        data.pop("rebuild")
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
