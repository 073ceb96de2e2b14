"""Checkpoint files as an attacker writes them: nothing runs, nothing inflates, every failure is bad input.

Each test builds the attack for real and, where it can, first shows that the attack works against
``torch`` itself (so the test could fail), then that our loader refuses it with a CheckpointError (exit 2
through the CLI) and that its side effect never happened.
"""

from __future__ import annotations

import itertools
import re
import resource
import zipfile
from pathlib import Path

import pytest
import torch

from tests.cli.helpers import run_cli
from tests.models import archive_forge as forge
from tests.models.torchscript_payload import write_payload_archive
from virnucpro_trt.errors import CheckpointError, UnsafePickleError
from virnucpro_trt.models.checkpoint_io import safe_torch_load
from virnucpro_trt.models.classifier import load_classifier_weights
from virnucpro_trt.models.pickle_guard import MAX_CLASSIFIER_BYTES, module_stand_in
from virnucpro_trt.models.torch_archive import load_torch_file


def test_the_torchscript_payload_is_real(tmp_path: Path) -> None:
    """The control: torch's own loader does run the archive's code (so the refusals below mean something)."""
    marker = tmp_path / "control-marker"
    archive = write_payload_archive(tmp_path / "control.pth", marker)
    with pytest.warns(UserWarning, match="TorchScript"):
        torch.load(archive, weights_only=False)
    assert marker.read_bytes() == b"A" * 16


def test_torchscript_archive_is_refused_by_every_loader_before_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    archive = write_payload_archive(tmp_path / "500_model.pth", marker)
    for load in (load_classifier_weights, safe_torch_load, load_torch_file):
        with pytest.raises(CheckpointError, match="TorchScript archive"):
            load(archive)
    assert marker.read_bytes() == b"x" * 16


