"""Turning what the user typed for ``--dnabert/--esm/--classifier`` into local files, never the network.

A model may be given as a folder or file, as a Hugging Face repo id (``zhihan1996/DNABERT-S``,
``facebook/esm2_t36_3B_UR50D``) looked up in the local Hugging Face cache only, or as a fair-esm name
(``esm2_t36_3B_UR50D``) looked up in the torch-hub checkpoint cache. When nothing is found the error
lists every place that was looked at and says how to get the weights — downloading is something the
user asks for explicitly (``virnucpro-trt download``), never a side effect.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from virnucpro_trt.errors import ModelNotFoundError, UserError

DNABERT_S_REPO = "zhihan1996/DNABERT-S"
ESM2_3B_REPO = "facebook/esm2_t36_3B_UR50D"
UPSTREAM_CLASSIFIER_URL = "https://github.com/Li-Jing-1997/VirNucPro (files 300_model.pth, 500_model.pth)"

_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FAIR_ESM_NAME = re.compile(r"^esm(1b|1v|2|_if1|fold)?[\w.]*_UR\w+$")


@dataclass
class Resolution:
    """Where a model spec led (``path``), or every place that was tried (``looked``)."""

    spec: str
    path: Path | None = None
    looked: list[str] = field(default_factory=list)


def _hf_cache_lookup(repo_id: str, res: Resolution) -> Path | None:
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.file_download import repo_folder_name
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        res.looked.append("Hugging Face cache (huggingface_hub not installed)")
        return None
    res.looked.append(f"Hugging Face cache {constants.HF_HUB_CACHE} for '{repo_id}'")
    try:
        found = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # any miss: not cached, partial cache, bad id
        return None
    # A ref file is text the cache's owner wrote: ``refs/main`` holding ``../../../elsewhere`` led the
    # lookup out of the cache, or into another repository's snapshots. A snapshot of this repository is
    # a folder in its own ``snapshots/``.
    repo = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots"
    if found.resolve().parent != repo.resolve():
        raise ModelNotFoundError(
            f"'{repo_id}': the Hugging Face cache's ref leads outside its snapshots ({found}); refused"
        )
    return found


def _torch_hub_dir() -> Path:
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(xdg) / "torch" / "hub"


def _fair_esm_lookup(name: str, res: Resolution) -> Path | None:
    candidate = _torch_hub_dir() / "checkpoints" / f"{name}.pt"
    res.looked.append(str(candidate))
    return candidate if candidate.is_file() else None


def _resolve(spec: str, kind: str, hf_default_org: str | None) -> Resolution:
    res = Resolution(spec)
    path = Path(spec).expanduser()
    res.looked.append(str(path.resolve()))
    if path.exists():
        res.path = path
        return res
    if kind == "esm" and _FAIR_ESM_NAME.match(spec):
        found = _fair_esm_lookup(spec, res)
        if found is None and hf_default_org:
            found = _hf_cache_lookup(f"{hf_default_org}/{spec}", res)
        res.path = found
        return res
    if _HF_ID.match(spec):
        res.path = _hf_cache_lookup(spec, res)
    return res


def _how_to_get(kind: str, spec: str) -> str:
    """How to get the model asked for: the repository or fair-esm name given, else upstream's model."""
    if kind == "classifier":
        return f"the upstream classifiers come from {UPSTREAM_CLASSIFIER_URL}"
    fair_esm = kind == "esm" and _FAIR_ESM_NAME.match(spec) is not None
    default = DNABERT_S_REPO if kind == "dnabert" else ESM2_3B_REPO
    repo = spec if _HF_ID.match(spec) else f"facebook/{spec}" if fair_esm else default
    hint = f"get it with `virnucpro-trt download {repo}` (or `hf download {repo}`)"
    if kind == "esm":
        name = spec if fair_esm else repo.rsplit("/", 1)[-1]
        hint += f", or place fair-esm's {name}.pt in {_torch_hub_dir() / 'checkpoints'}"
    return hint


def resolve_model(spec: str | os.PathLike[str], kind: str) -> Path:
    """Return a local path for ``spec`` (``kind`` in dnabert/esm/classifier) or raise with where we looked."""
    spec = str(spec)
    res = _resolve(spec, kind, "facebook" if kind == "esm" else None)
    if res.path is None:
        looked = "; ".join(res.looked)
        raise ModelNotFoundError(
            f"{kind} model '{spec}' not found (looked in: {looked}); {_how_to_get(kind, spec)}"
        )
    return res.path


# What a download fetches besides the weights: configs, shard indexes, tokenizer and vocabulary files,
# the model card and a model's own code files (kept for the user's other tools; never run here).
_MODEL_FILES = ("*.json", "*.txt", "*.model", "*.md", "*.py")
# The weight formats, in the loaders' order of preference (checkpoint_io.hf_weight_files).
_WEIGHT_FORMATS = ("*.safetensors", "*.bin")


def _fetch_one_weight_format(repo_id: str) -> Path:
    """The repo's files with only the first weight format it has: model repos often hold the same weights
    two or three times (safetensors, PyTorch .bin, TensorFlow .h5; ~11 GB each for ESM-2 3B), and the
    loaders read one. Each try downloads only what matches; a repo with neither format comes whole."""
    from huggingface_hub import snapshot_download

    for weights in _WEIGHT_FORMATS:
        folder = Path(snapshot_download(repo_id, allow_patterns=[*_MODEL_FILES, weights]))
        if next(folder.glob(weights), None) is not None:
            return folder
    return Path(snapshot_download(repo_id))


def download_model(repo_id: str) -> Path:
    """Explicit, user-requested download of a Hugging Face repo into the local cache, in one weight
    format (:func:`_fetch_one_weight_format`).

    The hub's failures become one line naming the cause and the way out: no network (or
    ``HF_HUB_OFFLINE`` set), an unknown or gated repository, a full disk.
    """
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return _fetch_one_weight_format(repo_id)
    except HFValidationError:
        raise UserError(
            f"{repo_id!r} is not a Hugging Face repository id: expected OWNER/NAME, e.g. zhihan1996/DNABERT-S"
        ) from None
    except GatedRepoError:
        raise ModelNotFoundError(
            f"{repo_id} is gated on the Hugging Face hub: accept its terms there and log in "
            "(`huggingface-cli login`), then rerun"
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"{repo_id}: no such repository on the Hugging Face hub") from None
    except LocalEntryNotFoundError:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached from this machine"
        raise ModelNotFoundError(
            f"cannot download {repo_id}: {why}; download it where there is network (`virnucpro-trt "
            "download` there) and copy the folder here, then pass its path"
        ) from None
    except HfHubHTTPError as exc:
        raise ModelNotFoundError(f"cannot download {repo_id}: {str(exc).splitlines()[0]}") from None
