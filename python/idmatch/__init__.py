"""idmatch for Python: the partner's side of privacy-preserving identifier matching.

This package is a thin layer over the idmatch Rust crate, the same code the
``idmatch`` command line and the owner's server run: normalization, keyed tokens
and the partner's gRPC client are the crate's, never reimplemented here, so both
sides of a match turn the same person into the same bytes.

- :func:`normalize_email`, :func:`normalize_phone`: one identifier, as
  ``idmatch normalize`` does it.
- :func:`tokens`, :func:`write_tokens`: the hashed export of ``idmatch tokens``.
- :func:`match`: a match against the owner's ``idmatch serve``, as
  ``idmatch match --server`` runs it.
- :class:`Key`: a campaign key whose ``repr`` never shows it.
- :mod:`idmatch.spark` (``pip install 'idmatch[spark]'``): a sharded match with one
  Spark task per shard, and an owner's shard files, on Apache Spark.

Records are an iterable of dicts (keys are column names), of tuples with
``columns=[...]``, or a pandas DataFrame (pandas is optional), or a CSV/TSV file
(``input=``). Columns are found by header name as in the CLI (``id``, ``email``,
``phone``, ``country``/``region``, ...; ``id_col=`` etc. override). Records given
as objects are written to a private temporary file (mode 0600 in a 0700
directory, removed on return) and read by the crate's reader; errors then call
them ``records``, line 1 being the header.

Long work (reading, tokenizing, the match itself) runs without the GIL. Every
failure is an :class:`IdmatchError` (see :mod:`idmatch._errors`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import _native
from ._errors import (
    CredentialsError,
    IdmatchError,
    InputError,
    KeyFileError,
    KeyMismatchError,
    LimitError,
    MatchError,
    NormalizationError,
    OutputError,
    PermissionDeniedError,
    ProtocolError,
    TlsError,
    UnreachableError,
    UsageError,
)
from ._native import PROFILES, REVEALS, Key, normalize_email, normalize_phone

if TYPE_CHECKING:  # pragma: no cover
    import pandas

__version__ = "0.1.0"

StrPath = Union[str, "os.PathLike[str]"]
#: Records: dicts, tuples (with ``columns=``) or a pandas DataFrame.
Records = Union[Iterable[Any], "pandas.DataFrame"]
#: A campaign key: a :class:`Key` or its 32 raw bytes.
KeyLike = Union[Key, bytes]
#: One row of the hashed export: ``(record_id, kind, token_hex)``.
TokenRow = Tuple[str, str, str]


def _is_dataframe(value: Any) -> bool:
    # Without importing pandas: it stays optional.
    return type(value).__module__.split(".")[0] == "pandas" and hasattr(value, "itertuples")


def _records(records: Optional[Records], columns: Optional[Sequence[str]]) -> Tuple[Any, Optional[List[str]]]:
    """A DataFrame becomes tuples and its column names (missing values → blank)."""
    names = None if columns is None else [str(c) for c in columns]
    if records is None or not _is_dataframe(records):
        return records, names
    frame = records if names is None else records[names]
    names = [str(c) for c in frame.columns]
    frame = frame.astype(object).where(frame.notna(), None)
    return frame.itertuples(index=False, name=None), names


def _col_list(value: Union[None, str, Sequence[str]]) -> List[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def tokens(
    key: Optional[KeyLike] = None,
    records: Optional[Records] = None,
    *,
    key_file: Optional[StrPath] = None,
    input: Optional[StrPath] = None,
    columns: Optional[Sequence[str]] = None,
    profile: str = "idmatch-v1",
    region: Optional[str] = None,
    id_col: Optional[str] = None,
    email_col: Union[None, str, Sequence[str]] = None,
    phone_col: Union[None, str, Sequence[str]] = None,
    region_col: Optional[str] = None,
    optouts: Optional[StrPath] = None,
    skip_bad_list_rows: bool = False,
    progress: bool = False,
) -> List[TokenRow]:
    """The hashed export: the rows ``idmatch tokens`` writes, as tuples.

    Returns ``[(record_id, kind, token_hex), ...]``, one per distinct identifier of
    each record, in the CLI's order; ``token_hex`` is
    ``HMAC-SHA256(key, kind ":" normalized)``. For a DataFrame:
    ``pandas.DataFrame(rows, columns=["record_id", "kind", "token_hex"])``.

    Give the key as ``key`` (:class:`Key` or 32 bytes) or ``key_file``, and the
    records as ``records`` or ``input`` (a CSV/TSV path). ``region`` is the default
    region of national-format phone numbers (as ``--region``); ``optouts`` leaves
    out the records on an opt-out list (which fails closed unless
    ``skip_bad_list_rows``). Invalid identifiers are skipped and counted, as in the
    CLI; a file that cannot be read raises :class:`InputError`.
    """
    records, names = _records(records, columns)
    return _native._tokens(
        key,
        records,
        key_file=key_file,
        input=input,
        columns_=names,
        profile=profile,
        region=region,
        id_col=id_col,
        email_col=_col_list(email_col),
        phone_col=_col_list(phone_col),
        region_col=region_col,
        optouts=optouts,
        skip_bad_list_rows=skip_bad_list_rows,
        progress=progress,
    )


def write_tokens(
    key: Optional[KeyLike] = None,
    records: Optional[Records] = None,
    *,
    output: StrPath,
    key_file: Optional[StrPath] = None,
    input: Optional[StrPath] = None,
    columns: Optional[Sequence[str]] = None,
    profile: str = "idmatch-v1",
    region: Optional[str] = None,
    id_col: Optional[str] = None,
    email_col: Union[None, str, Sequence[str]] = None,
    phone_col: Union[None, str, Sequence[str]] = None,
    region_col: Optional[str] = None,
    optouts: Optional[StrPath] = None,
    skip_bad_list_rows: bool = False,
    progress: bool = False,
) -> Dict[str, Any]:
    """Writes the hashed export to ``output`` as ``idmatch tokens --output`` does.

    The same bytes as the CLI: a ``record_id,kind,token_hex`` CSV and its
    ``<output>.meta.json`` sidecar (format, version, profile, row count), both mode
    0600 and appearing only once complete. Returns the sidecar's content. Arguments
    as :func:`tokens`.
    """
    records, names = _records(records, columns)
    return _native._tokens(
        key,
        records,
        key_file=key_file,
        input=input,
        columns_=names,
        output=output,
        profile=profile,
        region=region,
        id_col=id_col,
        email_col=_col_list(email_col),
        phone_col=_col_list(phone_col),
        region_col=region_col,
        optouts=optouts,
        skip_bad_list_rows=skip_bad_list_rows,
        progress=progress,
    )


@dataclass(frozen=True, repr=False)
class MatchResult:
    """What the partner learned from a match.

    ``matches`` holds ``(record_id, kinds)`` for each of the partner's records that
    matched (``kinds`` is ``("email",)``, ``("phone",)`` or ``("email", "phone")``),
    in input order, in ``partner`` and ``both`` modes; it is ``None`` when the
    reveal mode does not tell the partner (``owner``, ``count``). ``intersection``
    is the number of distinct matching identifiers where the partner learns it.
    ``suppression_list`` holds how the suppression list was read (rows, records,
    ``bad_rows`` and ``rejected`` by reason, ...), or ``None`` without one.
    """

    reveal: str
    protocol: str
    partner_set_size: int
    owner_set_size: int
    blinded: int
    intersection: Optional[int]
    matched_records: Optional[int]
    suppressed_records: int
    suppression_list: Optional[Dict[str, Any]]
    matches: Optional[Tuple[Tuple[str, Tuple[str, ...]], ...]]

    @property
    def matched_ids(self) -> Optional[List[str]]:
        """The matched record ids, in input order (``None`` if not revealed)."""
        return None if self.matches is None else [record_id for record_id, _ in self.matches]

    def kinds(self) -> Optional[Dict[str, Tuple[str, ...]]]:
        """``{record_id: kinds}`` for the matched records (``None`` if not revealed)."""
        return None if self.matches is None else dict(self.matches)

    def summary(self) -> Dict[str, Any]:
        """Everything but the matched ids: sizes, intersection, counts."""
        return {
            "reveal": self.reveal,
            "protocol": self.protocol,
            "partner_set_size": self.partner_set_size,
            "owner_set_size": self.owner_set_size,
            "blinded": self.blinded,
            "intersection": self.intersection,
            "matched_records": self.matched_records,
            "suppressed_records": self.suppressed_records,
            "suppression_list": self.suppression_list,
        }

    def to_dataframe(self) -> "pandas.DataFrame":
        """The matches as a DataFrame ``record_id, matched_kinds`` (needs pandas),
        the same columns as the CLI's output file."""
        import pandas

        rows = [(record_id, ";".join(kinds)) for record_id, kinds in self.matches or ()]
        return pandas.DataFrame(rows, columns=["record_id", "matched_kinds"])

    def __repr__(self) -> str:
        # Counts only: record ids are the partner's data, not for logs.
        fields = ", ".join(f"{k}={v!r}" for k, v in self.summary().items() if k != "suppression_list")
        return f"MatchResult({fields})"


