"""``benchmarks/cxx_host_cuda.py`` end to end on the CPU with tiny engines (the H200 run uses cuda:0)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from virnucpro_trt.bench.host_build import HostBuild
from virnucpro_trt.settings import PaddingCap

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location(
        "bench_script_cxx_host_cuda", ROOT / "benchmarks" / "cxx_host_cuda.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cxx_host_benchmark_on_tiny_cpu_engines(
    production_build: HostBuild, engines: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cxx_host.json"
    code = _script().main(
        [
            "--engines", str(engines), "--reads", "60", "--device", "cpu", "--max-batch-tokens", "1024",
            "--build-dir", str(production_build.build_dir), "--workdir", str(tmp_path / "work"),
            "--host-cpu-threads", "2", "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["host_build"]["configured"] is False  # the session's production build was reused
    assert report["host"]["verified_files"] is True  # built with OpenSSL here
    assert report["environment"]["torch"] == torch.__version__ and report["device"] == "cpu"
    assert report["workload"]["reads"] == 60 and report["workload"]["seed"] == 42
    assert report["frames"] == report["workload"]["frames"] > 0
    assert report["max_batch_tokens"] == 1024
    goals = report["goals"]
    assert goals["parity_passed"] and goals["batching_matches"]
    assert report["parity"]["rule"].startswith("embeddings: each frame max abs <= 0.0001 or relative L2")
    assert report["parity"]["label_agreement"] == 1.0
    for kind in ("dnabert-s", "esm2"):
        batches = report["batches"][kind]
        assert batches["host"] == batches["python"] and batches["host"]["batches"] > 1
    ratios = report["throughput_ratio_host_vs_python"]
    assert set(ratios) == {"dnabert-s", "esm2", "classifier", "total"} and all(r > 0 for r in ratios.values())
    assert goals["throughput_met"] == (ratios["total"] >= 0.95)
    seconds = report["seconds"]
    assert ratios["esm2"] == pytest.approx(seconds["python"]["esm2"] / seconds["host"]["esm2"], rel=0.02)
    assert (tmp_path / "work" / "host_timing.json").is_file()
    host = report["host"]
    assert host["cpu_threads"] == 2  # --host-cpu-threads reached the host
    for kind in ("dnabert-s", "esm2"):
        inside = host["embed_s"][kind] + sum(host["host_work_s"][kind].values())
        assert set(host["host_work_s"][kind]) == {"select", "check", "place"}
        assert 0 < host["embed_s"][kind] <= seconds["host"][kind] + 1e-4
        assert 0 < inside <= seconds["host"][kind] + 1e-3  # four rounded figures summed
    printed = capsys.readouterr().out
    assert "host/python" in printed and "parity PASSED" in printed and "2 CPU thread(s)" in printed


def test_a_host_without_openssl_is_rerun_without_hashing(tmp_path: Path) -> None:
    """A host built where OpenSSL headers are missing refuses unhashed files; the benchmark's own engine
    set has hashed them, so it reruns the host with --no-verify and says so in the report."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "virnucpro-host"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, sys, torch\n"
        f"open({str(calls)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "if '--no-verify' not in sys.argv:\n"
        "    sys.stderr.write('Error: engines in E cannot be used here: this runtime was built without '\n"
        "                     'OpenSSL and cannot check esm2.pt2\\n')\n"
        "    sys.exit(2)\n"
        "args = sys.argv[1:]\n"
        "torch.save((torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 2)), args[2])\n"
        "json.dump({'load_s': 0.1}, open(args[args.index('--timing') + 1], 'w'))\n"
    )
    fake.chmod(0o755)
    arrays, timing, run = _script().run_host(
        fake, tmp_path / "engines", torch.device("cpu"), 512, tmp_path / "in.pt", tmp_path
    )
    assert run["verified_files"] is False and timing == {"load_s": 0.1}
    assert [a.shape for a in arrays] == [(2, 3), (2, 4), (2, 2)]
    lines = calls.read_text().splitlines()
    assert len(lines) == 2 and "--no-verify" not in lines[0] and lines[1].endswith("--no-verify")
    assert "--max-batch-tokens 512 --warmup --timing" in lines[0] and "--cpu-threads" not in lines[0]
    assert "--max-padding none" in lines[0]  # no cap on the Python side: none on the host's either
    _script().run_host(
        fake, tmp_path / "engines", torch.device("cpu"), 512, tmp_path / "in.pt", tmp_path,
        padding_cap=PaddingCap(0.29, 64),
    )  # fmt: skip
    assert "--max-padding 0.29:64" in calls.read_text().splitlines()[2]
