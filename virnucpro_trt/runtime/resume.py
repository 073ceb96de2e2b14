"""``OUTDIR/.work``: what makes a run resumable, and the rules for trusting what an earlier run left.

Layout::

    .work/state.json          input SHA-256 + settings fingerprint (the resume key)
    .work/shards/             shard-NNNNNN.fa (2-line FASTA) + index.json (shard list, input summary)
    .work/results/            per-shard result files + shard-NNNNNN.done.json markers
    .work/facts.json          models/device facts from the first worker (for run.json on a full resume)

A shard counts as finished only if its marker names the same record range and every file the marker
lists still has the SHA-256 the marker recorded; anything else is redone. Markers are written last, each
file through a temporary name and a rename, so a run killed at any instant (SIGKILL included) leaves
either a complete, verifiable shard or one that is simply redone.

Unfinished work for another input or other settings is refused (exit 2) rather than mixed in or
silently thrown away — unless ``--force``, or unless not a single shard of it had finished (then there
is nothing to lose and it is discarded with a log line). Two runs on one output folder at the same time
are refused too (:func:`outdir_lock`: an advisory ``flock`` the kernel releases even after SIGKILL).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from virnucpro_trt.errors import UserError
from virnucpro_trt.runtime.shards import ShardSpec, read_shard_index

log = logging.getLogger(__name__)

WORK_DIR = ".work"
LOCK_FILE = ".work.lock"
STATE_SCHEMA = 1
MARKER_SUFFIX = ".done.json"


@contextlib.contextmanager
def outdir_lock(outdir: Path) -> Iterator[None]:
    """Hold ``OUTDIR/.work.lock`` for the run; another run on the same folder fails at once (exit 2)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no protection, as before
        yield
        return
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / LOCK_FILE
    handle = open(path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{outdir} is being written by another virnucpro-trt run; wait for it") from None
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # before unlocking: a waiting run then finds no stale file
    finally:
        handle.close()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary name unique to this process and thread, then rename into place.

    Two writers of the same file (a respawned worker racing an orphaned one) cannot corrupt it: each
    renames its own complete copy.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def marker_path(results: Path, shard: ShardSpec) -> Path:
    return results / f"{shard.stem}{MARKER_SUFFIX}"


class WorkDir:
    """The ``.work`` folder of one output directory."""

    def __init__(self, outdir: Path):
        self.root = Path(outdir) / WORK_DIR
        self.shards = self.root / "shards"
        self.results = self.root / "results"
        self.state_path = self.root / "state.json"
        self.facts_path = self.root / "facts.json"

    # -- the resume key --------------------------------------------------------------------------
    def open(self, input_sha256: str, fingerprint: str, force: bool) -> bool:
        """Decide what to do with an existing ``.work``; returns True when it is resumed.

        Raises :class:`UserError` when it holds finished shards of another input or other settings and
        ``force`` is not set.
        """
        if not self.root.exists():
            return False
        state = self._read_json(self.state_path)
        if state is None:  # died before the shards were written: nothing worth keeping
            self.wipe()
            return False
        same_input = state.get("input_sha256") == input_sha256
        same_settings = state.get("settings_fingerprint") == fingerprint
        if same_input and same_settings and state.get("schema") == STATE_SCHEMA:
            return True
        if force:
            log.warning("--force: discarding the unfinished work in %s", self.root)
            self.wipe()
            return False
        done = len(list(self.results.glob(f"*{MARKER_SUFFIX}"))) if self.results.exists() else 0
        what = "input" if not same_input else "settings"
        if done == 0:
            log.info(
                "discarding %s: it was started for another %s and no shard had finished", self.root, what
            )
            self.wipe()
            return False
        raise UserError(
            f"{self.root} holds {done} finished shard(s) of a run with a different {what}; rerun the "
            "original command to finish it, or add --force to discard it"
        )

    def write_state(self, input_sha256: str, fingerprint: str, settings: dict[str, Any]) -> None:
        data = {
            "schema": STATE_SCHEMA,
            "input_sha256": input_sha256,
            "settings_fingerprint": fingerprint,
            "settings": settings,
        }
        write_bytes_atomic(self.state_path, (json.dumps(data, indent=1) + "\n").encode())

    # -- shards ----------------------------------------------------------------------------------
    def shard_index(self) -> tuple[list[ShardSpec], dict[str, Any]] | None:
        return read_shard_index(self.shards) if self.shards.is_dir() else None

    def fresh_shards_folder(self) -> Path:
        """An empty folder to write shards into; :meth:`commit_shards` renames it to ``shards/``."""
        tmp = self.root / "shards.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(self.shards, ignore_errors=True)
        shutil.rmtree(self.results, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def commit_shards(self, tmp: Path) -> None:
        os.replace(tmp, self.shards)
        self.results.mkdir(parents=True, exist_ok=True)

    # -- results ---------------------------------------------------------------------------------
    def finished_shards(self, shards: list[ShardSpec]) -> dict[int, dict[str, Any]]:
        """Markers of the shards whose results verify; any other marker is removed (the shard is redone)."""
        self.results.mkdir(parents=True, exist_ok=True)
        for stale in self.results.glob(".*.tmp"):  # a writer killed between write and rename
            stale.unlink(missing_ok=True)
        finished: dict[int, dict[str, Any]] = {}
        for shard in shards:
            path = marker_path(self.results, shard)
            if not path.exists():
                continue
            marker = self._read_json(path)
            problem = self._marker_problem(marker, shard)
            if problem is None:
                assert marker is not None
                finished[shard.id] = marker
            else:
                log.warning("%s will be redone: %s", shard.describe(), problem)
                path.unlink(missing_ok=True)
        return finished

    def _marker_problem(self, marker: dict[str, Any] | None, shard: ShardSpec) -> str | None:
        if marker is None:
            return "its marker is unreadable"
        if (marker.get("shard"), marker.get("first_record"), marker.get("records")) != (
            shard.id,
            shard.first,
            shard.records,
        ):
            return "its marker names other records"
        for role, entry in (marker.get("files") or {}).items():
            path = self.results / entry["name"]
            if not path.is_file() or path.stat().st_size != entry["bytes"]:
                return f"its {role} file is missing or truncated"
            if sha256_file(path) != entry["sha256"]:
                return f"its {role} file does not match its recorded SHA-256"
        return None

    # -- facts -----------------------------------------------------------------------------------
    def save_facts(self, facts: dict[str, Any]) -> None:
        write_bytes_atomic(self.facts_path, (json.dumps(facts, indent=1, default=str) + "\n").encode())

    def read_facts(self) -> dict[str, Any] | None:
        return self._read_json(self.facts_path)

    # -- housekeeping ----------------------------------------------------------------------------
    def wipe(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None
