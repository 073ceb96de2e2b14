"""An AOTInductor engine's weights file is data and is checked before its package takes it
(engines/package_weights.py): the names, dtypes and shapes the package recorded at build, nothing more or
less, from a file the manifest lists. load_constants itself checks neither shape nor dtype."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from virnucpro_trt.engines.inductor_backend import INDUCTOR_BACKEND
from virnucpro_trt.engines.inductor_runner import load_package
from virnucpro_trt.engines.package_weights import WEIGHTS_KEY, recorded_table, weights_file
from virnucpro_trt.engines.spec import BuildOptions, BuildRequest, ShapeRange
from virnucpro_trt.errors import BuildError, EngineMismatchError
from virnucpro_trt.models.random_checkpoints import random_esm2

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    model = random_esm2(seed=41)
    out = tmp_path_factory.mktemp("package_weights") / "esm2.cpu.fp32.pt2"
    example = (torch.randint(4, 24, (3, 11)), torch.ones(3, 11, dtype=torch.int64))
    request = BuildRequest(model, "esm2", example, ShapeRange(1, 4, 8, 2, 20, 45), "fp32", CPU, out)
    return model, INDUCTOR_BACKEND.build(request).path


def _copy(built: tuple[torch.nn.Module, Path], tmp_path: Path) -> Path:
    package = Path(shutil.copy(built[1], tmp_path / built[1].name))
    shutil.copy(weights_file(built[1]), weights_file(package))
    return package


def _resaved(change: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        tensors = load_file(path)
        change(tensors)
        save_file(tensors, path)

    return edit


def _first_weight(tensors: dict[str, torch.Tensor]) -> str:
    return sorted(n for n in tensors if n.endswith(".weight") and tensors[n].dim() == 2)[0]


def _smaller(tensors: dict[str, torch.Tensor]) -> None:
    tensors[_first_weight(tensors)] = torch.zeros(2, 2)


def _other_dtype(tensors: dict[str, torch.Tensor]) -> None:
    name = _first_weight(tensors)
    tensors[name] = tensors[name].double()


def _transposed(tensors: dict[str, torch.Tensor]) -> None:  # same elements, another shape
    name = next(n for n, t in sorted(tensors.items()) if t.dim() == 2 and t.shape[0] != t.shape[1])
    tensors[name] = tensors[name].t().contiguous()


def _one_more(tensors: dict[str, torch.Tensor]) -> None:
    tensors["planted.weight"] = torch.zeros(3)


def _one_fewer(tensors: dict[str, torch.Tensor]) -> None:
    del tensors[_first_weight(tensors)]


def _not_safetensors(path: Path) -> None:
    path.write_bytes(b"\xff" * 64)


@pytest.mark.parametrize(
    "edit, needle",
    [
        (_resaved(_smaller), r"is F32 \[2, 2\], the package expects F32 \["),
        (_resaved(_other_dtype), r"is F64 \[\d+, \d+\], the package expects F32"),
        (_resaved(_transposed), r"the package expects F32 \["),
        (_resaved(_one_more), r"it holds planted\.weight, which the package does not know"),
        (_resaved(_one_fewer), "it lacks "),
        (_not_safetensors, "is no readable safetensors file"),
        (lambda path: path.unlink(), r"esm2\.cpu\.fp32\.weights\.safetensors is missing"),
    ],
    ids=["smaller", "other-dtype", "transposed", "one-more", "one-fewer", "not-safetensors", "missing"],
)
def test_a_weights_file_unlike_the_packages_table_is_refused_in_one_line(
    built, tmp_path: Path, edit: Callable[[Path], None], needle: str
) -> None:
    package = _copy(built, tmp_path)
    edit(weights_file(package))
    with pytest.raises(EngineMismatchError, match=needle) as info:
        load_package(package, CPU)
    assert "\n" not in str(info.value)


def test_the_weights_file_must_be_one_the_manifest_lists(built, tmp_path: Path) -> None:
    package = _copy(built, tmp_path)
    with pytest.raises(EngineMismatchError, match=r"the manifest does not list esm2\.cpu\.fp32\.weights"):
        load_package(package, CPU, listed=frozenset({package.name}))
    loaded = load_package(package, CPU, listed=frozenset({package.name, weights_file(package).name}))
    assert set(loaded.weights) <= set(recorded_table(loaded.metadata, package) or {})


def test_the_package_runs_on_the_weights_it_was_given(built) -> None:
    """The weights are used in place: the engine's output is the model's, and other weights of the same
    table give other outputs (no copy of the build's weights hides in the package)."""
    model, path = built
    loaded = load_package(path, CPU)
    ids = torch.randint(4, 24, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        first = loaded.model(ids, mask).clone()
        np.testing.assert_allclose(first.numpy(), model(ids, mask).numpy(), atol=1e-5, rtol=0)
        for tensor in loaded.weights.values():
            if tensor.is_floating_point() and tensor.dim() == 2:
                tensor.mul_(0.5)
        assert not torch.allclose(loaded.model(ids, mask), first, atol=1e-4)


@pytest.mark.parametrize("text", ["[1, 2]", "{", '{"a": ["F32", [-1]]}', '{"a": ["F32", [1.5]]}', '{"a": 3}'])
def test_an_unreadable_table_is_refused(text: str) -> None:
    with pytest.raises(EngineMismatchError, match="records an unreadable weights table"):
        recorded_table({WEIGHTS_KEY: text}, Path("esm2.cpu.fp32.pt2"))
    assert recorded_table({}, Path("old.pt2")) is None  # a package that holds its weights itself


def test_a_build_with_the_weights_inside_writes_no_weights_file(tmp_path: Path) -> None:
    """``extra["inductor_configs"]`` can put the weights back into the library (the layout before recipe
    9, which loaders still take): then no table is recorded and no file is written."""
    model = random_esm2(seed=42)
    out = tmp_path / "esm2.cpu.fp32.pt2"
    example = (torch.randint(4, 24, (3, 11)), torch.ones(3, 11, dtype=torch.int64))
    inside = BuildOptions(extra={"inductor_configs": {"aot_inductor.package_constants_in_so": True}})
    request = BuildRequest(model, "esm2", example, ShapeRange(1, 4, 8, 2, 20, 45), "fp32", CPU, out, inside)
    artifact = INDUCTOR_BACKEND.build(request)
    assert artifact.files == [out] and not weights_file(out).exists()
    loaded = load_package(out, CPU)
    assert WEIGHTS_KEY not in loaded.metadata and loaded.weights == {}
    ids = torch.randint(4, 24, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        got = loaded.model(ids, torch.ones_like(ids))
    np.testing.assert_allclose(got.numpy(), model(ids, torch.ones_like(ids)).numpy(), atol=1e-5, rtol=0)


def test_tied_and_sliced_weights_are_written_each_with_its_own_values(tmp_path: Path) -> None:
    """safetensors refuses tensors that share memory: a tied weight or a slice of another is copied
    (and only those: a CPU build holds no second copy of the model while it writes)."""
    from virnucpro_trt.engines.package_weights import _one_storage_each, write_weights

    base = torch.randn(4, 6)
    tensors = {"a": base, "tied": base, "slice": base[1:3], "other": torch.randn(3)}
    owned = _one_storage_each(tensors)
    assert owned["a"].data_ptr() == base.data_ptr()  # the first of a storage is written as it is
    assert owned["tied"].data_ptr() != base.data_ptr() and owned["slice"].data_ptr() != base.data_ptr()
    path = tmp_path / "w.weights.safetensors"
    table = write_weights(tensors, path)
    back = load_file(path)
    assert set(back) == set(tensors) and '"slice":["F32",[2,6]]' in table
    for name, tensor in tensors.items():
        torch.testing.assert_close(back[name], tensor, rtol=0, atol=0)


def test_a_tensor_made_in_forward_is_refused_before_the_compile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AOTInductor traces a tensor made in forward again under a name of its own (``lifted_tensor_0``
    became ``_tensor_constant0``), which the weights file cannot hold: the build refuses it in one line
    before compiling. DNABERT-S's ALiBi slopes were one (12 heads: more than Inductor inlines), until
    the build held them in a buffer; here that step is undone."""
    from virnucpro_trt.models.dnabert import DnabertConfig, DnabertEncoder
    from virnucpro_trt.models.random_checkpoints import random_dnabert

    monkeypatch.setattr(DnabertEncoder, "freeze_slopes", lambda self: None)
    config = DnabertConfig(hidden_size=96, num_hidden_layers=1, num_attention_heads=12, intermediate_size=128)
    out = tmp_path / "dnabert-s.cpu.fp32.pt2"
    example = (torch.randint(4, 24, (3, 11)), torch.ones(3, 11, dtype=torch.int64))
    shapes = ShapeRange(1, 4, 8, 2, 20, 45)
    request = BuildRequest(random_dnabert(config), "dnabert-s", example, shapes, "fp32", CPU, out)
    made = r"^the exported graph makes a tensor in forward \(lifted_tensor_0\), which a weights file beside"
    with pytest.raises(BuildError, match=made):
        INDUCTOR_BACKEND.build(request)
    assert list(tmp_path.iterdir()) == []
