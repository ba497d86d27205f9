"""Backends in worker processes: a backend that aborts, segfaults or hangs costs a verdict, not the run.

A backend is untrusted code (``shared/design.md``, "Trust boundaries"): it may abort (XLA's
``CHECK`` failures do), segfault, hang, leak floating-point flags into its process or corrupt a
CUDA context. :class:`Workers` runs each backend in a process of its own and hands out
:class:`IsolatedBackend` proxies, which :func:`difftest.check.check_case` judges like any other
backend:

* **One worker per backend and process**, started on first use and kept until the process ends (or
  the worker dies), so a CUDA backend builds its context once, and a second campaign in the same
  process (the pytest plugin, a notebook) finds its workers warm. Workers are forked from a fork
  server that has imported the backends' libraries once (torch, onnxruntime), so a start after
  the first costs milliseconds. A :class:`Workers` pool is one run's view of them: its time limit,
  its deadline.
* **A call** sends the runtime arrays through a pipe and waits for the gradients, at most
  ``timeout`` seconds. A worker that dies (a signal, an abort, ``os._exit``) makes the call raise
  :class:`~difftest.errors.BackendCrashed` (``crashed: SIGABRT``); one past the limit is killed
  (``SIGKILL``) and the call raises :class:`~difftest.errors.BackendTimedOut` (``timed out after
  5 s``). Either is that backend's ``error`` verdict on that case, and the next call starts a new
  worker. A Python exception in the worker comes back as
  :class:`~difftest.errors.BackendRaised`, with the backend's own type name, message and
  traceback.
* **What a worker prints** (stdout and stderr: an abort's ``CHECK`` message, the Python traceback
  that :mod:`faulthandler` writes on a fatal signal) goes to a log file; the last lines of a call
  that died are kept with its verdict (``details``).
* **A deadline** (:attr:`Workers.deadline`, a campaign's end): a call still running then is given
  :data:`DEADLINE_GRACE` more, then abandoned with :class:`~difftest.errors.BudgetExhausted` — the
  case is not judged (running out of time is not the backend's fault) and the campaign ends.
* Workers ignore Ctrl-C (the run decides), are killed when the process exits (or by
  :func:`shutdown`), and end on their own when the run that started them is gone (killed: EOF on
  a pipe whose only write end the run holds).

difftest's own references — the NF model (``nf-*``) and the emulations (``emu-*``) — are the
judge's own mathematics and run where the judge runs (``Backend.isolate = False``); so does a
backend object that cannot be rebuilt in another process (neither registered nor picklable, or
defined in the ``__main__`` script), with a note (:attr:`Workers.notes`).
"""

from __future__ import annotations

import atexit
import contextlib
import math
import multiprocessing
import multiprocessing.util  # its atexit handler registered before ours (LIFO: ours runs first)
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import types
from pathlib import Path

import numpy as np

from ..config import DEFAULTS
from ..errors import BackendCrashed, BackendFailed, BackendRaised, BackendTimedOut, BudgetExhausted, DifftestError

__all__ = ["DEFAULT_TIMEOUT", "IsolatedBackend", "Workers", "describe_exit", "shutdown"]

#: Seconds one backend call may take by default: generous (a real layer on a GPU takes
#: milliseconds, on a CPU seconds), so that only a hang reaches it.
DEFAULT_TIMEOUT = DEFAULTS["backend_timeout"]

#: Seconds a call may run past the pool's deadline before it is abandoned (a campaign's end).
DEADLINE_GRACE = 5.0

#: Lines (and characters) of a worker's output kept with a call that died.
LOG_TAIL_LINES = 40
LOG_TAIL_CHARS = 6000


def describe_exit(exitcode: int | None) -> str:
    """``crashed: SIGSEGV`` for a worker killed by a signal, ``crashed: exit code 3`` for one that
    exited, from :attr:`multiprocessing.Process.exitcode`."""
    if exitcode is None:
        return "crashed: its pipe closed while it still ran"
    if exitcode < 0:
        try:
            return f"crashed: {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"crashed: signal {-exitcode}"
    return f"crashed: exit code {exitcode}"


# --- the worker process -------------------------------------------------------------------------

def _watch_run(alive) -> None:
    """End the worker when the run that started it is gone: the run holds the only write end of
    ``alive``, so its death is EOF here. (Not the parent process: that is the fork server, which
    lives as long as any of its children does.)"""
    try:
        alive.recv()
    except (EOFError, OSError):
        pass
    os._exit(1)


