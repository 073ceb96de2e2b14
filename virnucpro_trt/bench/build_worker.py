"""Engine builds for the benchmark, each in a child process running the real build code.

Why a child: a build compiles, autotunes and loads the engine once for its parity gate, and on CUDA both
can leave state behind (allocator pools, compiler caches) or take the process down (the open AOTInductor
load crash, DEVELOPERS.md). In a child, a crash becomes one ``failed`` row instead of the end of the run,
and the configuration is then timed in a process that did not build it. The parent reads the child's
log lines as they come (so a long build shows progress) and keeps the last error line as the reason.

The child ends as ``build`` ends on an interrupt, however its parent ends. The parent's SIGTERM (bench
interrupted: :func:`_stop`) is raised in it as ``KeyboardInterrupt`` (``interrupts.py``), so the build
takes its clean-up path; Python's default, dying at once, left its staging folder and lock in --workdir.
And a parent killed by SIGKILL closes the child's stdin, which the child watches (:data:`_LIFELINE`):
it then interrupts itself the same way. Before, it went on building for minutes (on the GPU, for a
full-size set) into a work folder nothing would read, an orphan nobody waited for.

    python -m virnucpro_trt.bench.build_worker '<BuildSettings as JSON>' [--stop-when-stdin-closes]
        [--wait-for-another-build]
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections import deque
from typing import TYPE_CHECKING

from virnucpro_trt.errors import one_line
from virnucpro_trt.interrupts import sigterm_as_interrupt

if TYPE_CHECKING:
    from virnucpro_trt.engines.build import BuildSettings

log = logging.getLogger(__name__)

_LOG_PREFIX = "VTLOG "
_ERROR_PREFIX = "VTERR "
_LIFELINE = "--stop-when-stdin-closes"  # the child's stdin is a pipe only its parent holds open
_WAIT = "--wait-for-another-build"  # benches sharing --workdir: the second waits, then finds the set made


class BuildFailed(Exception):
    """The build child failed; the message is its one-line reason."""


def build_in_child(settings: BuildSettings) -> None:
    """Run :func:`virnucpro_trt.engines.build.build_engines` for ``settings`` in a child process."""
    command = [
        sys.executable, "-m", "virnucpro_trt.bench.build_worker", json.dumps(settings.to_json()), _LIFELINE,
        _WAIT,
    ]  # fmt: skip
    tail: deque[str] = deque(maxlen=20)
    error: str | None = None
    with subprocess.Popen(  # stdin: never written; closed by the kernel when this process dies
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        errors="replace",
    ) as child:  # fmt: skip
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


def _interrupt_when_stdin_closes() -> None:
    """Raise SIGTERM in this process once its stdin reaches end of file: the parent, which alone holds
    the pipe's other end, has died (however: SIGKILL too) and nothing waits for this build any more."""

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    """Child side: build, log in a form the parent parses, report a failure as one line. SIGTERM (and,
    with :data:`_LIFELINE`, the parent's death) interrupts the build, which then removes what it made
    (exit 130)."""
    logging.basicConfig(
        level=logging.INFO, format=f"{_LOG_PREFIX}%(levelname)s %(message)s", stream=sys.stdout
    )
    try:
        with sigterm_as_interrupt():
            if _LIFELINE in argv[1:]:
                _interrupt_when_stdin_closes()
            from virnucpro_trt.engines.build import BuildSettings, build_engines

            settings = BuildSettings.from_json(json.loads(argv[0]))
            build_engines(settings, ["virnucpro-trt", "bench", "(engine build)"], wait=_WAIT in argv[1:])
    except KeyboardInterrupt:  # the build has removed what it made; the parent may be gone (no output)
        return 130
    except Exception as exc:
        traceback.print_exc(file=sys.stdout)  # the parent keeps it at debug level (--log-file)
        print(f"{_ERROR_PREFIX}{one_line(exc)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
