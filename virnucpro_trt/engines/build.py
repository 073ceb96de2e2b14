"""``virnucpro-trt build``: compile DNABERT-S and ESM-2 for this machine, gate them, write the manifest.

An engine directory holds one artifact per encoder (``dnabert-s.<arch>.<precision>.<ext>``,
``esm2.<arch>.<precision>.<ext>``), the tokenizers they need, the classifier in safetensors, and
``manifest.json``. The manifest is written LAST: a directory without one is unfinished and is never
used. Each encoder is checked against the fp32 PyTorch model (:mod:`~virnucpro_trt.engines.parity`)
right after it is built; a failing engine fails the build with its figures unless ``keep_failing``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from virnucpro_trt import __version__
from virnucpro_trt.engines.manifest import MANIFEST_NAME, EngineManifest, ModelEntry, now_iso
from virnucpro_trt.engines.parity import reference_embeddings, run_parity, synthetic_tokens
from virnucpro_trt.engines.registry import choose_backend
from virnucpro_trt.engines.spec import (
    BuildOptions,
    BuildRequest,
    ModelKind,
    ShapeRange,
    arch_tag,
    artifact_name,
    default_shape_range,
)
from virnucpro_trt.errors import BuildError, UserError
from virnucpro_trt.models.checkpoints import load_encoder
from virnucpro_trt.models.classifier import (
    check_classifier_width,
    load_classifier_weights,
    save_classifier_safetensors,
)
from virnucpro_trt.models.identity import identify_checkpoint
from virnucpro_trt.models.kinds import ENCODER_NAMES, ENCODERS, MODELS
from virnucpro_trt.models.resolve import resolve_model
from virnucpro_trt.models.tokenization import DnaTokenizer, ProteinTokenizer, pad_batch
from virnucpro_trt.runtime.device import configure_fp32_reference, resolve_device
from virnucpro_trt.settings import DEFAULT_ATTENTION, EncoderSettings

log = logging.getLogger(__name__)

CLASSIFIER_FILE = "classifier.safetensors"


@dataclass(frozen=True)
class BuildSettings:
    """Everything ``build`` needs (the CLI fills it; ``predict --rebuild`` reuses it)."""

    dnabert: str
    esm: str
    classifier: str
    outdir: Path
    backend: str = "auto"
    precision: str = "fp32"
    device: str = "auto"
    max_batch_tokens: int | None = None
    max_length: int | None = None
    keep_failing: bool = False
    hardware_compatible: bool = False
    attention: str = DEFAULT_ATTENTION


def device_facts(device: torch.device) -> dict[str, Any]:
    facts: dict[str, Any] = {"type": device.type, "arch": arch_tag(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(name=props.name, compute_capability=f"{props.major}.{props.minor}")
    else:
        facts["name"] = "cpu"
    return facts


def _copy_tokenizer(
    kind: ModelKind, tokenizer: DnaTokenizer | ProteinTokenizer, source: Path, out: Path
) -> str:
    name = ENCODERS[kind].tokenizer_file
    if kind == "dnabert-s":
        shutil.copyfile(source / "tokenizer.json", out / name)
    else:
        assert isinstance(tokenizer, ProteinTokenizer)
        (out / name).write_text("\n".join(tokenizer.tokens) + "\n", encoding="utf-8")
    return name


def _example(tokens: list, shapes: ShapeRange, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded example batch inside the shape range (batch and length > 1 to avoid specialisation)."""
    batch = [t for t in tokens if len(t) <= shapes.max_length][: max(2, min(4, shapes.max_batch))]
    ids, mask = pad_batch(batch, pad_id)
    return torch.from_numpy(ids), torch.from_numpy(mask)


