"""Random-weight classifier checkpoints in upstream's exact file format (for the demo, tests, benchmarks).

Upstream's ``300_model.pth`` / ``500_model.pth`` are ``torch.save(model)`` of a class defined in the
training script's ``__main__``. To produce the same pickle stream we define an ``MLPClassifier`` with the
same attributes, make it look as if it lived in ``__main__`` for the duration of the save, and save the
whole module. Loading such a file back never imports this class: see
:mod:`virnucpro_trt.models.pickle_guard`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


class MLPClassifier(nn.Module):
    """Same attributes, initialisation and forward as upstream's training-script class."""

    def __init__(self, input_dim: int, hidden_dim: int, num_class: int):
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, num_class)
        self.dropout = nn.Dropout(0.5)
        nn.init.xavier_uniform_(self.hidden_layer.weight)
        nn.init.xavier_uniform_(self.output_layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hidden_layer(x)
        x = self.bn1(x)
        x = F.relu(x)
        x = self.dropout(x)
        return self.output_layer(x)


def random_upstream_classifier(input_dim: int, hidden_dim: int = 512, seed: int = 0) -> MLPClassifier:
    """An eval-mode classifier with random weights and non-trivial BatchNorm running statistics."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MLPClassifier(input_dim, hidden_dim, 2)
    with torch.no_grad():
        model.hidden_layer.bias.copy_(torch.randn(hidden_dim, generator=gen) * 0.01)
        model.bn1.weight.copy_(1.0 + 0.1 * torch.randn(hidden_dim, generator=gen))
        model.bn1.bias.copy_(0.1 * torch.randn(hidden_dim, generator=gen))
        model.bn1.running_mean.copy_(0.05 * torch.randn(hidden_dim, generator=gen))
        model.bn1.running_var.copy_(0.5 + torch.rand(hidden_dim, generator=gen))
        model.bn1.num_batches_tracked.fill_(1000)
        model.output_layer.bias.copy_(torch.randn(2, generator=gen) * 0.01)
    return model.eval()


def save_as_upstream_pickle(model: nn.Module, path: str | Path) -> None:
    """``torch.save(model)`` recording the class as ``__main__.MLPClassifier``, as upstream's files do."""
    main = sys.modules["__main__"]
    cls = type(model)
    saved = (cls.__module__, cls.__qualname__)
    had_attr = hasattr(main, "MLPClassifier")
    previous = getattr(main, "MLPClassifier", None)
    cls.__module__, cls.__qualname__ = "__main__", "MLPClassifier"
    main.MLPClassifier = cls  # type: ignore[attr-defined]
    try:
        torch.save(model, Path(path))
    finally:
        cls.__module__, cls.__qualname__ = saved
        if had_attr:
            main.MLPClassifier = previous  # type: ignore[attr-defined]
        else:
            delattr(main, "MLPClassifier")


def write_upstream_classifier(path: str | Path, input_dim: int, hidden_dim: int = 512, seed: int = 0) -> Path:
    """Write a random classifier exactly as upstream's ``<chunk>_model.pth`` files are written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_as_upstream_pickle(random_upstream_classifier(input_dim, hidden_dim, seed), path)
    return path