def match(
    server: str,
    campaign: str,
    *,
    key: Optional[KeyLike] = None,
    key_file: Optional[StrPath] = None,
    records: Optional[Records] = None,
    input: Optional[StrPath] = None,
    columns: Optional[Sequence[str]] = None,
    output: Optional[StrPath] = None,
    reveal: str = "partner",
    protocol: str = "auto",
    token: Optional[str] = None,
    token_file: Optional[StrPath] = None,
    ca: Optional[StrPath] = None,
    cert: Optional[StrPath] = None,
    client_key: Optional[StrPath] = None,
    region: Optional[str] = None,
    profile: str = "idmatch-v1",
    suppress: Optional[StrPath] = None,
    skip_bad_list_rows: bool = False,
    id_col: Optional[str] = None,
    email_col: Union[None, str, Sequence[str]] = None,
    phone_col: Union[None, str, Sequence[str]] = None,
    region_col: Optional[str] = None,
    idle_timeout: float = 300.0,
    progress: bool = False,
) -> MatchResult:
    """Runs the partner's side of a match against the owner's ``idmatch serve``.

    The same client as ``idmatch match --server``: ``server`` is
    ``https://host:port`` (``http://`` only to a loopback host, a test server;
    anything else raises :class:`UsageError` before any record is read), ``ca``
    the CA bundle (PEM) that signed the server's certificate (without it, the
    system's trust store), and the partner
    authenticates with a bearer ``token`` (or ``token_file``) or a client
    certificate (``cert`` and ``client_key``, PEM). The campaign key is ``key``
    (:class:`Key` or 32 bytes) or ``key_file``; the records ``records`` or
    ``input``. ``reveal`` is ``partner`` (default), ``both``, ``owner`` or
    ``count``; ``protocol`` the matching engine, ``auto`` (default: the fastest
    the owner's campaign allows for the mode), ``ecdh`` or ``oprf`` (not with
    ``count``);
    ``suppress`` a suppression list applied before anything is blinded
    (a list with unreadable rows refuses the match before connecting, unless
    ``skip_bad_list_rows``, which skips and counts them and warns, as the CLI does);
    ``output``, if given, also receives the CLI's ``record_id,matched_kinds`` file.

    Raises :class:`UnreachableError`, :class:`TlsError`,
    :class:`CredentialsError`, :class:`PermissionDeniedError`,
    :class:`LimitError`, :class:`KeyMismatchError`, :class:`ProtocolError` (the
    CLI's exit codes 3 to 8 and 1), :class:`KeyFileError`, :class:`InputError` or
    :class:`UsageError`.
    """
    records, names = _records(records, columns)
    result = _native._match(
        server,
        campaign,
        key=key,
        key_file=key_file,
        records=records,
        input=input,
        columns_=names,
        output=output,
        reveal=reveal,
        protocol=protocol,
        token=token,
        token_file=token_file,
        ca=ca,
        cert=cert,
        client_key=client_key,
        region=region,
        profile=profile,
        suppress=suppress,
        skip_bad_list_rows=skip_bad_list_rows,
        id_col=id_col,
        email_col=_col_list(email_col),
        phone_col=_col_list(phone_col),
        region_col=region_col,
        idle_timeout=idle_timeout,
        progress=progress,
    )
    matches = result.pop("matches")
    stats = result["suppression_list"]
    if stats:
        bad_rows, rejected = sum(stats["bad_rows"].values()), sum(stats["rejected"].values())
        if bad_rows or rejected:
            # The CLI's warning: what skip_bad_list_rows skipped suppresses nobody.
            warnings.warn(
                f"suppression list: skipped {bad_rows} bad rows and {rejected} rejected identifiers "
                "(skip_bad_list_rows); they suppress nobody",
                stacklevel=2,
            )
    return MatchResult(matches=None if matches is None else tuple(matches), **result)


__all__ = [
    "PROFILES",
    "REVEALS",
    "Key",
    "MatchResult",
    "match",
    "normalize_email",
    "normalize_phone",
    "tokens",
    "write_tokens",
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