def build_engines(settings: BuildSettings, command: list[str] | None = None) -> EngineManifest:
    """Build, gate and describe the engines; returns the manifest written to ``settings.outdir``."""
    started = time.perf_counter()
    device = resolve_device(settings.device)
    if settings.precision == "fp8" and device.type != "cuda":
        raise UserError("--precision fp8 needs a CUDA GPU (Hopper/Ada class) to build and run")
    backend, reason = choose_backend(settings.backend, device, settings.precision)
    log.info("engine backend: %s (%s)", backend.name, reason)
    configure_fp32_reference()

    named = {"dnabert-s": settings.dnabert, "esm2": settings.esm, "classifier": settings.classifier}
    paths = {kind: resolve_model(spec, MODELS[kind].short) for kind, spec in named.items()}
    classifier = load_classifier_weights(paths["classifier"])
    out = settings.outdir
    out.mkdir(parents=True, exist_ok=True)
    # The manifest marks a finished directory: remove it first so a failed rebuild is never "finished".
    with contextlib.suppress(FileNotFoundError):
        (out / MANIFEST_NAME).unlink()
    budget = EncoderSettings(max_batch_tokens=settings.max_batch_tokens).batch_tokens_for(device.type)
    options = BuildOptions(
        workdir=out,
        timing_cache=out / "tensorrt.timing-cache",
        hardware_compatible=settings.hardware_compatible,
        max_batch_tokens=budget,
        attention=settings.attention,
    )
    arch = arch_tag(device)
    entries: dict[str, ModelEntry] = {}
    dims: dict[str, int] = {}
    failures: list[str] = []
    for kind in ENCODER_NAMES:
        entry, dim = _build_one(kind, paths[kind], settings, backend, device, arch, budget, options, failures)
        entries[kind] = entry
        dims[kind] = dim
    check_classifier_width(classifier, dims["dnabert-s"], dims["esm2"], paths["classifier"])
    save_classifier_safetensors(classifier, out / CLASSIFIER_FILE, source=str(paths["classifier"]))
    classifier_identity = identify_checkpoint("classifier", paths["classifier"])
    entries["classifier"] = ModelEntry(
        kind="classifier",
        artifact=CLASSIFIER_FILE,
        source_stamp=classifier_identity.stamps,
        weights_sha256=classifier_identity.sha256,
        source=str(paths["classifier"]),
        dim=classifier.input_dim,
    )
    entries["classifier"].record_files(out)
    if failures and not settings.keep_failing:
        raise BuildError(
            "parity gate failed: " + "; ".join(failures) + " (use --keep-failing to keep such engines)"
        )
    manifest = EngineManifest(
        backend=backend.name,
        precision=settings.precision,
        device=device_facts(device),
        libraries=backend.library_versions(),
        models=entries,
        build={
            "time": now_iso(),
            "seconds": round(time.perf_counter() - started, 1),
            "backend_choice": reason,
            "recipe_version": backend.recipe_version,
            "max_batch_tokens": budget,
            "hardware_compatible": settings.hardware_compatible,
            "attention_option": settings.attention,  # asked; the models' facts say what each calls
            "parity_failures_kept": failures,
            "command": command or sys.argv,
            "virnucpro_trt": __version__,
        },
    )
    manifest.write(out)
    log.info("engines written to %s in %.1fs", out, time.perf_counter() - started)
    return manifest


def _build_one(
    kind: ModelKind,
    path: Path,
    settings: BuildSettings,
    backend: Any,
    device: torch.device,
    arch: str,
    budget: int,
    options: BuildOptions,
    failures: list[str],
) -> tuple[ModelEntry, int]:
    t0 = time.perf_counter()
    model, tokenizer, info, dim = load_encoder(kind, path)
    shapes = default_shape_range(kind, budget, settings.max_length)
    tokens = synthetic_tokens(kind, tokenizer, shapes.max_length)
    # The reference comes first: a backend may cast the model in place while compiling it.
    model = model.to(device=device, dtype=torch.float32).eval()
    reference = reference_embeddings(model, tokens, device)
    name = artifact_name(kind, arch, settings.precision, backend.extension)
    log.info("building %s (%s, %s, %s) -> %s", kind, backend.name, settings.precision, device, name)
    request = BuildRequest(
        model, kind, _example(tokens, shapes, tokenizer.pad_id), shapes, settings.precision, device,
        settings.outdir / name, options,
    )  # fmt: skip
    built = backend.build(request)
    build_s = time.perf_counter() - t0
    runner = backend.load(request.load_request(built.path, dim, tokenizer.pad_id))
    parity = run_parity(runner, reference, tokens, settings.precision, min(budget, 4096))
    del model, runner
    if device.type == "cuda":
        torch.cuda.empty_cache()
    log.info("%s parity: %s -> %s", kind, parity.describe(), "PASSED" if parity.passed else "FAILED")
    if not parity.passed:
        failures.append(f"{kind}: {parity.describe()}")
    entry = ModelEntry(
        kind=kind,
        artifact=built.path.name,
        weights_sha256=info["weights_sha256"],
        source_stamp=info["weights_identity"].stamps,
        source=str(path),
        dim=dim,
        pad_id=tokenizer.pad_id,
        tokenizer=_copy_tokenizer(kind, tokenizer, path, settings.outdir),
        shapes=shapes.to_json(),
        files=[p.name for p in built.files if p != built.path],
        parity=parity.to_json(),
        facts={**built.facts, "build_seconds": round(build_s, 1)},
    )
    entry.record_files(settings.outdir)
    return entry, dim
