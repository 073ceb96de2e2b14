"""ONNX Runtime's Linux wheels (1.32) carry 1DS telemetry: a few seconds after the first session a
background thread looks up its collector, mobile.events.data.microsoft.com. Nothing but ``download`` may
reach the network, so every import of onnxruntime in the package goes through
:func:`virnucpro_trt.environment.import_onnxruntime`, which turns it off before the library loads."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "virnucpro_trt"
HELPER = ("virnucpro_trt/environment.py", "import_onnxruntime")


def _imports_onnxruntime(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
        names = [node.module or ""]
    elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        called = ast.unparse(node.func)
        names = [node.args[0].value] if called.endswith("import_module") else []
    else:
        return False
    return any(isinstance(n, str) and (n == "onnxruntime" or n.startswith("onnxruntime.")) for n in names)


def test_onnxruntime_is_imported_only_through_the_helper() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        allowed: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and (path.relative_to(ROOT).as_posix(), node.name) == HELPER:
                allowed |= {id(inner) for inner in ast.walk(node)}
        found += [
            f"{path.relative_to(ROOT)}:{node.lineno}"
            for node in ast.walk(tree)
            if _imports_onnxruntime(node) and id(node) not in allowed
        ]
    assert found == [], f"import onnxruntime through virnucpro_trt.environment.import_onnxruntime: {found}"


def _python(code: str, env: dict[str, str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT, text=True,
                          capture_output=True, timeout=120, check=True, **kwargs)  # fmt: skip


def test_the_helper_turns_telemetry_off_before_the_library_loads_and_keeps_a_users_choice() -> None:
    pytest.importorskip("onnxruntime")
    code = """
        import os, sys
        from virnucpro_trt.engines.onnx_session import import_onnxruntime
        assert "onnxruntime" not in sys.modules
        import_onnxruntime()
        print(os.environ.get("ORT_DISABLE_TELEMETRY"))
    """
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    assert _python(code, env).stdout.strip() == "1"
    assert _python(code, {**env, "ORT_DISABLE_TELEMETRY": "0"}).stdout.strip() == "0"


SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res) {
    fprintf(stderr, "getaddrinfo(%s)\n", node ? node : "");
    if (!node || strcmp(node, "localhost") != 0) return EAI_NONAME;  /* the test itself sends nothing */
    int (*real)(const char *, const char *, const struct addrinfo *, struct addrinfo **) =
        (int (*)(const char *, const char *, const struct addrinfo *, struct addrinfo **))
            dlsym(RTLD_NEXT, "getaddrinfo");
    return real(node, service, hints, res);
}
"""


@pytest.mark.slow
def test_an_onnxruntime_session_looks_up_no_host(tmp_path: Path) -> None:
    """Every host name the process resolves, through an LD_PRELOAD shim of getaddrinfo (which answers
    only localhost), while a session runs and stays alive past the telemetry's first lookup (about 8 s
    after the session on 1.32)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or not sys.platform.startswith("linux"):
        pytest.skip("needs a C compiler on Linux")
    source, shim = tmp_path / "shim.c", tmp_path / "shim.so"
    source.write_text(SHIM)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(shim), str(source), "-ldl"], check=True)
    code = """
        import socket, time
        import numpy as np
        from virnucpro_trt.engines.onnx_session import import_onnxruntime
        ort = import_onnxruntime()
        from onnx import TensorProto, helper
        value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1])
        identity = helper.make_node("Identity", ["x"], ["y"])
        graph = helper.make_graph([identity], "g", [value("x")], [value("y")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        session.run(None, {"x": np.ones(1, np.float32)})
        socket.getaddrinfo("localhost", None)  # the shim sees this one: it works
        time.sleep(12)
    """
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    run = _python(code, {**env, "LD_PRELOAD": str(shim)})
    looked_up = [line for line in run.stderr.splitlines() if line.startswith("getaddrinfo(")]
    assert looked_up == ["getaddrinfo(localhost)"], run.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["predict", "missing.fa", "-o", "out", "--backend", "onnxruntime"],
        ["embed", "missing.faa", "--model", "esm2", "-o", "out.h5"],
        ["build", "--dnabert", "d", "--esm", "e", "--classifier", "c", "--backend", "onnxruntime",
         "-o", "eng"],
        ["bench", "--backends", "onnxruntime"],
    ],
    ids=lambda command: command[0],
)
def test_every_computing_command_turns_telemetry_off_before_its_work(command, tmp_path, monkeypatch) -> None:
    """The variable is set by the command itself (``environment.stay_offline``), not only by our own
    import: onnxscript or torch.onnx may load onnxruntime first during a build or a bench."""
    from tests.cli.helpers import run_cli

    monkeypatch.chdir(tmp_path)
    for name in ("ORT_DISABLE_TELEMETRY", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    run_cli(*command)  # fails on the missing files; what matters is what it set before
    assert os.environ.get("ORT_DISABLE_TELEMETRY") == "1"
    assert os.environ.get("HF_HUB_OFFLINE") == "1" and os.environ.get("TRANSFORMERS_OFFLINE") == "1"
