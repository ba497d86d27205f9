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
