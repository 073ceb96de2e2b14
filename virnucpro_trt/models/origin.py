"""Where a loaded encoder came from: its checkpoint or engine file, its layout and the weights it holds.

What crosses a package line is a typed, frozen dataclass (DEVELOPERS.md, "Imports point down; seams are
typed"). :class:`EncoderOrigin` is made by the checkpoint loader (:func:`~virnucpro_trt.models.checkpoints.
load_encoder`) and the engine loader (``engines/engine_set.py``), and read by ``runtime`` (run.json's
encoder facts), ``engines`` (the manifest's source hash and stamps), ``pipeline`` (``embed``'s attributes)
and ``bench`` (the build's parity): a misspelt or missing key fails where it is written, not as a silent
``None`` in a result file. It lives here, in the lowest layer that makes one, so every reader may import it.
"""

from __future__ import annotations

from dataclasses import dataclass

from virnucpro_trt.models.identity import WeightsIdentity
from virnucpro_trt.models.parity_result import ParityResult

__all__ = ["EncoderOrigin"]


@dataclass(frozen=True, kw_only=True)
class EncoderOrigin:
    """The provenance of one loaded encoder: a checkpoint (eager) or a file of an engine directory.

    ``path``, ``format``, ``layout``, ``weights_sha256`` and ``spec`` are what run.json records
    (:class:`~virnucpro_trt.runtime.worker_facts.EncoderFacts`); the rest is known to one way of loading.
    Frozen: an opener adds what it knows with :func:`dataclasses.replace`, so a copy handed out twice
    (``bench``'s masters) is never changed under another holder.
    """

    path: str  # the checkpoint folder or file; for an engine, its artifact
    format: str  # "huggingface", "fair-esm" or "<backend> engine"
    layout: str  # the checkpoint's key layout (e.g. "EsmForMaskedLM"); for an engine, its artifact's name
    weights_sha256: str  # of the checkpoint (an engine's: the one it was built from; models/identity.py)
    spec: str | None = None  # what the user named (checkpoint or engine directory); None until opened
    weights_identity: WeightsIdentity | None = None  # the hash with its file stamps; checkpoints only
    source: str | None = None  # engines only: the checkpoint the engine was built from (informational)
    # Engines only: the build's parity gate for this model, as its manifest records it (ModelEntry.parity)
    parity: ParityResult | None = None
