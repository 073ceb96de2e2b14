"""The identity of a checkpoint: a content hash, with the file stamps that let an unchanged file skip it.

Results depend on the weights, not on the path they were read from: a classifier replaced at the same
path between a kill and a rerun must not be mixed into one result. So resume keys, engine manifests and
run.json record the SHA-256 of the weights. Hashing is not free (~12 GB for the full-size encoders), so
each recorded hash keeps the stamps of its files (:mod:`virnucpro_trt.files.stamps`), and a file that
still carries its stamp reuses the hash.

The hash of a classifier is the SHA-256 of its one file; an encoder's combines its weight files and the
folder's configuring files (config.json, tokenizer.json, vocab.txt: they change results as much as the
weights) in name order (:func:`~virnucpro_trt.files.digests.sha256_of_files`), so a copied Hugging Face
folder keeps it. ``weights_sha256``, as run.json and the manifests call it, is this hash.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virnucpro_trt.errors import CheckpointError
from virnucpro_trt.files.digests import sha256_file, sha256_of_files
from virnucpro_trt.files.stamps import Stamp, stamp_files, unchanged
from virnucpro_trt.models.checkpoint_io import checkpoint_files


@dataclass(frozen=True)
class WeightsIdentity:
    """A checkpoint's content hash and the stamps of its files when they were hashed."""

    sha256: str
    stamps: dict[str, Stamp] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "stamps": self.stamps}

    @classmethod
    def from_json(cls, data: Any) -> WeightsIdentity | None:
        """None unless ``data`` is exactly what :meth:`to_json` writes (a hostile state file is ignored)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("sha256"), str):
            return None
        stamps = data.get("stamps")
        if not isinstance(stamps, Mapping) or not all(isinstance(v, list) for v in stamps.values()):
            return None
        return cls(data["sha256"], {str(k): list(v) for k, v in stamps.items()})


def weight_files(kind: str, path: Path) -> list[Path]:
    """The files whose contents make up the checkpoint ``path`` of ``kind``."""
    return [path] if kind == "classifier" else checkpoint_files(path)


def identify_checkpoint(kind: str, path: Path, known: WeightsIdentity | None = None) -> WeightsIdentity:
    """The identity of ``path``; ``known`` is reused when its files still carry its stamps."""
    files = weight_files(kind, path)
    if known is not None and unchanged(known.stamps, files):
        return known
    try:
        stamps = stamp_files(files)  # before hashing: a change while hashing won't match next time
        sha = sha256_file(files[0]) if kind == "classifier" else sha256_of_files(files)
    except OSError as exc:  # EIO, a file gone since it was listed: bad input, named in one line
        raise CheckpointError(f"{exc.filename or path}: cannot read ({exc.strerror or exc})") from exc
    return WeightsIdentity(sha, stamps)


def confirm_checkpoint(kind: str, path: Path, identity: WeightsIdentity | None) -> WeightsIdentity:
    """:func:`identify_checkpoint`, refusing a file that no longer holds the weights ``identity`` names."""
    found = identify_checkpoint(kind, path, identity)
    if identity is not None and found.sha256 != identity.sha256:
        raise CheckpointError(f"{path} changed since this run hashed it (other weights); rerun the command")
    return found


def confirm_still(found: WeightsIdentity, path: Path) -> None:
    """After loading: the files still carry the stamps they had when hashed, so the hash names them."""
    if not unchanged(found.stamps, list(found.stamps)):
        raise CheckpointError(f"{path} changed while it was being loaded; rerun the command")
