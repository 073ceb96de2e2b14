"""An engine set's tokenizers against its manifest: the ids they emit fit the recorded vocabularies.

Read once per run in the main process (``engine_set.check_engine_set``), and by ``build`` before it takes
a folder's set as finished (``finished_build``): a set ``predict`` would refuse is never "up to date".
"""

from __future__ import annotations

from pathlib import Path

from virnucpro_trt.engines.manifest import EngineManifest
from virnucpro_trt.errors import CheckpointError, EngineMismatchError
from virnucpro_trt.models.kinds import ENCODER_NAMES
from virnucpro_trt.models.tokenization import DnaTokenizer, ProteinTokenizer, check_token_ids_fit


def check_vocabularies(folder: Path, manifest: EngineManifest) -> None:
    """Each encoder's tokenizer (its file verified) emits no id past the vocabulary the manifest records
    (since build recipe 8; the C++ host holds ids to the package's own record), and the manifest's pad
    id is the tokenizer's, which the build wrote (a manifest without a vocabulary size, from before
    recipe 8, is bounded by this alone). A manifest that says otherwise was edited, and is refused once,
    in the main process, before any worker loads the engines (the workers' own check of the set skips
    it: their tokenizers are the files checked here)."""
    for kind in ENCODER_NAMES:
        entry = manifest.models[kind]
        if entry.tokenizer is None:
            continue
        path = folder / entry.tokenizer
        if kind == "dnabert-s":
            tokenizer: DnaTokenizer | ProteinTokenizer = DnaTokenizer.from_file(path)
        else:
            tokenizer = ProteinTokenizer.from_vocab_file(path)
        if entry.pad_id != tokenizer.pad_id:
            raise EngineMismatchError(
                f"{folder}: the manifest's pad_id {entry.pad_id} for {kind} is not its tokenizer's "
                f"({tokenizer.pad_id}); rebuild the engines"
            )
        if not entry.vocab_size:
            continue
        try:
            check_token_ids_fit(tokenizer, entry.vocab_size, f"{folder} ({kind})")
        except CheckpointError as exc:
            raise EngineMismatchError(str(exc)) from None
