"""The error hierarchy. Every message says what was wrong and what to do about it."""

from __future__ import annotations

import errno



#: What a ``difftest`` command exits with: nothing to report, a finding, a usage, input or
#: environment error, an interrupt.
EXIT_OK, EXIT_FINDING, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

class DifftestError(Exception):
    """Base class of every error difftest raises on purpose (CLI exit code 2)."""


class InvalidCase(DifftestError):
    """A case (arrays, geometry, format, eps) is outside what the model or the tool accepts."""


class NotRepresentable(InvalidCase):
    """A case value is not representable in the format it is judged in."""


class CaseFileError(InvalidCase):
    """A case file is missing, corrupt or incomplete."""


class UnknownFormat(DifftestError):
    """A format name that is not one of the presets."""


class UnknownBackend(DifftestError):
    """A backend name that no built-in backend or plugin provides."""


class BackendUnavailable(DifftestError):
    """The backend exists but cannot run here (missing package, no device)."""


class UnsupportedFormat(DifftestError):
    """The vectorised engine cannot emulate this format; use the exact (scalar) engine."""


class BackendFailed(DifftestError):
    """A backend run in a worker process (:mod:`difftest.isolation`) did not return gradients.

    ``str(self)`` is the verdict's message as it should read (``crashed: SIGABRT``, ``timed out
    after 5 s``, ``ValueError: ...``); ``details`` is what explains it: the worker's traceback, or
    the last lines the worker printed before it died."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


class BackendCrashed(BackendFailed):
    """The worker died while it ran the backend: a signal (``crashed: SIGSEGV``), an abort, an exit."""


class BackendTimedOut(BackendFailed):
    """The backend did not return within the time limit; its worker was killed."""


class BackendRaised(BackendFailed):
    """The backend raised a Python exception in its worker (``TypeName: message``, as if it had run here)."""


class MalformedResults(DifftestError):
    """A result directory holds a file, line, field or path that difftest will not read (``FILE:LINE: why``)."""


class BudgetExhausted(BaseException):
    """A campaign's time is up: raised inside its search (and by a backend call it abandons) to end it
    on time. A BaseException, so that hypothesis and ``except Exception`` let it through."""


#: What to do about an error of the operating system, by its errno.
_OS_HINTS = {
    errno.ENOTDIR: "a part of that path is a file, not a directory; choose another path",
    errno.EACCES: "you may not write there; fix the permissions or choose another path",
    errno.EPERM: "you may not write there; fix the permissions or choose another path",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.ENOSPC: "the disk is full; free some space or choose another path",
    errno.EFBIG: "the file grew beyond what this process may write (ulimit -f) or the file system holds; raise "
                 "the limit, free space or choose another path",
    errno.EDQUOT: "the disk quota is exceeded; free some space or choose another path",
    errno.EEXIST: "something is in the way; remove it or choose another path",
    errno.EISDIR: "it is a directory; give a file path",
    errno.ENOENT: "check that the path exists",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
}


def os_reason(exc: OSError) -> str:
    """``what went wrong; what to do`` for an error of the operating system."""
    what = exc.strerror or str(exc) or type(exc).__name__
    return f"{what}; {_OS_HINTS.get(exc.errno, 'check the path and its permissions, then try again')}"


def os_error_text(exc: OSError) -> str:
    """``PATH: what went wrong; what to do``."""
    where = "" if exc.filename is None else f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "") + ": "
    return where + os_reason(exc)