def _redirect_output(log: str) -> None:
    """stdout and stderr (the file descriptors: C libraries write there too) into the log, unbuffered
    enough that the last words before an abort are in it."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False, encoding="utf-8", errors="replace")
    sys.stderr = open(2, "w", buffering=1, closefd=False, encoding="utf-8", errors="replace")


def _rebuild(recipe: tuple):
    """The backend a recipe describes: ``("name", NAME)`` from the registry, ``("pickle", bytes)``."""
    kind, what = recipe
    if kind == "name":
        from ..backends import get_backend

        return get_backend(what)
    return pickle.loads(what)


def _raised(exc: BaseException) -> tuple:
    return ("raised", type(exc).__name__, str(exc), traceback.format_exc(limit=8))


def _serve(conn, recipe: tuple, log: str, alive) -> None:
    """The worker: rebuild the backend, say it is ready (with its environment), then answer calls."""
    _redirect_output(log)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import faulthandler

    faulthandler.enable(all_threads=False)  # a fatal signal writes the Python traceback into the log
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=False)  # asked before a hung worker is killed
    threading.Thread(target=_watch_run, args=(alive,), daemon=True).start()
    from ..backends.base import backward, read_environment

    try:
        backend = _rebuild(recipe)
        conn.send(("ready", read_environment(backend)))
    except Exception as exc:
        conn.send(_raised(exc))
        return
    while True:
        try:
            args = conn.recv()
        except (EOFError, OSError):
            return  # the run closed the pipe
        try:
            out = backward(backend, *args)
            reply = ("ok", {g: np.asarray(v, dtype=np.float64) for g, v in out.items()})
        except Exception as exc:  # the backend's own failure: its verdict, the worker goes on
            reply = _raised(exc)
        conn.send(reply)


# --- the run's side -----------------------------------------------------------------------------

def _context():
    """Fork server where there is one (Linux, macOS): workers start from a process that has imported
    the libraries once. Elsewhere, spawn."""
    try:
        return multiprocessing.get_context("forkserver")
    except ValueError:  # pragma: no cover - no fork server on this platform
        return multiprocessing.get_context("spawn")


@contextlib.contextmanager
def _main_hidden():
    """While a worker starts, ``__main__`` is an empty module: multiprocessing would otherwise run the
    user's script (or notebook) again in the worker to "prepare" it. A worker needs none of it: it
    rebuilds its backend by name or from a pickle that does not refer to ``__main__``."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


class _Process:
    """What the workers of this process share: the start context, the pipe whose only write end this
    process holds (EOF in a worker: the run is gone), the folder of the workers' logs, the workers."""

    def __init__(self):
        self.context = _context()
        self.alive_reader, self.alive_writer = self.context.Pipe(duplex=False)
        self.logdir = Path(tempfile.mkdtemp(prefix="difftest-workers-"))
        self.workers: dict[tuple, _Worker] = {}  # recipe -> its worker
        self.preloaded = False
        self.pid = os.getpid()

    def close(self) -> None:
        for w in self.workers.values():
            w.kill()
        self.workers.clear()
        shutil.rmtree(self.logdir, ignore_errors=True)


_SHARED: _Process | None = None


def _shared() -> _Process:
    global _SHARED
    if _SHARED is None or _SHARED.pid != os.getpid():  # (a forked copy of this process starts its own)
        _SHARED = _Process()
        # At exit, before multiprocessing joins this process's children (a job of a parallel campaign
        # is such a process: it exits through multiprocessing, not atexit), or the join waits forever.
        multiprocessing.util.Finalize(None, shutdown, exitpriority=100)
    return _SHARED


@atexit.register
def shutdown() -> None:
    """Kill every worker of this process (also at exit: non-daemonic workers would otherwise keep the
    interpreter from exiting). Workers start again when next needed."""
    if _SHARED is not None and _SHARED.pid == os.getpid():
        _SHARED.close()


