"""The error hierarchy. Every message says what was wrong and what to do about it."""

from __future__ import annotations


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
