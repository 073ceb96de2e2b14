"""What a worker reports once its models are loaded: which models, how wide, on what device, how run.

A worker sends :class:`WorkerFacts` with its ``ready`` message; the coordinator keeps the first one,
``predict`` writes it into run.json (``models``, ``device``, ``precision``, ``backend``, ``engines``) and
sizes ``embeddings.h5`` from its widths, and :mod:`~virnucpro_trt.runtime.resume` saves it as
``.work/facts.json`` so a rerun that finds every shard finished can still write run.json without
loading a model. That file is read back as hostile input: a malformed one is ignored (the rerun then
starts one worker to learn the facts again), never a traceback.

The JSON keeps the layout run.json has always had: ``models.{dnabert,esm,classifier}``, ``dims``,
``device``, ``precision``, ``backend``, ``engines``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virnucpro_trt.files.json_fields import (
    FieldError,
    count,
    number,
    obj,
    optional_text,
    read_json_object,
    text,
)
from virnucpro_trt.models.classifier import ClassifierWeights
from virnucpro_trt.runtime.device import DeviceFacts
from virnucpro_trt.runtime.encoder import LoadedEncoder

MAX_FACTS_BYTES = 1 << 20  # about 1 KB in practice


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


@dataclass(frozen=True)
class EncoderFacts:
    """What run.json records about an encoder: where it came from, its width and batch token budget."""

    spec: str | None
    path: str | None
    format: str | None
    layout: str | None
    dim: int
    weights_sha256: str | None
    max_batch_tokens: int

    @classmethod
    def of(cls, encoder: LoadedEncoder) -> EncoderFacts:
        origin = encoder.origin
        return cls(
            spec=origin.spec,
            path=origin.path,
            format=origin.format,
            layout=origin.layout,
            dim=encoder.dim,
            weights_sha256=origin.weights_sha256,
            max_batch_tokens=encoder.max_batch_tokens,
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: str) -> EncoderFacts:
        data = obj(data, where, _field_names(cls))
        return cls(
            spec=optional_text(data, "spec"),
            path=optional_text(data, "path"),
            format=optional_text(data, "format"),
            layout=optional_text(data, "layout"),
            dim=count(data, "dim", 1),
            weights_sha256=optional_text(data, "weights_sha256"),
            max_batch_tokens=count(data, "max_batch_tokens", 1),
        )


@dataclass(frozen=True)
class ClassifierFacts:
    """The classifier's file and shape."""

    path: str
    input_dim: int
    hidden_dim: int
    bn_eps: float

    @classmethod
    def of(cls, weights: ClassifierWeights, path: Path | str) -> ClassifierFacts:
        return cls(str(path), weights.input_dim, weights.hidden_dim, weights.bn_eps)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> ClassifierFacts:
        data = obj(data, "models.classifier", _field_names(cls))
        eps = number(data, "bn_eps", 0.0)
        return cls(text(data, "path"), count(data, "input_dim", 1), count(data, "hidden_dim", 1), eps)


@dataclass(frozen=True)
class WorkerFacts:
    """A loaded worker's models and device (see the module docstring)."""

    dnabert: EncoderFacts
    esm: EncoderFacts
    classifier: ClassifierFacts
    device: DeviceFacts
    precision: str
    backend: str
    engines: str | None  # the engine directory, for runs on engines

    def models_json(self) -> dict[str, Any]:
        """run.json's ``models``."""
        return {
            "dnabert": self.dnabert.to_json(),
            "esm": self.esm.to_json(),
            "classifier": self.classifier.to_json(),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "models": self.models_json(),
            "dims": {"dnabert": self.dnabert.dim, "esm": self.esm.dim},
            "device": self.device.to_json(),
            "precision": self.precision,
            "backend": self.backend,
            "engines": self.engines,
        }

    def encode(self) -> bytes:
        return (json.dumps(self.to_json(), indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, data: Any) -> WorkerFacts:
        """Facts from their JSON, every field checked; :class:`FieldError` names the first bad one."""
        data = obj(data, "facts", ("models", "dims", "device", "precision", "backend", "engines"))
        models = obj(data["models"], "models", ("dnabert", "esm", "classifier"))
        facts = cls(
            dnabert=EncoderFacts.from_json(models["dnabert"], "models.dnabert"),
            esm=EncoderFacts.from_json(models["esm"], "models.esm"),
            classifier=ClassifierFacts.from_json(models["classifier"]),
            device=DeviceFacts.from_json(data["device"]),
            precision=text(data, "precision"),
            backend=text(data, "backend"),
            engines=optional_text(data, "engines"),
        )
        if data["dims"] != {"dnabert": facts.dnabert.dim, "esm": facts.esm.dim}:
            raise FieldError("dims: not the encoders' widths")
        return facts

    @classmethod
    def read(cls, path: Path) -> WorkerFacts:
        """The facts in ``path``: :class:`FieldError` when malformed, ``OSError`` when unreadable."""
        return cls.from_json(read_json_object(path, MAX_FACTS_BYTES))
