"""Pickles whose objects reference each other so often that walking them would never end (helper-42).

``t(i+1) = (t(i), t(i))`` for 60 levels is a few hundred bytes; the unpickler hashes it as a dict key in
C code, 2^60 steps, deaf to SIGTERM. The loader walks the opcodes first and refuses it in one line.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.helpers import run_cli
from tests.models import archive_forge as forge
from virnucpro_trt.errors import CheckpointError
from virnucpro_trt.models.pickle_expansion import (
    MAX_DEPTH,
    MAX_OBJECTS,
    PickleTooExpansive,
    check_pickle_expansion,
)
from virnucpro_trt.models.torch_archive import load_torch_file

BINPUT, BINGET, TUPLE2, NONE, POP = b"q", b"h", b"\x86", b"N", b"0"


def _doubling(levels: int) -> bytes:
    """``{t_levels: 1}`` where ``t_(i+1) = (t_i, t_i)``, each level memoised and fetched twice."""
    body = [NONE, BINPUT + b"\x00"]
    for i in range(levels):
        body.append(BINGET + bytes([i]) + BINGET + bytes([i]) + TUPLE2 + BINPUT + bytes([i + 1]))
    body.append(forge.EMPTY_DICT + BINGET + bytes([levels]) + forge.integer(1) + b"s")
    return forge.pickle_bytes(b"".join(body))


def test_a_small_doubling_pickle_is_what_it_claims() -> None:
    """The forged opcodes are a real pickle: 10 levels load, and expand to 2^11 - 1 tuple-tree nodes."""
    loaded = pickle.loads(_doubling(10))
    (key,) = loaded
    assert len(loaded) == 1 and key[0] is key[1]
    check_pickle_expansion(_doubling(10), "ok")  # small: accepted
    (member,) = pickle.loads(_set_doubling(10))
    assert isinstance(member, frozenset) and len(member) == 1
    check_pickle_expansion(_set_doubling(10), "ok")


@pytest.mark.parametrize("build", ["tuple keys", "frozensets in a set"])
def test_a_doubling_pickle_is_refused_at_once(build: str) -> None:
    data = _doubling(60) if build == "tuple keys" else _set_doubling(60)
    start = time.perf_counter()
    with pytest.raises(PickleTooExpansive, match="expands to more than"):
        check_pickle_expansion(data, "bomb.pth")
    assert time.perf_counter() - start < 5


def _set_doubling(levels: int) -> bytes:
    """The same through frozensets of a tuple: ``f(i+1) = frozenset({(f(i), f(i))})``. The unpickler
    itself gets through it (a frozenset caches its hash), but a ``repr`` or comparison of it would not."""
    body = [NONE, BINPUT + b"\x00"]
    for i in range(levels):
        pair = BINGET + bytes([i]) + BINGET + bytes([i]) + TUPLE2
        body.append(b"(" + pair + b"\x91" + BINPUT + bytes([i + 1]))  # MARK, (f_i, f_i), FROZENSET
    body.append(b"\x8f(" + BINGET + bytes([levels]) + b"\x90")  # EMPTY_SET, MARK, item, ADDITEMS
    return forge.pickle_bytes(b"".join(body))


def _string_doubling(levels: int, length: int) -> bytes:
    """``str(t_levels)`` where ``t_0`` is a string of ``length`` and ``t_(i+1) = (t_i, t_i)``: few objects,
    but ``str`` of it is ``length * 2^levels`` characters (helper-49: 977 GiB from 1 MB)."""
    body = [forge.glob("builtins", "str"), forge.text("x" * length), BINPUT + b"\x00", POP]
    for i in range(levels):
        body.append(BINGET + bytes([i]) + BINGET + bytes([i]) + TUPLE2 + BINPUT + bytes([i + 1]) + POP)
    body += [BINGET + bytes([levels]), b"\x85", forge.REDUCE]  # str((t_levels,)...): TUPLE1, REDUCE
    return forge.pickle_bytes(b"".join(body))


def test_a_shared_long_string_counts_by_its_length() -> None:
    with pytest.raises(PickleTooExpansive, match="objects and characters"):
        check_pickle_expansion(_string_doubling(20, 1 << 20), "strbomb.pth")
    check_pickle_expansion(_string_doubling(3, 1000), "small.pth")  # 8,000 characters: fine
    assert len(pickle.loads(_string_doubling(3, 1000))) > 8000


def test_too_many_objects_are_refused_before_the_walk_and_messages_stay_short() -> None:
    many = forge.PROTO + b"]" + b"(" + b"N" * (MAX_OBJECTS + 10) + b"e" + forge.STOP  # a list of Nones
    start = time.perf_counter()
    with pytest.raises(PickleTooExpansive, match="describes more than"):
        check_pickle_expansion(many, "wide.pth")
    assert time.perf_counter() - start < 30
    huge_float = forge.PROTO + b"F" + b"1" * (1 << 20) + b"x\n" + forge.STOP  # genops quotes the argument
    with pytest.raises(CheckpointError, match="not a valid pickle") as caught:
        check_pickle_expansion(huge_float, "float.pth")
    assert len(str(caught.value)) < 400


def test_deep_nesting_is_refused_and_a_self_reference_is_not_a_bomb() -> None:
    nested: list = []
    inner = nested
    for _ in range(MAX_DEPTH + 5):
        inner.append([])
        inner = inner[0]
    with pytest.raises(PickleTooExpansive, match="nests objects more than"):
        check_pickle_expansion(pickle.dumps(nested, protocol=2), "deep.pth")
    looped: list = [1]
    looped.append(looped)
    check_pickle_expansion(pickle.dumps({"a": looped}, protocol=2), "loop.pth")
    with pytest.raises(CheckpointError, match="not a valid pickle"):
        check_pickle_expansion(forge.PROTO + b"t.", "broken.pth")  # TUPLE without a mark


def test_every_loader_refuses_the_bomb_in_one_line_and_fast(tmp_path: Path) -> None:
    """Through the real archive reader and the CLI (convert-classifier; fair-esm .pt goes the same way):
    exit 2 in one line, in seconds, where it used to spin until SIGKILL."""
    path = forge.write_archive(tmp_path / "bomb.pth", _doubling(60))
    with pytest.raises(PickleTooExpansive):
        load_torch_file(path)
    start = time.perf_counter()
    result = run_cli("convert-classifier", str(path), str(tmp_path / "out.safetensors"))
    assert result.code == 2 and result.stderr.count("\n") == 1 and "expands to more than" in result.stderr
    assert time.perf_counter() - start < 60 and not (tmp_path / "out.safetensors").exists()


def test_the_check_is_cheap_on_a_state_dict_of_full_size_key_count(tmp_path: Path) -> None:
    """ESM-2 3B's ~580 tensors: the walk accepts it, well inside a second (a child process: no import
    cost of this test's modules counted)."""
    code = (
        "import io, time, zipfile, collections, torch\n"
        "from virnucpro_trt.models.pickle_expansion import check_pickle_expansion\n"
        "keys = [f'layer.{i}.w{j}' for i in range(36) for j in range(16)]\n"
        "sd = collections.OrderedDict((k, torch.zeros(2)) for k in keys)\n"
        "buf = io.BytesIO(); torch.save(sd, buf); zf = zipfile.ZipFile(io.BytesIO(buf.getvalue()))\n"
        "data = zf.read(next(n for n in zf.namelist() if n.endswith('data.pkl')))\n"
        "t = time.perf_counter(); check_pickle_expansion(data, 'x'); print(time.perf_counter() - t)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds = float(done.stdout)
    assert seconds < 2
