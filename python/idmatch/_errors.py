"""The exceptions of idmatch: one class per category of failure of the CLI.

Every exception is an :class:`IdmatchError`. ``exit_code`` is the exit status
``idmatch`` gives the same failure (``idmatch match --server``: 3 unreachable,
4 TLS, 5 credentials, 6 permission, 7 limits, 8 campaign key mismatch; 2 usage;
1 anything else).

Messages are the CLI's messages: they name files, lines, columns and reasons, and
never hold key bytes, bearer tokens or raw identifiers.
"""

from __future__ import annotations


class IdmatchError(Exception):
    """Base class of every idmatch failure."""

    exit_code: int = 1


class UsageError(IdmatchError, ValueError):
    """A bad argument: unknown profile, region or reveal mode, conflicting options."""

    exit_code = 2


class NormalizationError(IdmatchError, ValueError):
    """A value that does not normalize.

    ``reason`` is the reject code the CLI prints (``missing_at``,
    ``letters_in_number``, ...); ``kind`` is ``"email"`` or ``"phone"``. The value
    itself is not part of the message.
    """

    def __init__(self, message: str, *, reason: str, kind: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.kind = kind


class KeyFileError(IdmatchError):
    """A key that cannot be used: missing or malformed key file, a key file that
    other users can read (``chmod 600`` it), or key bytes of the wrong length."""


class InputError(IdmatchError, ValueError):
    """Records, an input file, a suppression or opt-out list, or a CA, certificate
    or token file that cannot be read; the message names the line and reason."""


class OutputError(IdmatchError):
    """An output (or a private temporary file) that could not be written."""


class MatchError(IdmatchError):
    """The match with the owner's server failed. Raised as itself only when the
    match could not start on this side (no async runtime, no randomness); the
    subclasses below are the CLI's categories."""


class UnreachableError(MatchError):
    """The server cannot be reached (exit code 3)."""

    exit_code = 3


class TlsError(MatchError):
    """TLS could not be set up or the server's certificate was refused (exit code 4)."""

    exit_code = 4


class CredentialsError(MatchError):
    """The server refused the token or client certificate (exit code 5)."""

    exit_code = 5


class PermissionDeniedError(MatchError):
    """This partner may not use that campaign or reveal mode (exit code 6)."""

    exit_code = 6


class LimitError(MatchError):
    """A limit of the server was reached: set size, daily budget, concurrent
    matches (exit code 7)."""

    exit_code = 7


class KeyMismatchError(MatchError):
    """The owner's campaign key is not the partner's: the server compared the key
    fingerprints and refused the match before any identifier was sent (exit code 8)."""

    exit_code = 8


class ProtocolError(MatchError):
    """The server ended the match (profile mismatch, idle timeout, ...) or the
    exchange broke the protocol."""


__all__ = [
    "IdmatchError",
    "UsageError",
    "NormalizationError",
    "KeyFileError",
    "InputError",
    "OutputError",
    "MatchError",
    "UnreachableError",
    "TlsError",
    "CredentialsError",
    "PermissionDeniedError",
    "LimitError",
    "KeyMismatchError",
    "ProtocolError",
]