def test_torchscript_classifier_through_predict_and_convert_is_exit_2_and_runs_nothing(
    tiny_set, reads_fasta, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    archive = write_payload_archive(tmp_path / "500_model.pth", marker)
    out = tmp_path / "out"
    predict = run_cli(
        "predict", str(reads_fasta), "-o", str(out), "--dnabert", str(tiny_set.dnabert),
        "--esm", str(tiny_set.esm_hf), "--classifier", str(archive), "--device", "cpu",
    )  # fmt: skip
    convert = run_cli("convert-classifier", str(archive), str(tmp_path / "c.safetensors"))
    for result in (predict, convert):
        lines = result.stderr.strip().splitlines()
        assert result.code == 2 and len(lines) == 1 and "TorchScript archive" in lines[0], result.stderr
    assert marker.read_bytes() == b"x" * 16
    assert not out.exists() and not (tmp_path / "c.safetensors").exists()


def test_tar_and_legacy_formats_are_refused_by_name(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy"):
        load_classifier_weights(legacy)
    tar = tmp_path / "old.tar"
    tar.write_bytes(b"\0" * 257 + b"ustar" + b"\0" * 250)
    with pytest.raises(CheckpointError, match="tar-format"):
        load_torch_file(tar)


def test_a_truncated_archive_and_an_unreadable_file_say_so(tmp_path: Path) -> None:
    """A half-downloaded checkpoint is named as damaged, not as "not a PyTorch checkpoint"; a file that
    cannot be read at all (a link to /proc/self/mem: EIO) is a one-line CheckpointError, not an
    unexpected OSError (exit 1)."""
    whole = tmp_path / "whole.pth"
    torch.save({"w": torch.zeros(4096)}, whole)
    half = tmp_path / "half.pth"
    half.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"half\.pth: a truncated or damaged zip archive"):
        load_torch_file(half)
    pointer = tmp_path / "500_model.pth"  # a clone without `git lfs pull`
    lfs = "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 6815744\n"
    pointer.write_text(lfs)
    with pytest.raises(CheckpointError, match=r"500_model\.pth: a Git LFS pointer, not the weights"):
        load_torch_file(pointer)
    unreadable = tmp_path / "mem.pth"
    unreadable.symlink_to("/proc/self/mem")
    with pytest.raises(CheckpointError, match=r"mem\.pth: cannot be read \(Input/output error\)"):
        load_classifier_weights(unreadable)
    result = run_cli("convert-classifier", str(unreadable), str(tmp_path / "out.safetensors"))
    assert result.code == 2 and result.stderr.count("\n") == 1 and "cannot be read" in result.stderr


def test_a_compressed_record_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    """The zip bomb: 256 MiB of zeros deflate to ~256 KB; nothing may inflate them to see what they are."""
    size = 256 << 20
    body = forge.dict_of(w=forge.tensor("0", size // 4, (size // 4,), (1,)))
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb/data.pkl", forge.pickle_bytes(body), compress_type=zipfile.ZIP_STORED)
        with zf.open("bomb/data/0", "w", force_zip64=True) as record:
            block = bytes(1 << 24)
            for _ in range(size // len(block)):
                record.write(block)
    assert path.stat().st_size < 2 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="compressed"):
        load_classifier_weights(path)
    # ru_maxrss (KiB) is the peak so far: inflating the record would have raised it by 256 MiB
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10


def test_declared_sizes_are_checked_against_the_record_and_the_limit(tmp_path: Path) -> None:
    small = forge.write_archive(
        tmp_path / "liar.pth",
        forge.pickle_bytes(forge.dict_of(w=forge.tensor("0", 1_000_000, (1_000_000,), (1,)))),
        {"0": bytes(16)},
    )
    with pytest.raises(CheckpointError, match="declares 4000000 bytes but its record holds 16"):
        load_classifier_weights(small)
    numel = MAX_CLASSIFIER_BYTES // 4 + 1024
    big = forge.write_archive(
        tmp_path / "big.pth",
        forge.pickle_bytes(forge.dict_of(w=forge.tensor("0", numel, (numel,), (1,)))),
        {"0": bytes(numel * 4)},
    )
    with pytest.raises(CheckpointError, match="too large"):
        load_classifier_weights(big)


def test_a_tensor_that_overruns_its_storage_is_refused(tmp_path: Path) -> None:
    path = forge.write_archive(
        tmp_path / "overrun.pth",
        forge.pickle_bytes(forge.dict_of(w=forge.tensor("0", 4, (3, 4), (4, 1)))),
        {"0": bytes(16)},
    )
    with pytest.raises(CheckpointError, match="overruns its storage"):
        safe_torch_load(path)


def test_a_view_showing_more_elements_than_its_storage_is_refused(tmp_path: Path) -> None:
    """Zero strides: one stored float seen as 10**12 elements, which any later copy would allocate. Every
    loader refuses it while unpickling, naming the file."""
    body = forge.dict_of(w=forge.tensor("0", 1, (10**6, 10**6), (0, 0)))
    path = forge.write_archive(tmp_path / "stride0.pth", forge.pickle_bytes(body), {"0": bytes(4)})
    needle = rf"^{re.escape(str(path))}: a tensor of size \(1000000, 1000000\) shows more elements than its"
    for load in (load_classifier_weights, safe_torch_load, load_torch_file):
        with pytest.raises(CheckpointError, match=needle):
            load(path)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        # a stand-in module class handed a state it cannot hold
        (forge.call(forge.glob("__main__", "M")) + forge.integer(7) + forge.BUILD, "unexpected state"),
        # an allowed callable called the wrong way
        (forge.call(forge.glob("builtins", "dict"), forge.integer(1), forge.integer(2)), "malformed"),
        (forge.call(forge.glob("builtins", "int"), forge.text("not a number")), "malformed"),
        # a storage reference that is not one
        (forge.tup(forge.text("storage"), forge.text("x")) + forge.BINPERSID, "persistent id"),
        # a rebuild with nonsense arguments
        (forge.call(forge.glob("torch._utils", "_rebuild_tensor_v2"), forge.integer(1)), "malformed"),
    ],
)
def test_tricks_that_fail_inside_unpickling_are_bad_input_exit_2(tmp_path: Path, body: bytes, needle: str):
    path = forge.write_archive(tmp_path / "trick.pth", forge.pickle_bytes(body))
    with pytest.raises(CheckpointError, match=needle):
        load_classifier_weights(path)
    result = run_cli("convert-classifier", str(path), str(tmp_path / "out.safetensors"))
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and "unexpected failure" not in lines[0], result.stderr


def test_code_running_globals_are_refused_before_they_are_called(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    body = forge.call(forge.glob("os", "system"), forge.text(f"touch {marker}"))
    path = forge.write_archive(tmp_path / "system.pth", forge.pickle_bytes(body))
    with pytest.raises(UnsafePickleError, match=r"'os\.system'"):
        load_classifier_weights(path)
    hooks = forge.call(
        forge.glob("torch._utils", "_rebuild_tensor_v2"),
        forge.storage_ref("0", 1), forge.integer(0), forge.tup(forge.integer(1)), forge.tup(forge.integer(1)),
        forge.NEWFALSE, forge.dict_of(h=forge.glob("os", "system")),
    )  # fmt: skip
    path = forge.write_archive(tmp_path / "hooks.pth", forge.pickle_bytes(hooks), {"0": bytes(4)})
    with pytest.raises(UnsafePickleError):
        load_classifier_weights(path)
    assert not marker.exists()


def _build_onto(module: str, name: str, state: bytes) -> bytes:
    """``{"x": <global module.name>}`` with ``state`` BUILT onto the global on its way in."""
    value = forge.glob(module, name) + state + forge.BUILD
    return forge.EMPTY_DICT + forge.MARK + forge.text("x") + value + forge.SETITEMS


def test_no_pickle_can_change_an_allow_listed_global_for_the_files_read_after_it(tmp_path: Path) -> None:
    """Every load gets the same allow-listed objects; BUILD onto one (a dict state, or slot state that
    becomes setattr) must be refused, or one file could change how the next is read: HalfStorage
    re-typed to bf16 made a clean fp16 checkpoint decode as bf16 in the same process."""
    import types

    from virnucpro_trt.models.torch_archive import TENSOR_GLOBALS

    half = torch.randn(6).half()
    torch.save({"h": half}, tmp_path / "half.pt")
    bf16 = forge.glob("torch", "bfloat16")
    dtype_state = forge.dict_of(dtype=bf16, __defaults__=forge.tup(forge.integer(1)))
    states = {"dict": dtype_state, "slots": forge.tup(b"N", dtype_state)}
    namespace = {("argparse", "Namespace"): types.SimpleNamespace}
    targets = [*TENSOR_GLOBALS, ("__main__", "Net"), *namespace]
    for (module, name), (form, state) in itertools.product(targets, states.items()):
        body = forge.pickle_bytes(_build_onto(module, name, state))
        path = forge.write_archive(tmp_path / "build.pth", body)
        with pytest.raises(CheckpointError):
            load_torch_file(path, extra_globals=namespace, stand_ins=module_stand_in)
        with pytest.raises(CheckpointError):
            load_classifier_weights(path)
        loaded = safe_torch_load(tmp_path / "half.pt")["h"]
        assert loaded.dtype == torch.float16 and torch.equal(loaded, half), (module, name, form)
    assert {g.dtype for key, g in TENSOR_GLOBALS.items() if key[1] == "HalfStorage"} == {torch.float16}
    assert module_stand_in("__main__", "Net").pickled_class == "__main__.Net"


def test_a_real_checkpoint_still_loads_memory_mapped_and_equal(tmp_path: Path) -> None:
    state = {"a": torch.randn(5, 3), "b": torch.arange(7), "h": torch.randn(4).half(), "e": torch.zeros(0)}
    torch.save(state, tmp_path / "ok.pt")
    loaded = safe_torch_load(tmp_path / "ok.pt")
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value) and loaded[key].dtype == value.dtype