class _Worker:
    """One backend's process: started on first use, replaced after it dies, shared by every pool of
    this process that runs the same backend (rebuilt the same way)."""

    def __init__(self, shared: _Process, backend, recipe: tuple):
        self.shared, self.recipe = shared, recipe
        self.name = backend.name
        self.log = shared.logdir / f"worker-{len(shared.workers)}.log"
        self.process = None
        self.conn = None
        self.ready = False
        self.env: dict | None = None
        self.starts = 0

    # -- life --
    def launch(self) -> None:
        """Start the process (not waiting for it to be ready)."""
        if self.process is not None:
            return
        ctx = self.shared.context
        parent, child = ctx.Pipe()
        self.log.write_bytes(b"")
        p = ctx.Process(target=_serve, args=(child, self.recipe, str(self.log), self.shared.alive_reader),
                        name=f"difftest-worker-{self.name}")
        with _main_hidden():
            p.start()
        child.close()
        self.process, self.conn, self.ready = p, parent, False
        self.starts += 1

    def _ensure_ready(self, timeout: float | None, deadline: float) -> None:
        self.launch()
        if self.ready:
            return
        reply = self._receive(timeout, deadline, "while starting")
        if reply[0] == "raised":
            self.kill()
            raise BackendRaised(f"{reply[1]}: {reply[2]}", reply[3])
        self.env, self.ready = reply[1], True

    def kill(self) -> None:
        p, conn = self.process, self.conn
        self.process = self.conn = None
        if conn is not None:
            conn.close()
        if p is not None:
            if p.is_alive():
                p.kill()
            p.join(5)

    # -- calls --
    def _tail(self) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip("\n").splitlines()[-LOG_TAIL_LINES:])[-LOG_TAIL_CHARS:]

    def _where_stuck(self) -> None:
        """Ask a hung worker for its Python traceback (into its log) before it is killed."""
        p = self.process
        if p is not None and p.pid and hasattr(signal, "SIGUSR1"):
            try:
                os.kill(p.pid, signal.SIGUSR1)
                time.sleep(0.2)
            except OSError:
                pass

    def _died(self, during: str) -> BackendCrashed:
        p = self.process
        if p is not None:
            p.join(5)
        code = None if p is None else p.exitcode
        tail = self._tail()
        self.kill()
        return BackendCrashed(describe_exit(code) + (f" {during}" if during else ""), tail)

    def _receive(self, limit: float | None, deadline: float, during: str = "") -> tuple:
        """The worker's next message, within ``limit`` seconds (None: no limit) and the deadline."""
        start = time.monotonic()
        cut = math.inf if limit is None else start + limit
        abandon = deadline + DEADLINE_GRACE
        try:
            while True:
                now = time.monotonic()
                wait = min(cut, abandon) - now
                if wait <= 0:
                    if abandon <= cut:
                        self.kill()
                        raise BudgetExhausted
                    self._where_stuck()
                    tail = self._tail()
                    self.kill()
                    raise BackendTimedOut(f"timed out after {limit:g} s" + (f" {during}" if during else ""), tail)
                if self.conn.poll(min(wait, 3600.0)):
                    try:
                        return self.conn.recv()
                    except (EOFError, OSError):
                        raise self._died(during) from None
        except BaseException as exc:  # Ctrl-C, the deadline: the worker is mid-call, its state unknown
            if not isinstance(exc, BackendFailed):
                self.kill()
            raise

    def call(self, args: tuple, timeout: float | None, deadline: float) -> dict:
        self._ensure_ready(timeout, deadline)
        try:
            os.truncate(self.log, 0)  # the log of this call alone (the worker appends)
        except OSError:
            pass
        try:
            self.conn.send(args)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            raise self._died("") from None
        except BaseException:
            self.kill()
            raise
        reply = self._receive(timeout, deadline)
        if reply[0] == "raised":
            raise BackendRaised(f"{reply[1]}: {reply[2]}", reply[3])
        return reply[1]

    def environment(self, timeout: float | None, deadline: float) -> dict:
        if self.env is None:
            try:
                self._ensure_ready(timeout, deadline)
            except BackendFailed as exc:
                return {"backend": self.name, "environment_error": str(exc)}
        return self.env


class IsolatedBackend:
    """A backend that runs in its worker (:class:`Workers`): the same name, format and description;
    its ``conv2d_backward`` and ``environment`` are answered by the worker, within its pool's timeout
    and deadline. Other attributes are the backend's own."""

    isolate = False  # already in its worker

    def __init__(self, backend, worker: _Worker, pool: "Workers"):
        self.backend, self._worker, self._pool = backend, worker, pool

    def __getattr__(self, name):
        return getattr(self.__dict__["backend"], name)

    def takes(self, name: str) -> bool:
        """Every keyword: the worker adapts the call to the backend's own signature."""
        return True

    def conv2d_backward(self, x, w, d, stride, padding, gradients=None, dilation=1, groups=1):
        from ..values.geometry import GRADIENTS

        args = (x, w, d, stride, padding, GRADIENTS if gradients is None else tuple(gradients), dilation, groups)
        return self._worker.call(args, self._pool.timeout, self._pool.deadline)

    def environment(self) -> dict:
        return self._worker.environment(self._pool.timeout, self._pool.deadline)

    def __repr__(self) -> str:
        return f"<{self.backend.name} in a worker process>"


