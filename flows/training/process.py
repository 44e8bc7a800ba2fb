"""The `flows` command's own process: heavy imports without the cyclic garbage collector, and an exit without
the interpreter's teardown. Imports only the standard library.

A command imports torch and Lightning, which leave about 440,000 long-lived objects; CPython's cyclic garbage
collector walks all of them in each full collection (seven during those imports, 0.7 s here) and again, with
the teardown of every module, at exit (about 1 s more). `run_as_process` runs a command-line `main` with the
collector paused until the command calls `imports_done` (which freezes what was imported, so that later
collections skip it), and ends the process as `sys.exit` would (threads shut down and joined, `atexit`
functions run, the standard streams flushed) but without the teardown, which frees nothing a finished process
keeps.
Called from Python instead (tests, a notebook), `main` never pauses the collector: `imports_done` is then a
no-op.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

__all__ = ["exit_without_teardown", "imports_done", "run_as_process"]

#: whether `run_as_process` paused the collector and `imports_done` has not yet resumed it
_paused = False


def _pause() -> None:
    global _paused
    if gc.isenabled():  # a collector the user turned off stays off
        gc.disable()
        _paused = True


def imports_done() -> None:
    """A command's heavy imports are done: freeze the objects they made, resume the paused collector."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()


def _thaw() -> None:
    """Undo `imports_done`'s freeze (and a pause left on) before a normal interpreter exit, so that its final
    collection sees every object (native extensions report frozen survivors as leaks)."""
    imports_done()
    gc.unfreeze()


def exit_without_teardown(status: int) -> NoReturn:
    """End the process with exit `status` as `sys.exit(status)` would, minus the interpreter's teardown.

    In Python's own order: `threading._shutdown` (the threading atexit callbacks, which stop idle
    `concurrent.futures` workers such as Inductor's compile pool, then the non-daemon threads joined), the
    `atexit` functions (loggers, multiprocessing children), stdout and stderr flushed (a failed flush turns a
    0 status into 120, as Python's exit does) and C's stdio buffers, then `os._exit`. Where that cannot be done
    as Python would (not the main thread, or a Python without these hooks), it is plain `sys.exit`.
    """
    shutdown_threads = getattr(threading, "_shutdown", None)
    run_exit_functions = getattr(atexit, "_run_exitfuncs", None)
    if threading.current_thread() is not threading.main_thread() or None in (
        shutdown_threads,
        run_exit_functions,
    ):
        _thaw()
        sys.exit(status)
    shutdown_threads()
    run_exit_functions()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except ValueError:  # already closed: nothing buffered is left
            pass
        except OSError as error:  # a full disk, a reader that went away: the output is incomplete
            status = status or 120
            with contextlib.suppress(Exception):
                sys.__stderr__.write(
                    f"flows: could not flush {getattr(stream, 'name', 'a stream')}: {error}\n"
                )
                sys.__stderr__.flush()
    with contextlib.suppress(Exception):  # what native code wrote with C's stdio (os._exit skips exit())
        import ctypes

        ctypes.CDLL(None).fflush(None)
    os._exit(status)


def run_as_process(main: Callable[[], int]) -> NoReturn:
    """Run `main` (a command line's entry point, returning its exit status) as this process's one job: the
    collector paused until `imports_done`, the exit without teardown. An exception from `main` propagates
    to Python's own exit (a traceback, status 1)."""
    _pause()
    try:
        status = main()
    except BaseException:
        _thaw()
        raise
    exit_without_teardown(status)
