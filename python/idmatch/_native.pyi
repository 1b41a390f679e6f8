"""Type hints of the compiled extension (see ``idmatch/__init__.py`` for the API)."""

import os
import pathlib
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

StrPath = Union[str, "os.PathLike[str]"]

PROFILES: List[str]
REVEALS: List[str]

class Key:
    """A 32-byte campaign key; its repr never shows it and it cannot be pickled."""

    @staticmethod
    def load(path: StrPath) -> Key: ...
    @staticmethod
    def generate_to_file(path: StrPath) -> Key: ...
    @staticmethod
    def from_bytes(data: bytes) -> Key: ...
    @staticmethod
    def from_hex(text: str) -> Key: ...
    @property
    def path(self) -> Optional[pathlib.Path]: ...

def normalize_email(value: str, profile: str = "idmatch-v1") -> str: ...
def normalize_phone(value: str, region: Optional[str] = None, profile: str = "idmatch-v1") -> str: ...
def _tokens(
    key: Union[Key, bytes, None] = None,
    records: Optional[Iterable[Any]] = None,
    *,
    key_file: Optional[StrPath] = None,
    input: Optional[StrPath] = None,
    columns_: Optional[List[str]] = None,
    output: Optional[StrPath] = None,
    profile: str = "idmatch-v1",
    region: Optional[str] = None,
    id_col: Optional[str] = None,
    email_col: List[str] = ...,
    phone_col: List[str] = ...,
    region_col: Optional[str] = None,
    optouts: Optional[StrPath] = None,
    skip_bad_list_rows: bool = False,
    progress: bool = False,
) -> Any: ...
def _match(
    server: str,
    campaign: str,
    *,
    key: Union[Key, bytes, None] = None,
    key_file: Optional[StrPath] = None,
    records: Optional[Iterable[Any]] = None,
    input: Optional[StrPath] = None,
    columns_: Optional[List[str]] = None,
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
    email_col: List[str] = ...,
    phone_col: List[str] = ...,
    region_col: Optional[str] = None,
    idle_timeout: float = 300.0,
    progress: bool = False,
) -> Dict[str, Any]: ...
#: A variable-length Arrow column by its buffers: (validity, offsets, data, offset, length, wide).
_VarColumn = Tuple[Optional[bytes], bytes, bytes, int, int, bool]

class ShardReader:
    """One Spark task's reader of Arrow batches of records into keyed-token entries."""

    def __init__(
        self,
        columns: List[str],
        *,
        shards: int,
        partition_keys: List[int],
        key: Optional[bytes] = None,
        key_file: Optional[StrPath] = None,
        profile: str = "idmatch-v1",
        region: Optional[str] = None,
        id_col: Optional[str] = None,
        email_col: List[str] = ...,
        phone_col: List[str] = ...,
        region_col: Optional[str] = None,
        filter_list: Optional[StrPath] = None,
        skip_bad_list_rows: bool = False,
    ) -> None: ...
    def read(self, values: List[_VarColumn], length: int, first_ordinal: int, first_position: int) -> Dict[str, Any]: ...

def _match_shard(
    server: str,
    campaign: str,
    kinds: bytes,
    tokens: _VarColumn,
    *,
    run_id: bytes,
    shard_index: int,
    shard_count: int,
    run_set_size: int,
    key: Optional[bytes] = None,
    key_file: Optional[StrPath] = None,
    reveal: str = "partner",
    protocol: str = "auto",
    token: Optional[str] = None,
    token_file: Optional[StrPath] = None,
    ca: Optional[StrPath] = None,
    cert: Optional[StrPath] = None,
    client_key: Optional[StrPath] = None,
    profile: str = "idmatch-v1",
    idle_timeout: float = 300.0,
) -> Dict[str, Any]: ...

class ShardFileWriter:
    """One shard file written from batches of entries, renamed into place by finish()."""

    def __init__(
        self,
        dir: StrPath,
        *,
        shards: int,
        index: int,
        partition_offsets: List[int],
        attempt: int = 0,
        key: Optional[bytes] = None,
        key_file: Optional[StrPath] = None,
        profile: str = "idmatch-v1",
    ) -> None: ...
    def push(self, length: int, part: bytes, ordinal: bytes, kind: bytes, tokens: _VarColumn, ids: _VarColumn) -> None: ...
    def finish(self) -> int: ...

class ShardDir:
    """An output directory of shard files and its private staging directory."""

    def __init__(self, out_dir: StrPath) -> None: ...
    @property
    def staging(self) -> pathlib.Path: ...
    def commit(self, shards: int) -> List[pathlib.Path]: ...
    def discard(self) -> None: ...