class Workers:
    """A run's view of the worker processes: its time limit and deadline over them.

    Workers belong to the process, one per backend (rebuilt the same way): a second pool that runs a
    backend takes the worker a first one started, already warm; they end when the process ends, or
    with :func:`shutdown`. ``timeout`` (seconds, None: none) bounds every call of this pool;
    :attr:`deadline` (a ``time.monotonic()`` value, default none) is when its campaign ends. Not
    thread-safe: one run at a time per process. Use as a context manager (or :meth:`close`) to mark
    the end of the run.
    """

    def __init__(self, timeout: float | None = DEFAULT_TIMEOUT):
        if timeout is not None and not timeout > 0:
            raise DifftestError(f"the backend timeout must be > 0 seconds, got {timeout!r}")
        self.timeout = timeout
        self.deadline = math.inf
        self.notes: list[str] = []
        self._mine: dict[str, tuple[_Worker, int]] = {}  # backend name -> (worker, its starts before this pool)

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def isolate(self, backend):
        """``backend`` in its worker (an :class:`IsolatedBackend`), or ``backend`` itself where it runs
        here (difftest's own references; one that cannot be rebuilt in another process)."""
        if not getattr(backend, "isolate", True):
            return backend
        if backend.name not in self._mine:
            recipe = _recipe(backend)
            if recipe is None:
                self.notes.append(f"{backend.name} runs in this process: a worker cannot rebuild it (it is not a "
                                  "registered backend, and it does not pickle or it is defined in __main__)")
                return backend
            shared = _shared()
            worker = shared.workers.get(recipe)
            if worker is None:
                worker = shared.workers[recipe] = _Worker(shared, backend, recipe)
            self._mine[backend.name] = (worker, worker.starts)
        return IsolatedBackend(backend, self._mine[backend.name][0], self)

    def wrap(self, backends: list) -> list:
        """:meth:`isolate` for each backend (a :class:`~difftest.backends.Backend` or a name); workers
        not yet running start right away, side by side."""
        from ..backends import get_backend

        backends = [get_backend(b) if isinstance(b, str) else b for b in backends]
        _preload(backends)
        out = [self.isolate(b) for b in backends]
        for b in out:
            if isinstance(b, IsolatedBackend):
                b._worker.launch()
        return out

    def starts(self, name: str) -> int:
        """How many times backend ``name``'s worker was started for this pool (restarts after crashes
        included; 0 for one it found running)."""
        worker, before = self._mine.get(name, (None, 0))
        return 0 if worker is None else worker.starts - before

    def close(self) -> None:
        """The end of this pool's run: its workers stay for the next run of this process (killed at
        exit, or by :func:`shutdown`)."""
        self._mine.clear()


#: Libraries already imported here that backends run in workers; the fork server imports them once.
def _preload(backends: list) -> None:
    """Before the fork server first starts: have it import the libraries of these backends, and those of
    the other built-in backends that this process has already imported (it will likely run them too)."""
    shared = _shared()
    if shared.preloaded or shared.context.get_start_method() != "forkserver":
        return
    shared.preloaded = True
    modules = ["difftest.isolation", "difftest.backends"]
    from ..backends import all_backends

    known = {m for b in all_backends().values() for m in (getattr(b, "preload", ()) or ())}
    wanted = [m for b in backends for m in (getattr(b, "preload", ()) or ())]
    wanted += sorted(m for m in known if m in sys.modules)
    modules += [m for m in dict.fromkeys(wanted) if m not in modules]
    shared.context.set_forkserver_preload(modules)


def _recipe(backend) -> tuple | None:
    """How a worker rebuilds ``backend``: by its registered name where that gives the same kind of
    backend, else from a pickle; None where neither works."""
    from ..backends import get_backend

    try:
        if type(get_backend(backend.name)) is type(backend):
            return ("name", backend.name)
    except DifftestError:
        pass
    try:
        data = pickle.dumps(backend)
    except Exception:
        return None
    return None if b"__main__" in data else ("pickle", data)  # a worker has no __main__ of the run
