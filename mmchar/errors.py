"""The one error family of mmchar.

Library code raises these with the bad value and the fix in the message; the CLI prints the message as one
line and exits 1 (a traceback only with ``--debug`` or ``MMCHAR_DEBUG=1``).
"""

from __future__ import annotations

from collections.abc import Iterable


class MmcharError(Exception):
    """Base of every error mmchar reports to a user."""


class UnknownNameError(MmcharError):
    """A name (workload, preset, backend, stage ...) that is not in its registry."""

    def __init__(self, kind: str, name: str, valid: Iterable[str], context: str = ""):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        kinds = kind + ("es" if kind.endswith(("s", "x", "ch", "sh")) else "s")
        super().__init__(f"unknown {kind} {name!r}{context}; valid {kinds}{context}: {', '.join(self.valid) or '(none)'}")


class InvalidParameterError(MmcharError):
    """A parameter value the workload cannot take (height not divisible by the VAE factor, frames < 1 ...)."""


class BackendUnavailableError(MmcharError):
    """The attention backend cannot run on this device / installation."""


class BackendUnsupportedError(MmcharError):
    """The attention backend cannot take some attention layers of the model (head dim, mask, dtype ...)."""


class WeightsError(MmcharError):
    """A local checkpoint or pipeline folder that cannot be read."""


class DeviceUnavailableError(MmcharError):
    """The requested device does not exist on this machine."""


class SchemaMismatchError(MmcharError):
    """A run folder written by another schema version."""


class TraceError(MmcharError):
    """A profiler trace that cannot be parsed (missing, truncated, not a PyTorch trace)."""


class RunNotFoundError(MmcharError):
    """A path given as a run or store that holds no run."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit, `kill`), raised by the CLI's handler: every path that cleans up after
    Ctrl-C (temporary traces, a sweep's running point and its partial summary) cleans up after it too; it killed
    the process outright, leaving temporary traces and a sweep's child behind."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): what one-line errors show."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
