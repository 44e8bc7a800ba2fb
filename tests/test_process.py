"""`flows.training.process`: the command's process pauses the cyclic collector for its imports and exits as
`sys.exit` would (threads joined, atexit functions run, streams flushed), without the interpreter's teardown."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from flows.training import process

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, stdout: Any = subprocess.PIPE) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python with buffered standard streams (PYTHONUNBUFFERED would hide a lost flush)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        timeout=60,
    )


def test_run_as_process_pauses_the_collector_until_imports_done_then_freezes() -> None:
    result = _python(
        """
        import gc, sys
        from flows.training.process import imports_done, run_as_process

        def main():
            before = gc.isenabled()
            imports_done()
            print(before, gc.isenabled(), gc.get_freeze_count() > 0, flush=True)
            imports_done()  # a second call changes nothing
            print(gc.isenabled(), flush=True)
            return 0

        run_as_process(main)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "True", "True"]


def test_the_exit_keeps_the_status_runs_atexit_joins_threads_and_flushes() -> None:
    # Everything `sys.exit` guarantees: the status, atexit functions, a non-daemon thread's last write,
    # and unflushed buffered output on stdout and stderr.
    result = _python(
        """
        import atexit, sys, threading, time
        from flows.training.process import run_as_process

        def late():
            time.sleep(0.3)
            print("thread done", end=";")

        def main():
            atexit.register(lambda: print("atexit ran", end=";"))
            threading.Thread(target=late).start()
            print("partial line", end=";")
            sys.stderr.write("to stderr")
            return 3

        run_as_process(main)
        """
    )
    assert result.returncode == 3
    assert result.stdout == "partial line;thread done;atexit ran;"
    assert result.stderr == "to stderr"


def test_an_exception_from_main_reaches_python_with_the_collector_restored() -> None:
    result = _python(
        """
        import atexit, gc
        from flows.training.process import imports_done, run_as_process

        atexit.register(lambda: print("collector", gc.isenabled(), "frozen", gc.get_freeze_count()))

        def main():
            imports_done()
            raise KeyError("boom")

        run_as_process(main)
        """
    )
    assert result.returncode == 1
    assert "KeyError: 'boom'" in result.stderr
    assert result.stdout.strip() == "collector True frozen 0"


def test_a_collector_the_caller_turned_off_stays_off() -> None:
    result = _python(
        """
        import gc
        from flows.training.process import imports_done, run_as_process

        gc.disable()

        def main():
            imports_done()
            print(gc.isenabled(), gc.get_freeze_count(), flush=True)
            return 0

        run_as_process(main)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "0"]


def test_imports_done_outside_run_as_process_changes_nothing() -> None:
    frozen, enabled = gc.get_freeze_count(), gc.isenabled()
    process.imports_done()
    assert (gc.get_freeze_count(), gc.isenabled()) == (frozen, enabled)


def test_the_exit_stops_idle_pool_workers_as_python_does() -> None:
    # concurrent.futures stops idle workers from threading's own atexit hooks (Inductor keeps such a pool);
    # joining the threads without running those hooks waits forever.
    result = _python(
        """
        from concurrent.futures import ThreadPoolExecutor
        from flows.training.process import run_as_process

        pool = ThreadPoolExecutor(2)

        def main():
            print(pool.submit(sum, [1, 2]).result(), end="")
            return 0

        run_as_process(main)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "3"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_failed_final_flush_is_a_failure_as_in_python() -> None:
    code = """
        import sys
        from flows.training.process import run_as_process

        def main():
            print("lost on a full disk", end="")
            return 0

        {exit}
        """
    with open("/dev/full", "w") as full:
        ours = _python(code.format(exit="run_as_process(main)"), stdout=full)
        python = _python(code.format(exit="sys.exit(main())"), stdout=full)
    assert python.returncode == 120
    assert ours.returncode == 120
    assert "could not flush" in ours.stderr
