"""``virnucpro-trt build``: compile DNABERT-S and ESM-2 for this machine, gate them, write the manifest.

An engine directory holds one artifact per encoder (``dnabert-s.<arch>.<precision>.<ext>``,
``esm2.<arch>.<precision>.<ext>``), the tokenizers they need, the classifier in safetensors, and
``manifest.json``. The manifest is written LAST: a directory without one is unfinished and is never
used. Each encoder is checked against the fp32 PyTorch model (:mod:`~virnucpro_trt.engines.parity`)
right after it is built; a failing engine fails the build with its figures unless ``keep_failing``.

The engine folder is written like any output (:func:`check_engine_folder`, :func:`_publish`):

* before anything is written, a folder holding anything build did not make — a user's file, a
  symbolic link, a folder — is refused in one line (exit 2); its own files are the ones the folder's
  manifest records (an earlier build's) while they still have the SHA-256 it records, which a rebuild
  replaces (one changed since is the user's now, unless ``predict --rebuild`` asks for it again).
  ``force`` (``build --force``) lets build replace other regular files at the names it writes; a
  symbolic link is refused even then;
* every file is made inside a private staging folder that build creates in the engine folder
  (``.build-XXXXXXXX``, ``mkdtemp``), then renamed over its final name: no existing path is ever opened
  for writing, so a link planted at a name is replaced, never written through;
* nothing reaches the engine folder until every engine passed its gate; the manifest is renamed in
  last, and the staging folder (with whatever a failure left in it) is removed;
* the folder's run lock (``files/run_lock.py``) is held throughout: a second build into the same folder
  is refused (two at once would mix their files), and the lock notes the staging folder, so the build
  after a SIGKILL removes the killed build's (gigabytes, for full-size models).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from virnucpro_trt import __version__
from virnucpro_trt.engines.finished_build import build_differences
from virnucpro_trt.engines.manifest import (
    CLASSIFIER_FILE,
    MANIFEST_NAME,
    BuildFacts,
    EngineDevice,
    EngineManifest,
    ModelEntry,
    now_iso,
    own_file_names,
    recorded_digests,
    recorded_stale,
)
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
    vocab_size,
)
from virnucpro_trt.environment import CudaProperties, cpu_instruction_sets
from virnucpro_trt.errors import BuildError, EngineMismatchError, UserError
from virnucpro_trt.files.digests import sha256_file
from virnucpro_trt.files.folders import made_folder
from virnucpro_trt.files.run_lock import BUILD_STAGING, LOCK_FILE, STAGING_PREFIX, KeptFiles, outdir_lock
from virnucpro_trt.files.stamps import digest_holds
from virnucpro_trt.models.checkpoints import load_encoder, precheck_models
from virnucpro_trt.models.classifier import (
    load_classifier_weights,
    save_classifier_safetensors,
)
from virnucpro_trt.models.identity import identify_checkpoint
from virnucpro_trt.models.kinds import ENCODER_NAMES, ENCODERS, MODELS, checkpoint_specs
from virnucpro_trt.models.resolve import resolve_model
from virnucpro_trt.models.tokenization import DnaTokenizer, ProteinTokenizer, pad_batch
from virnucpro_trt.runtime.device import configure_fp32_reference, resolve_device
from virnucpro_trt.settings import DEFAULT_ATTENTION, EncoderSettings

log = logging.getLogger(__name__)

TIMING_CACHE = "tensorrt.timing-cache"  # TensorRT: shared by the builds into one folder
TRT_CACHE_SUFFIX = ".trt-cache"  # ONNX Runtime's TensorRT provider caches beside an .onnx it loads


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
    # Replace regular files at the names build writes even though it did not make them (never links).
    force: bool = False
    # Replace the files an earlier build made there even where they changed since (``predict --rebuild``:
    # the rebuild that a damaged or modified engine file asks for); never another file, never a link.
    replace_changed: bool = False

    def to_json(self) -> dict[str, Any]:
        """For a build in a child process (``bench``): every field is a JSON scalar but ``outdir``."""
        return {**asdict(self), "outdir": str(self.outdir)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BuildSettings:
        return cls(**{**data, "outdir": Path(data["outdir"])})


def device_facts(device: torch.device) -> EngineDevice:
    """``device`` as a manifest records it (and as a set's manifest is checked against)."""
    arch = arch_tag(device)
    if device.type == "cuda":
        gpu = CudaProperties.of(device)
        return EngineDevice(device.type, arch, gpu.name, compute_capability=gpu.compute_capability)
    return EngineDevice(device.type, arch, "cpu", instruction_sets=tuple(cpu_instruction_sets()))


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


def check_engine_folder(out: Path, force: bool = False, replace_changed: bool = False) -> set[str]:
    """Refuse, before anything is written, an engine folder holding what build did not make.

    Its own files are those the folder's manifest records (:func:`own_file_names`), ONNX Runtime's
    ``.trt-cache`` folders beside them, the run lock, and staging folders of interrupted builds. Anything
    else — a user's file or folder, any symbolic link — is refused in one line: a mistyped ``-o`` must
    not replace a user's files, and a link must never make build write outside the folder. ``force``
    accepts other regular files (they are replaced where build writes their names; the rest stay) but
    never a link. A file at a name the manifest records with its SHA-256 that no longer has it (edited,
    or another file put there) is refused unless ``force`` or ``replace_changed``. Returns the own names.
    """
    if os.path.lexists(out) and not out.is_dir():
        raise UserError(f"engine directory {out} exists and is not a folder; build into a folder")
    if not out.exists():
        return set()
    own, digests = own_file_names(out) | _stale_still_built(out), recorded_digests(out)
    links, foreign, edited = [], [], []
    for entry in sorted(os.scandir(out), key=lambda e: e.name):
        if entry.is_symlink():
            links.append(entry.name)
        elif _is_own(entry, own) and entry.name in digests and not _still_built(out, entry, digests):
            if not (force or replace_changed):
                edited.append(entry.name)
        elif _is_own(entry, own):
            continue
        elif entry.name.startswith(STAGING_PREFIX) and entry.is_dir():
            continue  # removed by the lock when noted there (build_engines), else named in a warning
        elif entry.name == LOCK_FILE and entry.is_file():
            continue  # what is at that name is checked when the lock is taken
        elif not (force and entry.is_file()):
            foreign.append(entry.name)
    if links:
        raise UserError(
            f"engine directory {out} holds symbolic links ({_some(links)}); build writes only files of its "
            "own there: remove them or build into another folder"
        )
    if foreign:
        raise UserError(
            f"engine directory {out} holds files virnucpro-trt build did not make ({_some(foreign)}); "
            "build into a new or empty folder, or one holding an earlier build"
        )
    if edited:
        raise UserError(
            f"engine directory {out}: {_some(edited)} changed since the build that made them (not the "
            "SHA-256 its manifest records): move them away if they are yours, or add --force to replace them"
        )
    return own


def _still_built(out: Path, entry: os.DirEntry[str], digests: dict[str, tuple[Any, Any]]) -> bool:
    """Whether the own file ``entry`` is still the one the earlier build recorded (its stamp, else its
    SHA-256): a file edited or replaced since is the user's now, and a rebuild must not replace it."""
    sha256, stamp = digests[entry.name]
    try:
        return digest_holds(out / entry.name, sha256, stamp)
    except OSError:  # gone or unreadable in between: not shown to be ours
        return False


def _is_own(entry: os.DirEntry[str], own: set[str]) -> bool:
    """A file an earlier build recorded, or the ``.trt-cache`` folder of an ``.onnx`` it recorded."""
    if entry.is_file():
        return entry.name in own
    cached = entry.name.removesuffix(TRT_CACHE_SUFFIX)
    return entry.is_dir() and cached != entry.name and cached in own


def _stale_still_built(out: Path) -> set[str]:
    """The earlier build's stale files (:func:`recorded_stale`: a build killed before it removed them)
    that still have their recorded SHA-256: the tool's, for this build to remove. Anything else at such
    a name (a file put there since) is a user's, refused like any other."""
    names = set()
    for name, sha256 in recorded_stale(out).items():
        path = out / name
        try:
            if not path.is_symlink() and path.is_file() and sha256_file(path) == sha256:
                names.add(name)
        except OSError:  # gone or unreadable: not ours to count
            continue
    return names


def _some(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


@dataclass(frozen=True)
class BuildPlan:
    """What a build resolved before compiling: the device, the backend (and why), the token budget."""

    device: torch.device
    backend: Any  # an EngineBackend from the registry
    reason: str
    budget: int

    @classmethod
    def of(cls, settings: BuildSettings) -> BuildPlan:
        device = resolve_device(settings.device)
        if settings.precision == "fp8" and device.type != "cuda":
            raise UserError("--precision fp8 needs a CUDA GPU (Hopper/Ada class) to build and run")
        backend, reason = choose_backend(settings.backend, device, settings.precision)
        budget = EncoderSettings(max_batch_tokens=settings.max_batch_tokens).batch_tokens_for(device.type)
        return cls(device, backend, reason, budget)

    def differences(self, settings: BuildSettings) -> list[str]:
        """Why ``settings.outdir`` does not already hold this build's set (empty: it does)."""
        return build_differences(settings, device_facts(self.device), self.backend, self.budget)


@dataclass(frozen=True)
class BuildOutcome:
    """The engine set in the folder, and whether this build made it or found it there already made."""

    manifest: EngineManifest
    built: bool


def build_engines(
    settings: BuildSettings, command: list[str] | None = None, wait: bool = False
) -> BuildOutcome:
    """Build, gate and describe the engines into ``settings.outdir``; a folder that already holds the set
    this build would make (``finished_build``) is left as it is, unless ``force`` or ``replace_changed``.

    That check reads and writes nothing but the set's own files, so it comes before the folder's other
    contents are judged and before the run lock (an intact set in a read-only folder is up to date).
    Another build writing the folder refuses this one (exit 2), or with ``wait`` (``bench``, whose runs
    may share a work folder) is waited for, and the check is made again after it: the set that build
    finished is likely this one.
    """
    out = settings.outdir
    plan = BuildPlan.of(settings)
    again = settings.force or settings.replace_changed  # asked to build whatever the folder holds
    differences = [] if again else plan.differences(settings)
    if not again and not differences:
        return _found_made(out)
    own = check_engine_folder(out, settings.force, settings.replace_changed)  # before anything is written
    # a failed first build leaves no folder it made; the lock keeps (and after a SIGKILL removes) staging
    with made_folder(out), outdir_lock(out, KeptFiles(staging=BUILD_STAGING), wait=wait) as lock:
        if lock is not None and lock.waited:  # the folder is what the build waited for left
            differences = [] if again else plan.differences(settings)
            if not again and not differences:
                return _found_made(out)
            own = check_engine_folder(out, settings.force, settings.replace_changed)
        if differences and (out / MANIFEST_NAME).is_file():
            log.info("building again in %s: %s", out, "; ".join(differences))
        log.info("engine backend: %s (%s)", plan.backend.name, plan.reason)
        _warn_left_staging(out)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
        if lock is not None:
            lock.note_folder(staging)
        try:
            manifest = _build_into(settings, plan, staging, own, command)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("engines written to %s in %.1fs", out, manifest.build.seconds or 0.0)
    return BuildOutcome(manifest, built=True)


def _found_made(out: Path) -> BuildOutcome:
    """The folder's set, found to be the one this build would make: said in one line, left as it is."""
    manifest = EngineManifest.read(out)
    log.info(
        "%s already holds these engines (built %s from the same checkpoints and settings); nothing to "
        "build (--force builds them again)", out, manifest.build.time,
    )  # fmt: skip
    _warn_left_staging(out)
    return BuildOutcome(manifest, built=False)


def _warn_left_staging(out: Path) -> None:
    """Name the staging folders an interrupted build left that its lock did not note (those it noted
    were removed when the lock was taken)."""
    for left in sorted(out.glob(f"{STAGING_PREFIX}*")):
        if left.is_dir() and not left.is_symlink():
            log.warning("%s: %s was left by an interrupted build; remove it", out, left.name)


def _build_into(
    settings: BuildSettings, plan: BuildPlan, staging: Path, own: set[str], command: list[str] | None
) -> EngineManifest:
    """Build every file in ``staging``, gate it, then publish the set into ``settings.outdir``."""
    started = time.perf_counter()
    device, backend, reason, budget = plan.device, plan.backend, plan.reason, plan.budget
    configure_fp32_reference()

    named = checkpoint_specs(settings.dnabert, settings.esm, settings.classifier)
    paths = {kind: resolve_model(spec, MODELS[kind].short) for kind, spec in named.items()}
    classifier = load_classifier_weights(paths["classifier"])
    encoders = {kind: paths[kind] for kind in ENCODER_NAMES}
    precheck_models(encoders, classifier, paths["classifier"])  # before minutes of compiling
    out = settings.outdir
    if TIMING_CACHE in own:  # an earlier build's cache makes TensorRT rebuilds much faster
        shutil.copyfile(out / TIMING_CACHE, staging / TIMING_CACHE)
    options = BuildOptions(
        workdir=staging,
        timing_cache=staging / TIMING_CACHE,
        hardware_compatible=settings.hardware_compatible,
        max_batch_tokens=budget,
        attention=settings.attention,
    )
    arch = arch_tag(device)
    entries: dict[str, ModelEntry] = {}
    failures: list[str] = []
    for kind in ENCODER_NAMES:
        entries[kind] = _build_one(
            kind, paths[kind], settings, backend, device, arch, budget, options, failures, staging
        )
    save_classifier_safetensors(classifier, staging / CLASSIFIER_FILE, source=str(paths["classifier"]))
    classifier_identity = identify_checkpoint("classifier", paths["classifier"])
    entries["classifier"] = ModelEntry(
        kind="classifier",
        artifact=CLASSIFIER_FILE,
        source_stamp=classifier_identity.stamps,
        weights_sha256=classifier_identity.sha256,
        source=str(paths["classifier"]),
        dim=classifier.input_dim,
    )
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
        build=BuildFacts(
            time=now_iso(),
            backend_choice=reason,
            recipe_version=backend.recipe_version,
            max_batch_tokens=budget,
            hardware_compatible=settings.hardware_compatible,
            attention_option=settings.attention,  # asked; the models' facts say what each calls
            parity_failures_kept=tuple(failures),
            command=tuple(command or sys.argv),
            virnucpro_trt=__version__,
        ),
    )
    stale = _publish(staging, out, manifest, own)
    manifest.build = replace(manifest.build, seconds=round(time.perf_counter() - started, 1))
    manifest.write(staging)
    _rename_into(staging, out, MANIFEST_NAME)  # last: the folder is finished
    _remove_stale(out, stale)
    return manifest


def _publish(staging: Path, out: Path, manifest: EngineManifest, own: set[str]) -> dict[str, str]:
    """Rename every built file from ``staging`` over its name in ``out``, then hash and stamp it there;
    returns the earlier build's stale files (see :func:`_remove_stale`).

    The stamps are taken after the rename (which changes a file's ctime), so later checks of the
    unchanged set skip the re-hash. An earlier build's files that this one does not replace and that
    are not stale stay recorded in ``build.own_files``, so a later build still knows them as its own.
    """
    earlier = _earlier_set(out)  # the manifest there is still the earlier build's
    names = [name for entry in manifest.models.values() for name in entry.file_names()]
    extra = [TIMING_CACHE] if (staging / TIMING_CACHE).is_file() else []
    for name in [*names, *extra]:
        _rename_into(staging, out, name)
    for entry in manifest.models.values():
        entry.record_files(out)
    stale = {
        name: digest
        for name, digest in sorted(earlier.items())
        if name in own and name not in names and name != TIMING_CACHE and os.path.lexists(out / name)
        and not os.path.lexists(out / f"{name}{TRT_CACHE_SUFFIX}")  # its TensorRT cache still names it
    }  # fmt: skip
    kept = {n for n in own - {MANIFEST_NAME} if (out / n).is_file() and not (out / n).is_symlink()}
    own_files = tuple(sorted(kept.union(extra) - set(names) - set(stale)))
    # stale_files: removed after the manifest (killed between: by the next build)
    manifest.build = replace(manifest.build, own_files=own_files, stale_files=stale)
    return stale


def _earlier_set(out: Path) -> dict[str, str]:
    """``{name: SHA-256}`` of every file the engine set in ``out`` names (and the stale files it records,
    which that build was killed before removing), when its manifest is one the strict reader takes (what
    a run would use); else nothing. Only such files may go as stale: a
    manifest anyone edited to name a user's file is no valid set, and a stamp (readable by anyone with
    ``stat``) is no proof, so removal asks for the SHA-256 itself."""
    if not (out / MANIFEST_NAME).is_file():
        return {}
    try:
        manifest = EngineManifest.read(out)
    except (EngineMismatchError, OSError, ValueError):
        return {}
    entries = manifest.models.values()
    named = {name: entry.file_sha256[name] for entry in entries for name in entry.file_names()}
    left = manifest.build.stale_files or {}  # what that build left to remove, if it was killed
    return {**left, **named}


def _remove_stale(out: Path, stale: dict[str, str]) -> None:
    """Remove the earlier build's engine files this build did not write again (another precision,
    backend or device: the new manifest no longer names them, so no run can use them, and at full size
    they are gigabytes), each only while it still has the SHA-256 that build recorded (read again here);
    one changed since is the user's, kept and named."""
    for name, sha256 in sorted(stale.items()):
        path = out / name
        if not os.path.lexists(path):
            continue
        try:
            ours = not path.is_symlink() and path.is_file() and sha256_file(path) == sha256
            if ours:
                path.unlink()
        except OSError:  # gone or unreadable in between: left as it is
            ours = False
        if ours:
            log.info("%s: removed %s, an earlier build's file this build's manifest does not name", out, name)
        else:
            log.warning("%s: kept %s, changed since the earlier build that made it", out, name)


def _rename_into(staging: Path, out: Path, name: str) -> None:
    """Move ``staging/name`` over ``out/name``; refused when ``out/name`` became a link or a folder.

    ``os.replace`` swaps the directory entry: whatever was at the name (our earlier file, or with
    ``force`` a user's) is unlinked, never opened, so nothing outside the folder is ever written.
    """
    target = out / name
    if target.is_symlink() or (os.path.lexists(target) and not target.is_file()):
        raise UserError(f"engine directory {out}: {name} is now a symbolic link or not a file (refused)")
    os.replace(staging / name, target)


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
    folder: Path,
) -> ModelEntry:
    """Build, load and gate one encoder in ``folder`` (the staging folder); its files are hashed later."""
    t0 = time.perf_counter()
    model, tokenizer, origin, dim = load_encoder(kind, path)
    assert origin.weights_identity is not None  # load_encoder always identifies the checkpoint
    vocab = vocab_size(model, kind)
    shapes = default_shape_range(kind, budget, settings.max_length)
    tokens = synthetic_tokens(kind, tokenizer, shapes.max_length)
    # The reference comes first: a backend may cast the model in place while compiling it.
    model = model.to(device=device, dtype=torch.float32).eval()
    reference = reference_embeddings(model, tokens, device)
    name = artifact_name(kind, arch, settings.precision, backend.extension)
    log.info("building %s (%s, %s, %s) -> %s", kind, backend.name, settings.precision, device, name)
    request = BuildRequest(
        model, kind, _example(tokens, shapes, tokenizer.pad_id), shapes, settings.precision, device,
        folder / name, options,
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
    facts = {**built.facts, "build_seconds": round(build_s, 1)}
    if facts.get("timing_cache"):  # where the cache ends up, not the staging folder
        facts["timing_cache"] = str(settings.outdir / TIMING_CACHE)
    return ModelEntry(
        kind=kind,
        artifact=built.path.name,
        weights_sha256=origin.weights_sha256,
        source_stamp=origin.weights_identity.stamps,
        source=str(path),
        dim=dim,
        pad_id=tokenizer.pad_id,
        vocab_size=vocab,
        tokenizer=_copy_tokenizer(kind, tokenizer, path, folder),
        shapes=shapes.to_json(),
        files=[p.name for p in built.files if p != built.path],
        parity=parity,
        facts=facts,
    )
