"""Engine builds for the benchmark, each in a child process running the real build code.

Why a child: a build compiles, autotunes and loads the engine once for its parity gate, and on CUDA both
can leave state behind (allocator pools, compiler caches) or take the process down (the open AOTInductor
load crash, DEVELOPERS.md). In a child, a crash becomes one ``failed`` row instead of the end of the run,
and the configuration is then timed in a process that did not build it. The parent reads the child's
log lines as they come (so a long build shows progress) and keeps the last error line as the reason.

    python -m virnucpro_trt.bench.build_worker '<BuildSettings as JSON>'
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import traceback
from collections import deque
from typing import TYPE_CHECKING

from virnucpro_trt.errors import one_line

if TYPE_CHECKING:
    from virnucpro_trt.engines.build import BuildSettings

log = logging.getLogger(__name__)

_LOG_PREFIX = "VTLOG "
_ERROR_PREFIX = "VTERR "


class BuildFailed(Exception):
    """The build child failed; the message is its one-line reason."""


def build_in_child(settings: BuildSettings) -> None:
    """Run :func:`virnucpro_trt.engines.build.build_engines` for ``settings`` in a child process."""
    command = [sys.executable, "-m", "virnucpro_trt.bench.build_worker", json.dumps(settings.to_json())]
    tail: deque[str] = deque(maxlen=20)
    error: str | None = None
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as child:
        assert child.stdout is not None
        try:
            for raw in child.stdout:
                line = raw.rstrip()
                if line.startswith(_ERROR_PREFIX):
                    error = line[len(_ERROR_PREFIX) :]
                elif line.startswith(_LOG_PREFIX):
                    level, _, message = line[len(_LOG_PREFIX) :].partition(" ")
                    log.log(
                        logging.getLevelName(level) if level.isupper() else logging.INFO, "build: %s", message
                    )
                elif line:
                    tail.append(line)
                    log.debug("build: %s", line)
        except BaseException:  # interrupted (SIGTERM reaches only this process): the child goes too
            _stop(child)
            raise
        code = child.wait()
    if code == 0:
        return
    if error is None and code < 0:
        error = f"the build process was killed by {signal.Signals(-code).name}"
    raise BuildFailed(error or f"the build process exited with {code}: {tail[-1] if tail else 'no output'}")


def _stop(child: subprocess.Popen[str]) -> None:
    """Terminate the build child and wait for it (killed after 30 s), so it holds no device nor folder
    that the interrupted parent is about to clean up."""
    child.terminate()
    try:
        child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def main(argv: list[str]) -> int:
    """Child side: build, log in a form the parent parses, report a failure as one line."""
    logging.basicConfig(
        level=logging.INFO, format=f"{_LOG_PREFIX}%(levelname)s %(message)s", stream=sys.stdout
    )
    try:
        from virnucpro_trt.engines.build import BuildSettings, build_engines

        settings = BuildSettings.from_json(json.loads(argv[0]))
        build_engines(settings, command=["virnucpro-trt", "bench", "(engine build)"])
    except Exception as exc:
        traceback.print_exc(file=sys.stdout)  # the parent keeps it at debug level (--log-file)
        print(f"{_ERROR_PREFIX}{one_line(exc)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
