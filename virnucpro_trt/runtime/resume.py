"""``OUTDIR/.work``: what makes a run resumable, and the rules for trusting what an earlier run left.

Layout (every name the tool writes there is in :data:`WORK_NAMES`; nothing else is ever removed)::

    .work/state.json          the resume key (input SHA-256, settings fingerprint, tool version) + models
    .work/shards/             shard-NNNNNN.fa (2-line FASTA) + index.json (shard list, input summary)
    .work/results/            per-shard result files + shard-NNNNNN.done.json markers
    .work/facts.json          models/device facts from the first worker (for run.json on a full resume)

A shard counts as finished only if its marker names the same record range and every file the marker
lists still has the SHA-256 the marker recorded (a file that still carries the stamp recorded beside it
is not read again: ``files/stamps.py``); anything else is redone. Markers are written last, each
file through a temporary name and a rename, so a run killed at any instant (SIGKILL included) leaves
either a complete, verifiable shard or one that is simply redone. The shard files are trusted the same
way: each must still have the size and SHA-256 ``index.json`` recorded when it was written, or the input
(itself identified by SHA-256 in the resume key) is sharded again and every shard redone, as for any
other stale index — a shard edited in place would otherwise be run as if it held the user's records.

Unfinished work for another input, other settings, another virnucpro-trt version (its code makes the
shards' results) or other model weights (the model identity: content hashes of the three checkpoints and
of the engine set) is refused (exit 2) rather than mixed in or
silently thrown away — unless ``--force``, or unless not a single shard of it had finished (then there
is nothing to lose and it is discarded with a log line). A ``.work`` holding files the tool does not know
is refused: they may be someone's, and a clean-up that removes only what it knows must not pretend to
own them. Two runs on one output folder at the same time are refused too
(:func:`~virnucpro_trt.files.run_lock.outdir_lock`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from virnucpro_trt import __version__
from virnucpro_trt.errors import UserError, shown
from virnucpro_trt.files.atomic import write_bytes_atomic
from virnucpro_trt.files.bounded_read import read_bounded
from virnucpro_trt.files.json_fields import FieldError, parse_json
from virnucpro_trt.files.result_names import RUN_JSON
from virnucpro_trt.files.run_lock import LOCK_FILE
from virnucpro_trt.files.stamps import digest_holds
from virnucpro_trt.runtime.shard_marker import MARKER_SUFFIX, RESULT_SUFFIXES, ShardMarker, marker_path
from virnucpro_trt.runtime.shards import PIECE_FILE, SHARD_FILE, ShardIndex, ShardSpec, read_shard_index
from virnucpro_trt.runtime.worker_facts import WorkerFacts

log = logging.getLogger(__name__)

WORK_DIR = ".work"
STATE_SCHEMA = 2
MAX_STATE_BYTES = 16 << 20

_PARTIAL = r"\.[^/]+\.partial"  # files.atomic temporaries: .NAME.<pid>-<thread>.partial
_SHARD_FILES = re.compile(rf"{SHARD_FILE.pattern}|{PIECE_FILE.pattern}|index\.json(\.tmp)?|{_PARTIAL}")
# Every name the tool writes under .work, per folder (a regex for the files, the subfolders by name).
WORK_NAMES: dict[str, tuple[re.Pattern[str], tuple[str, ...]]] = {
    "": (re.compile(r"state\.json|facts\.json|" + _PARTIAL), ("shards", "shards.tmp", "results")),
    "shards": (_SHARD_FILES, ()),
    "shards.tmp": (_SHARD_FILES, ()),
    "results": (
        re.compile(
            r"shard-\d{6}("
            + "|".join(re.escape(suffix) for suffix in (*RESULT_SUFFIXES.values(), MARKER_SUFFIX))
            + ")|"
            + _PARTIAL
        ),
        (),
    ),
}


def changed_models(recorded: Any, identity: dict[str, str | None]) -> str:
    """The models (``dnabert-s``, ``esm2``, ``classifier``, ``engines``) and the computing libraries
    (``torch``, ``onnxruntime``: ``device.computing_releases``) whose identity differs from the
    ``recorded`` one (a state file's or run.json's, read as hostile), for messages."""
    old = recorded if isinstance(recorded, dict) else {}
    return ", ".join(k for k in identity if old.get(k) != identity[k]) or "model identity"


def inside_work_area(path: Path) -> Path | None:
    """The ``.work`` folder of a virnucpro-trt run that ``path`` lies in (or is), if any.

    A folder named ``.work`` counts when it looks like ours: it holds a state file, shards or results,
    or its parent holds a run's lock or run.json.
    """
    resolved = path.resolve()
    for folder in (resolved, *resolved.parents):
        if folder.name != WORK_DIR:
            continue
        ours = any((folder / name).exists() for name in ("state.json", "shards", "results", "shards.tmp"))
        if ours or any((folder.parent / name).exists() for name in (LOCK_FILE, RUN_JSON)):
            return folder
    return None


class WorkDir:
    """The ``.work`` folder of one output directory."""

    def __init__(self, outdir: Path):
        self.root = Path(outdir) / WORK_DIR
        self.shards = self.root / "shards"
        self.results = self.root / "results"
        self.state_path = self.root / "state.json"
        self.facts_path = self.root / "facts.json"

    # -- what is ours ----------------------------------------------------------------------------
    def foreign_files(self) -> list[str]:
        """Paths under ``.work`` (relative) that the tool did not write: unknown names, links, folders."""
        foreign: list[str] = []
        for sub, (files, folders) in WORK_NAMES.items():
            folder = self.root / sub if sub else self.root
            if not folder.is_dir() or folder.is_symlink():
                if folder.is_symlink():
                    foreign.append(sub)
                continue
            for entry in sorted(folder.iterdir()):
                name = f"{sub}/{entry.name}" if sub else entry.name
                if entry.is_symlink():
                    foreign.append(name)
                elif entry.is_dir():
                    if not (sub == "" and entry.name in folders):
                        foreign.append(name + "/")
                elif not entry.is_file():  # a FIFO, socket or device: never a file the tool wrote
                    foreign.append(f"{name} [not a regular file]")
                elif not files.fullmatch(entry.name):
                    foreign.append(name)
        return foreign

    def check_ours(self) -> None:
        """Refuse (exit 2) a ``.work`` that holds anything the tool did not write."""
        if self.root.is_symlink() or (self.root.exists() and not self.root.is_dir()):
            raise UserError(f"{self.root} is not a folder this tool made; move it away or use another OUTDIR")
        foreign = self.foreign_files()
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" (+{len(foreign) - 3} more)" if len(foreign) > 3 else "")
            raise UserError(
                f"{self.root} holds files virnucpro-trt did not write ({shown}); move them out of the "
                "working area or choose another OUTDIR"
            )

    def _remove_ours(self, sub: str) -> None:
        """Remove the files the tool writes in ``.work/<sub>``, then the folder itself if it is empty."""
        files, folders = WORK_NAMES[sub]
        folder = self.root / sub if sub else self.root
        if not folder.is_dir() or folder.is_symlink():
            return
        for name in folders:
            self._remove_ours(name)
        for entry in folder.iterdir():
            if entry.is_file() and not entry.is_symlink() and files.fullmatch(entry.name):
                entry.unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:
            left = sorted(p.name for p in folder.iterdir())
            log.warning("left %s in place: it holds files this run did not write (%s)", folder, left)

    # -- the resume key: the input's SHA-256, the settings fingerprint, the tool's version (and the models,
    # confirm_models) --------------------------------------------------------------------------------
    def open(self, input_sha256: str, fingerprint: str, force: bool) -> bool:
        """Decide what to do with an existing ``.work``; returns True when it is resumed.

        Raises :class:`UserError` when it holds files the tool did not write, or finished shards of
        another input or other settings and ``force`` is not set.
        """
        if not self.root.exists() and not self.root.is_symlink():
            return False
        self.check_ours()
        state = self._read_json(self.state_path)
        if state is None:  # died before the shards were written, or damaged: which run it was is unknown
            done = self.finished_count()
            if done:
                log.warning(
                    "discarding %s: its %s is missing or damaged, so its %d finished shard(s) cannot be "
                    "told to be this run's; they are computed again", self.root, self.state_path.name, done,
                )  # fmt: skip
            self.wipe()
            return False
        same_input = state.get("input_sha256") == input_sha256
        same_settings = state.get("settings_fingerprint") == fingerprint
        version = state.get("version")
        same_version = version == __version__  # shards of two versions are never mixed
        if same_input and same_settings and same_version and state.get("schema") == STATE_SCHEMA:
            return True
        done = self.finished_count()
        fix = "the original command on the original input"
        if not same_input:
            what = "a different input (another file, or this one edited since the run started)"
        elif not same_settings:
            what = "different settings"
        elif version is None:
            what = "no recorded virnucpro-trt version (written before versions were recorded)"
        elif not same_version:
            what = f"another virnucpro-trt version ({shown(version)}, this is {__version__})"
            fix = "that version"
        else:
            what = f"another .work format (schema {shown(state.get('schema'))})"
        if force:
            log.warning("--force: discarding the unfinished work in %s", self.root)
        elif done == 0:
            log.info("discarding %s: started with %s and no shard had finished", self.root, what)
        else:
            raise UserError(
                f"{self.root} holds {done} finished shard(s) of a run with {what}; rerun {fix} to finish "
                "it, or add --force to discard it"
            )
        self.wipe()
        return False

    def write_state(self, input_sha256: str, fingerprint: str, settings: dict[str, Any]) -> None:
        data = {
            "schema": STATE_SCHEMA,
            "version": __version__,
            "input_sha256": input_sha256,
            "settings_fingerprint": fingerprint,
            "settings": settings,
        }
        self._write_json(self.state_path, data)

    def recorded_weights(self) -> dict[str, Any]:
        """The weights identities (with stamps) an earlier attempt recorded: hashes it may reuse."""
        state = self._read_json(self.state_path) or {}
        weights = state.get("weights")
        return weights if isinstance(weights, dict) else {}

    def confirm_models(self, identity: dict[str, str | None], weights: dict[str, Any], force: bool) -> None:
        """Finished shards must come from the same model weights and engines as this run (exit 2 if not).

        ``identity`` maps ``dnabert-s``/``esm2``/``classifier``/``engines`` to content hashes; ``weights``
        are the identities with stamps, recorded so a rerun need not hash unchanged files again.
        """
        state = self._read_json(self.state_path)
        if state is None:
            raise UserError(f"{self.state_path} vanished during the run; rerun the command")
        recorded = state.get("model_identity")
        if recorded != identity:
            done = self.finished_count()
            if recorded is not None and done:
                if not force:
                    raise UserError(
                        f"{self.root} holds {done} finished shard(s) computed with other model weights or "
                        f"configuration ({changed_models(recorded, identity)} changed since); restore"
                        " the original files (and library releases) and rerun, or add --force to discard"
                        " that work"
                    )
                log.warning(
                    "--force: discarding %d shard(s) computed with other model weights or configuration", done
                )
                self._remove_ours("results")
                self.results.mkdir(parents=True, exist_ok=True)
        state["model_identity"] = identity
        state["weights"] = weights
        self._write_json(self.state_path, state)

    def record_outputs(self, outputs: dict[str, Any]) -> None:
        """Note in the state the result files about to be renamed into OUTDIR (``{name: {bytes, sha256}}``
        of their complete temporary files).

        Until run.json is written, this is what says they are the tool's: a run killed in between leaves
        them with no run.json, and its rerun may replace them only because they are noted here unchanged.
        """
        state = self._read_json(self.state_path)
        if state is not None:
            state["outputs"] = outputs
            self._write_json(self.state_path, state)

    def recorded_outputs(self) -> dict[str, Any]:
        """The result files an earlier attempt noted (:meth:`record_outputs`); none when ``.work`` or its
        state is a link, or the state is missing or damaged."""
        if self.root.is_symlink() or self.state_path.is_symlink():
            return {}
        outputs = (self._read_json(self.state_path) or {}).get("outputs")
        return outputs if isinstance(outputs, dict) else {}

    def finished_count(self) -> int:
        return len(list(self.results.glob(f"*{MARKER_SUFFIX}"))) if self.results.is_dir() else 0

    # -- shards ----------------------------------------------------------------------------------
    def shard_index(self) -> ShardIndex | None:
        return read_shard_index(self.shards) if self.shards.is_dir() else None

    def fresh_shards_folder(self) -> Path:
        """An empty folder to write shards into; :meth:`commit_shards` renames it to ``shards/``."""
        for sub in ("shards.tmp", "shards", "results"):
            self._remove_ours(sub)
        tmp = self.root / "shards.tmp"
        tmp.mkdir(parents=True)
        return tmp

    def commit_shards(self, tmp: Path) -> None:
        tmp.replace(self.shards)
        self.results.mkdir(parents=True, exist_ok=True)

    # -- results ---------------------------------------------------------------------------------
    def finished_shards(self, shards: list[ShardSpec], roles: Collection[str]) -> dict[int, ShardMarker]:
        """Markers of the shards whose results verify and include every file of ``roles`` (the ones this
        run merges); any other marker is removed (the shard is redone)."""
        self.results.mkdir(parents=True, exist_ok=True)
        for stale in self.results.glob(".*.partial"):  # a writer killed between write and rename
            stale.unlink(missing_ok=True)
        finished: dict[int, ShardMarker] = {}
        for shard in shards:
            path = marker_path(self.results, shard)
            if not path.exists():
                continue
            try:
                marker = ShardMarker.read(path)
                problem = self._marker_problem(marker, shard, roles)
            except OSError:
                problem = "its marker is unreadable"
            except FieldError as exc:
                problem = f"its marker is malformed ({exc})"
            if problem is None:
                finished[shard.id] = marker
            else:
                log.warning("%s will be redone: %s", shard.describe(), problem)
                path.unlink(missing_ok=True)
        return finished

    def _marker_problem(self, marker: ShardMarker, shard: ShardSpec, roles: Collection[str]) -> str | None:
        if (marker.shard, marker.first_record, marker.records) != (shard.id, shard.first, shard.records):
            return "its marker names other records"
        missing = marker.lacks(roles)
        if missing:
            return f"its marker lists no {', '.join(missing)} file"
        for role, entry in marker.files.items():
            path = self.results / entry.name
            if not path.is_file() or path.stat().st_size != entry.size:
                return f"its {role} file is missing or truncated"
            if not digest_holds(path, entry.sha256, entry.stamp):
                return f"its {role} file does not match its recorded SHA-256"
        return None

    # -- facts -----------------------------------------------------------------------------------
    def save_facts(self, facts: WorkerFacts) -> None:
        write_bytes_atomic(self.facts_path, facts.encode())

    def read_facts(self) -> WorkerFacts | None:
        """The facts an earlier attempt's worker reported, or None when absent or malformed (a worker
        is then started to report them again)."""
        try:
            return WorkerFacts.read(self.facts_path)
        except FileNotFoundError:
            return None
        except (OSError, FieldError) as exc:
            log.warning("ignoring %s: %s", self.facts_path, exc)
            return None

    def holds_run(self, input_sha256: str, fingerprint: str) -> bool:
        """Whether ``.work`` is a folder whose state names this input and these settings (a finished
        run's leftover, when its run.json says so too)."""
        if self.root.is_symlink() or not self.root.is_dir():
            return False
        state = self._read_json(self.state_path)
        return (
            state is not None
            and state.get("input_sha256") == input_sha256
            and state.get("settings_fingerprint") == fingerprint
            and state.get("version") == __version__
        )

    # -- housekeeping ----------------------------------------------------------------------------
    def wipe(self) -> None:
        """Remove everything the tool writes under ``.work`` — and nothing else."""
        self._remove_ours("")

    def _write_json(self, path: Path, data: dict[str, Any]) -> None:
        write_bytes_atomic(path, (json.dumps(data, indent=1) + "\n").encode())

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any] | None:
        """The JSON object in ``path``; None when it is missing, not a regular file (a FIFO there would
        block the run forever), larger than :data:`MAX_STATE_BYTES` or not a JSON object."""
        try:
            data = parse_json(read_bounded(path, MAX_STATE_BYTES))
        except (OSError, ValueError):  # FileTooLarge is a ValueError
            return None
        return data if isinstance(data, dict) else None
