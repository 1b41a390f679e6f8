"""idmatch on Apache Spark: a partner's sharded match, and an owner's shard files.

``pip install 'idmatch[spark]'`` adds PySpark, PyArrow and pandas (imported only
when these functions run; PySpark's Arrow functions need both). Every executor
must be able to ``import idmatch`` (install the package in the executors' Python,
and point ``PYSPARK_PYTHON`` at it), and reach the owner's server for
:func:`match`.

- :func:`match`: the partner's side of one match as a *run* of ``shards`` shard
  streams (docs/PROTOCOL.md §13.4), one Spark task per shard, each running the
  crate's client for its shard against the owner's ``idmatch serve``. Returns the
  matched records as a DataFrame ``record_id, matched_kinds`` (the rows of the
  unsharded ``idmatch.match``, in the DataFrame's order) and the run's summary.
- :func:`write_shards`: the owner's (or anyone's) table split into the shard files
  ``idmatch shard`` writes (docs/PROTOCOL.md §13.2), byte for byte.

How: every step that touches rows works on Arrow batches (``mapInArrow``), never
one Python object per row. Each input partition's batches go, column buffers and
all, to the crate (``idmatch._native.ShardReader``), which normalizes and
tokenizes them (opt-outs or suppressions applied there, before any shard) and
returns Arrow columns: shard, keyed token, kind, record id and position. Only
those cross Spark's shuffle, never emails or phone numbers. The shuffle is
``repartition(shards, pkey)``, where ``pkey`` is, per shard, an integer that
Spark's hash partitioning sends to the partition of the shard's number (checked
in every shard task), so one task sees one whole shard; its output is cached and
serves every later step. Counting (each shard's distinct tokens, within its
partition: the run's size), record id uniqueness and the merge of the matches are
Spark SQL in the JVM. Memory per task: a reader holds
``_BATCH_ROWS`` rows at a time, a shard task its whole shard (about 80 bytes per
identifier as Arrow columns, plus the client's working set), so choose ``shards``
for the executors' memory. Tokens are keyed hashes, still personal data: keep the
shuffle, cache and spill directories private (docs/PRIVACY.md, "Sharding and
Spark").

A run is all or nothing, and not idempotent: the owner takes each shard of a run
once. A shard task that fails before it opens its stream (reading its shard from
the shuffle, a lost executor) is simply retried by Spark (``spark.task.maxFailures``).
A task that fails after opening its stream, or that Spark runs speculatively,
opens its shard a second time, which the owner refuses (``run-shard-repeated``),
failing the whole run: :func:`match` then raises, and a new call (a new run id)
starts again. Turn speculation off (``spark.speculation=false``, the default;
:func:`match` refuses to run with it on).
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from . import _errors, _native
from ._errors import IdmatchError, MatchError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow
    import pyspark.sql

StrPath = Union[str, "os.PathLike[str]"]

#: Rows of a partition read by the crate at once (Spark's Arrow batches, 10,000
#: rows by default, are gathered up to this).
_BATCH_ROWS = 100_000

#: Test-only fault injection, never set in production: ``(shard, attempts)`` makes
#: the task of that shard raise a MatchError on its Spark attempts numbered below
#: ``attempts`` (0 is the first), before it opens its stream. It is read in the
#: driver when :func:`match` is called and travels with the tasks, so only code
#: that assigns this attribute in the driver's process can set it.
_FAIL_SHARD_BEFORE_STREAM: Optional[Tuple[int, int]] = None
#: Test-only, likewise: the task of that shard raises after its stream has ended
#: (as a task does whose executor dies once the shard is matched).
_FAIL_SHARD_AFTER_STREAM: Optional[Tuple[int, int]] = None

#: The entries the readers emit: one row per identifier (``shard`` >= 0), and per
#: input partition one row of counts (``shard`` -1: ``ordinal`` its records,
#: ``record_id`` the counts as JSON).
_ENTRIES = "shard int, pkey int, part int, pos long, ordinal long, kind byte, token binary, record_id string"
#: The shard tasks' output: one row per matched entry (``part`` >= 0, ``kinds`` the
#: mask of kinds matched), and per shard one row of its figures (``part`` -1,
#: ``record_id`` the figures as JSON).
_RESULTS = "shard int, part int, ordinal long, record_id string, kinds byte"
#: Kind masks (1 << code, codes as in shard files: 0 email, 1 phone) as the CLI
#: writes ``matched_kinds``.
_KINDS_SQL = "CASE kinds WHEN 1 THEN 'email' WHEN 2 THEN 'phone' ELSE 'email;phone' END"


def _pyspark() -> Any:
    try:
        import pyspark
        from pyspark import StorageLevel  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise UsageError("idmatch.spark needs PySpark: pip install 'idmatch[spark]'") from e
    try:
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise UsageError(
            f"idmatch.spark needs PyArrow and pandas for Spark's Arrow batches ({e}): pip install 'idmatch[spark]'"
        ) from e
    return pyspark


def _key_args(key: Any, key_file: Optional[StrPath]) -> Dict[str, Any]:
    """The campaign key as the executors receive it: a key file path (which every
    executor must be able to read), or 32 raw bytes (sent with each task)."""
    if key is not None and key_file is not None:
        raise UsageError("give key= or key_file=, not both")
    if key_file is not None:
        return {"key_file": os.fspath(key_file)}
    if isinstance(key, _native.Key):
        if key.path is None:
            raise UsageError(
                "a Key made from bytes cannot be sent to Spark's executors: pass key_file= (a path every executor "
                "can read) or key= as 32 bytes"
            )
        return {"key_file": os.fspath(key.path)}
    if isinstance(key, (bytes, bytearray)):
        return {"key": bytes(key)}
    raise UsageError("a campaign key is needed: key_file= (a path every executor can read), key=Key or key=bytes")


def _shards(shards: Any) -> int:
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= 4096:
        raise UsageError(f"shards must be an integer from 1 to 4096, not {shards!r}")
    return shards


def _col_list(value: Union[None, str, Sequence[str]]) -> List[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _add_counts(total: Dict[str, Any], part: Dict[str, Any]) -> None:
    """Adds the numbers of `part` into `total`, recursively (the reader's counts)."""
    for name, value in part.items():
        if isinstance(value, dict):
            _add_counts(total.setdefault(name, {}), value)
        elif isinstance(value, bool):
            total[name] = total.get(name, True) and value
        elif isinstance(value, int):
            total[name] = total.get(name, 0) + value


def _murmur3_int(value: int, seed: int = 42) -> int:
    """Spark's ``hash`` of one int column (Murmur3 x86 32-bit, seed 42), as its
    hash partitioning computes it, a signed 32-bit integer."""
    mask = 0xFFFFFFFF

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & mask

    k1 = (value & mask) * 0xCC9E2D51 & mask
    k1 = rotl(k1, 15) * 0x1B873593 & mask
    h1 = rotl(seed ^ k1, 13)
    h1 = (h1 * 5 + 0xE6546B64) & mask
    h1 ^= 4
    h1 ^= h1 >> 16
    h1 = h1 * 0x85EBCA6B & mask
    h1 ^= h1 >> 13
    h1 = h1 * 0xC2B2AE35 & mask
    h1 ^= h1 >> 16
    return h1 - (1 << 32) if h1 & 0x80000000 else h1


def _partition_keys(shards: int) -> List[int]:
    """For each shard `s`, the smallest non-negative int that Spark's
    ``repartition(shards, col)`` sends to partition `s` (``pmod(hash(k), shards)``).
    Every shard task checks that it got its shard's rows only."""
    keys: List[Optional[int]] = [None] * shards
    missing, k = shards, 0
    while missing:
        s = _murmur3_int(k) % shards
        if keys[s] is None:
            keys[s] = k
            missing -= 1
        k += 1
    return [int(k) for k in keys if k is not None]


def _var_column(array: Any) -> Tuple[Optional[bytes], bytes, bytes, int, int, bool]:
    """A string or binary Arrow array (or chunked array) as the crate takes it:
    ``(validity, offsets, data, offset, length, wide)``."""
    import pyarrow as pa

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    t = array.type
    wide = pa.types.is_large_string(t) or pa.types.is_large_binary(t)
    if not (wide or pa.types.is_string(t) or pa.types.is_binary(t)):
        raise UsageError(f"an Arrow column of {t} where strings were expected")
    validity, offsets, data = array.buffers()[:3]
    return (
        None if validity is None or array.null_count == 0 else validity.to_pybytes(),
        bytes(8 if wide else 4) if offsets is None else offsets.to_pybytes(),
        b"" if data is None else data.to_pybytes(),
        array.offset,
        len(array),
        wide,
    )


def _fixed_bytes(array: Any, width: int) -> bytes:
    """The values' bytes of a fixed-width Arrow array without nulls."""
    import pyarrow as pa

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.null_count:
        raise MatchError("a null where Spark's columns have none")
    return array.buffers()[1].slice(array.offset * width, len(array) * width).to_pybytes()


def _array(pa: Any, type_: Any, n: int, *buffers: bytes) -> Any:
    return pa.Array.from_buffers(type_, n, [None, *(pa.py_buffer(b) for b in buffers)])


def _as_strings(df: "pyspark.sql.DataFrame") -> "pyspark.sql.DataFrame":
    """The DataFrame with every column a string (others cast by Spark: what the
    crate's reader reads is text)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    if all(isinstance(f.dataType, StringType) for f in df.schema.fields):
        return df
    quoted = ["`" + f.name.replace("`", "``") + "`" for f in df.schema.fields]
    return df.select([F.col(q).cast("string").alias(f.name) for q, f in zip(quoted, df.schema.fields)])


def _tokenize(
    df: "pyspark.sql.DataFrame", shards: int, key: Dict[str, Any], read: Dict[str, Any]
) -> Tuple["pyspark.sql.DataFrame", Dict[str, Any]]:
    """Each partition of `df` read by the crate, in Arrow batches, and shuffled by
    shard: the persisted entries (schema ``_ENTRIES``, partition `s` holding shard
    `s`, and the rows of counts, ``shard`` -1, somewhere: filter them out;
    unpersist when done), and the partitions' counts summed, with ``records`` per
    partition in order. One pass of the crate and one shuffle serve every later
    step."""
    pyspark = _pyspark()
    from pyspark.sql import functions as F

    columns = [str(c) for c in df.columns]
    batch_rows = _BATCH_ROWS
    partition_keys = _partition_keys(shards)

    def tokenize(batches: Iterator["pyarrow.RecordBatch"]) -> Iterator["pyarrow.RecordBatch"]:
        import pyarrow as pa
        from pyspark import TaskContext

        part = TaskContext.get().partitionId()
        try:
            reader = _native.ShardReader(columns, shards=shards, partition_keys=partition_keys, **key, **read)
        except IdmatchError as e:
            raise type(e)(f"partition {part}: {e}") from None
        schema = pa.schema(
            [("shard", pa.int32()), ("pkey", pa.int32()), ("part", pa.int32()), ("pos", pa.int64()),
             ("ordinal", pa.int64()), ("kind", pa.int8()), ("token", pa.binary()), ("record_id", pa.string())]
        )
        state = {"records": 0, "position": 0, "rows": 0}
        totals: Dict[str, Any] = {}

        def run(table: "pyarrow.Table") -> "pyarrow.RecordBatch":
            rows = table.num_rows
            try:
                out = reader.read([_var_column(c) for c in table.columns], rows, state["records"], state["position"])
            except IdmatchError as e:
                # The crate numbers the batch's rows from line 2 (line 1 its header).
                where = f"partition {part}, its rows {state['rows']} to {state['rows'] + rows - 1} as lines 2 on"
                raise type(e)(f"{where}: {e}") from None
            state["rows"] += rows
            state["records"] += out["records"]
            n = out["n"]
            state["position"] += n
            _add_counts(totals, {k: out[k] for k in ("records", "excluded_records", "has_id_column", "stats")})
            return pa.RecordBatch.from_arrays(
                [
                    _array(pa, pa.int32(), n, out["shard"]),
                    _array(pa, pa.int32(), n, out["pkey"]),
                    _array(pa, pa.int32(), n, part.to_bytes(4, sys.byteorder, signed=True) * n),
                    _array(pa, pa.int64(), n, out["pos"]),
                    _array(pa, pa.int64(), n, out["ordinal"]),
                    _array(pa, pa.int8(), n, out["kind"]),
                    _array(pa, pa.binary(), n, out["token_offsets"], out["token_data"]),
                    _array(pa, pa.string(), n, out["id_offsets"], out["id_data"]),
                ],
                schema=schema,
            )

        pending: List["pyarrow.RecordBatch"] = []
        pending_rows = 0
        called = False
        for batch in batches:
            pending.append(batch)
            pending_rows += batch.num_rows
            # In batches of batch_rows, so that a large partition is never held whole.
            while pending_rows >= batch_rows:
                table = pa.Table.from_batches(pending)
                yield run(table.slice(0, batch_rows))
                called = True
                rest = table.slice(batch_rows)
                pending, pending_rows = rest.to_batches(), rest.num_rows
        if pending_rows or not called:
            empty = pa.schema([(c, pa.string()) for c in columns])
            yield run(pa.Table.from_batches(pending, schema=None if pending else empty))
        counts = json.dumps(totals)
        yield pa.RecordBatch.from_pylist(
            [{"shard": -1, "pkey": -1, "part": part, "pos": 0, "ordinal": totals.get("records", 0), "kind": 0,
              "token": b"", "record_id": counts}],
            schema=schema,
        )

    # One partition per shard (see _partition_keys): only tokens are shuffled.
    tokenized = (
        _as_strings(df).mapInArrow(tokenize, _ENTRIES).repartition(shards, "pkey")
        .persist(pyspark.StorageLevel.MEMORY_AND_DISK)
    )
    try:
        rows = tokenized.filter(F.col("shard") < 0).select("part", "record_id").collect()
    except BaseException:
        tokenized.unpersist()
        raise
    parts = sorted((r.part, json.loads(r.record_id)) for r in rows)
    totals: Dict[str, Any] = {"partition_records": [c.get("records", 0) for _, c in parts]}
    for _, counts in parts:
        _add_counts(totals, counts)
    if not totals.get("has_id_column", True):
        tokenized.unpersist()
        raise UsageError(
            "the DataFrame has no id column (id, record_id, member_id, user_id or customer_id, or id_col=): "
            "outputs name records by id"
        )
    return tokenized, totals


def _read(
    df: "pyspark.sql.DataFrame", shards: int, key: Dict[str, Any], read: Dict[str, Any]
) -> Tuple["pyspark.sql.DataFrame", Dict[str, Any]]:
    """:func:`_tokenize`, a failed job raising the idmatch error it carries."""
    try:
        return _tokenize(df, shards, key, read)
    except IdmatchError:
        raise
    except Exception as e:  # noqa: BLE001 - a failed job becomes the idmatch error it carries
        raise _spark_failure(e, "reading the records") from e


def _gather(batches: Iterator["pyarrow.RecordBatch"], schema: "pyarrow.Schema") -> "pyarrow.Table":
    """A task's batches as one table (of `schema`'s columns, but Spark's
    nullability), or an empty table of `schema`."""
    import pyarrow as pa

    gathered = list(batches)
    return pa.Table.from_batches(gathered) if gathered else schema.empty_table()


def _task_shard(table: "pyarrow.Table", what: str) -> int:
    """The shard of this task (its partition), checked against every row's."""
    import pyarrow.compute as pc
    from pyspark import TaskContext

    shard = TaskContext.get().partitionId()
    if table.num_rows:
        bounds = pc.min_max(table["shard"]).as_py()
        if bounds["min"] != shard or bounds["max"] != shard:
            raise MatchError(f"{what}: Spark did not put one shard in each partition (task {shard} got {bounds})")
    return shard


def _spark_failure(error: Exception, what: str) -> IdmatchError:
    """The idmatch error a failed Spark job carries (raised by a task's call into
    the crate), or a MatchError with the job's own message."""
    text = str(error)
    found = re.findall(r"idmatch\._errors\.(\w+Error): ([^\n]*)", text) or re.findall(r"\b(\w+Error): ([^\n]*)", text)
    if found:
        name, message = found[-1]
        cls = getattr(_errors, name, MatchError)
        if isinstance(cls, type) and issubclass(cls, IdmatchError):
            return cls(f"{what}: {message}")
    return MatchError(f"{what}: {text.splitlines()[0] if text else type(error).__name__}")


def match(
    df: "pyspark.sql.DataFrame",
    server: str,
    campaign: str,
    *,
    shards: int,
    key: Any = None,
    key_file: Optional[StrPath] = None,
    run_id: Optional[str] = None,
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
) -> Tuple[Optional["pyspark.sql.DataFrame"], Dict[str, Any]]:
    """The partner's side of a match of ``df`` against the owner's server, as a run
    of ``shards`` shard streams, one Spark task each.

    ``df`` holds the partner's records: an id column and email and/or phone columns
    (and optionally a region column), found by name as in the CLI or named with
    ``id_col``/``email_col``/``phone_col``/``region_col``. Record ids must be
    unique. The other arguments are :func:`idmatch.match`'s, with these rules for a
    cluster: ``key_file``, ``token_file``, ``ca``, ``cert``, ``client_key`` and
    ``suppress`` are paths that every executor must be able to read (``key`` as
    bytes and ``token`` as a string are sent to the executors with the tasks).
    ``run_id`` (32 hex digits) names the run; by default a random one.

    The owner must allow the partner as many concurrent matches as tasks run at
    once (``max_concurrent_matches_per_partner``): a shard refused for concurrency
    fails the run.

    Returns ``(matches, summary)``: ``matches`` a DataFrame ``record_id,
    matched_kinds`` (``email``, ``phone`` or ``email;phone``) in the DataFrame's
    record order, equal to the rows of the unsharded match, or ``None`` where the
    reveal mode does not tell the partner (``owner``, ``count``); ``summary`` the
    run id, shards, engine, the partner's whole set size, the owner's, the
    intersection where revealed, matched records, suppressed records and the
    reader's counts. A failed shard raises the idmatch error of its cause (after
    the owner failed the whole run: nothing is written on either side).
    """
    _pyspark()
    from pyspark.sql import functions as F

    spark = df.sparkSession
    if spark.sparkContext.getConf().get("spark.speculation", "false").lower() == "true":
        raise UsageError(
            "spark.speculation is on: a speculative copy of a shard task would open its shard twice and fail the "
            "run; set spark.speculation=false"
        )
    shards = _shards(shards)
    if run_id is None:
        run = os.urandom(16)
    else:
        try:
            run = bytes.fromhex(run_id)
        except ValueError:
            run = b""
        if len(run) != 16:
            raise UsageError(f"run_id is 32 hexadecimal digits (16 random bytes), not {run_id!r}")
    if reveal not in _native.REVEALS:
        raise UsageError(f"reveal must be one of {', '.join(_native.REVEALS)}, not {reveal!r}")
    key_args = _key_args(key, key_file)
    read = dict(
        profile=profile,
        region=region,
        id_col=id_col,
        email_col=_col_list(email_col),
        phone_col=_col_list(phone_col),
        region_col=region_col,
        filter_list=None if suppress is None else os.fspath(suppress),
        skip_bad_list_rows=skip_bad_list_rows,
    )
    connect = dict(
        reveal=reveal,
        protocol=protocol,
        token=token,
        token_file=None if token_file is None else os.fspath(token_file),
        ca=None if ca is None else os.fspath(ca),
        cert=None if cert is None else os.fspath(cert),
        client_key=None if client_key is None else os.fspath(client_key),
        profile=profile,
        idle_timeout=idle_timeout,
        **key_args,
    )
    run_hex = run.hex()
    fault, fault_after = _FAIL_SHARD_BEFORE_STREAM, _FAIL_SHARD_AFTER_STREAM
    tokenized, counts = _read(df, shards, key_args, read)
    entries = tokenized.filter(F.col("shard") >= 0)
    results = None
    try:
        # Record ids must be unique: the matches name records by id. One
        # aggregation over 64-bit hashes of the ids (an id whose entries come from
        # two records has two extremes), then the few candidates checked exactly.
        record = F.col("part").cast("long") * (1 << 40) + F.col("ordinal")
        hashed = entries.select(F.xxhash64("record_id").alias("h"), record.alias("r"), "record_id")
        candidates = [
            row.h for row in hashed.groupBy("h").agg(F.min("r").alias("a"), F.max("r").alias("b"))
            .filter(F.col("a") != F.col("b")).select("h").limit(1000).collect()
        ]
        if candidates:
            repeated = (
                hashed.filter(F.col("h").isin(candidates)).groupBy("record_id")
                .agg(F.countDistinct("r").alias("records")).filter(F.col("records") > 1).limit(1).collect()
            )
            if repeated:
                raise _errors.InputError(
                    f"record id `{repeated[0]['record_id']}` names {repeated[0]['records']} records; record ids "
                    "must be unique, since the matches name records by id"
                )

        # The run's size: each shard's distinct tokens, summed. Grouped by pkey as
        # well, Spark counts them within the shards' partitions (no shuffle).
        sizes = {
            row.shard: row.n
            for row in entries.groupBy("pkey", "shard").agg(F.countDistinct("token").alias("n")).collect()
        }
        partner_set_size = sum(sizes.values())
        # Every shard is padded to the largest one's size (PROTOCOL.md §13.4).
        run_set_size = shards * max(sizes.values(), default=0)

        def run_shard(batches: Iterator["pyarrow.RecordBatch"]) -> Iterator["pyarrow.RecordBatch"]:
            import pyarrow as pa
            from pyspark import TaskContext

            schema = pa.schema([("shard", pa.int32()), ("part", pa.int32()), ("ordinal", pa.int64()),
                                ("kind", pa.int8()), ("token", pa.binary()), ("record_id", pa.string())])
            # The whole shard, as Arrow columns (about 80 bytes per identifier).
            table = _gather(batches, schema)
            index = _task_shard(table, f"run {run_hex}")
            if fault is not None and fault[0] == index and TaskContext.get().attemptNumber() < fault[1]:
                raise MatchError(f"shard {index}: a fault injected by a test, before its stream")
            result = _native._match_shard(
                server,
                campaign,
                _fixed_bytes(table["kind"], 1),
                _var_column(table["token"]),
                run_id=run,
                shard_index=index,
                shard_count=shards,
                run_set_size=run_set_size,
                **connect,
            )
            if fault_after is not None and fault_after[0] == index and TaskContext.get().attemptNumber() < fault_after[1]:
                raise MatchError(f"shard {index}: a fault injected by a test, after its stream")
            found = result.pop("matches")
            if found is not None:
                n = len(found["kinds"])
                matched = table.take(_array(pa, pa.uint32(), n, found["rows"]))
                yield pa.RecordBatch.from_arrays(
                    [
                        _array(pa, pa.int32(), n, index.to_bytes(4, sys.byteorder, signed=True) * n),
                        matched["part"].combine_chunks(),
                        matched["ordinal"].combine_chunks(),
                        matched["record_id"].combine_chunks(),
                        _array(pa, pa.int8(), n, found["kinds"]),
                    ],
                    names=["shard", "part", "ordinal", "record_id", "kinds"],
                )
            yield pa.RecordBatch.from_pylist(
                [{"shard": index, "part": -1, "ordinal": 0, "record_id": json.dumps(result), "kinds": 0}],
                schema=pa.schema([("shard", pa.int32()), ("part", pa.int32()), ("ordinal", pa.int64()),
                                  ("record_id", pa.string()), ("kinds", pa.int8())]),
            )

        by_shard = entries.select("shard", "part", "ordinal", "kind", "token", "record_id")
        try:
            # Computed once, eagerly, and kept: a second computation would open the
            # shards again.
            results = by_shard.mapInArrow(run_shard, _RESULTS).localCheckpoint(eager=True)
            outcomes = sorted((r.shard, json.loads(r.record_id)) for r in results.filter(F.col("part") < 0).collect())
        except Exception as e:  # noqa: BLE001
            raise _spark_failure(
                e, f"run {run_hex} failed (the owner fails it as a whole; a new run, with a new run id, is needed)"
            ) from e
        if [i for i, _ in outcomes] != list(range(shards)):
            raise MatchError(f"run {run_hex}: Spark ran shards {[i for i, _ in outcomes]}, not each of 0 to {shards - 1} once")
    finally:
        tokenized.unpersist()

    engines = {o["protocol"] for _, o in outcomes}
    if len(engines) != 1:
        raise MatchError(f"run {run_hex}: the owner chose different engines for the shards: {sorted(engines)}")
    intersections = [o["intersection"] for _, o in outcomes]
    matches = None
    matched_records = None
    if reveal in ("partner", "both"):
        # Kinds merged per record (a record's email and phone can be in different
        # shards), in the DataFrame's record order.
        matches = (
            results.filter(F.col("part") >= 0)
            .groupBy("part", "ordinal")
            .agg(F.first("record_id").alias("record_id"), F.expr("bit_or(kinds)").alias("kinds"))
            .orderBy("part", "ordinal")
            .select("record_id", F.expr(_KINDS_SQL).alias("matched_kinds"))
        )
        matched_records = matches.count()
    summary: Dict[str, Any] = {
        "run_id": run_hex,
        "shards": shards,
        "reveal": reveal,
        "protocol": engines.pop(),
        "partner_set_size": partner_set_size,
        "owner_set_size": sum(o["owner_set_size"] for _, o in outcomes),
        "blinded": sum(o["blinded"] for _, o in outcomes),
        "intersection": None if None in intersections else sum(intersections),
        "matched_records": matched_records,
        "suppressed_records": counts.get("excluded_records", 0),
        "shard_set_sizes": [o["partner_set_size"] for _, o in outcomes],
        "read": counts.get("stats", {}),
    }
    return matches, summary


def write_shards(
    df: "pyspark.sql.DataFrame",
    out_dir: StrPath,
    *,
    shards: int,
    key: Any = None,
    key_file: Optional[StrPath] = None,
    profile: str = "idmatch-v1",
    region: Optional[str] = None,
    optouts: Optional[StrPath] = None,
    skip_bad_list_rows: bool = False,
    id_col: Optional[str] = None,
    email_col: Union[None, str, Sequence[str]] = None,
    phone_col: Union[None, str, Sequence[str]] = None,
    region_col: Optional[str] = None,
) -> Dict[str, Any]:
    """Splits the records of ``df`` into ``shards`` shard files in ``out_dir``: the
    files ``idmatch shard --shards N`` writes from the same records in the same
    order, byte for byte (``shard-IIIII-of-NNNNN.idms``, mode 0600,
    docs/PROTOCOL.md §13.2).

    Records are numbered in the DataFrame's order (partition by partition), which
    for a DataFrame read from one CSV file is the file's order. ``optouts`` (a list
    file every executor can read) removes records before anything is sharded, and
    fails closed as in the CLI unless ``skip_bad_list_rows``. ``out_dir`` must be a
    directory every executor can write (a shared file system outside local mode):
    one task per shard writes its file into a private staging directory there, and
    the files are moved into place together only when all are written (shard
    files of an earlier split into another ``N`` are then removed); a failure
    leaves ``out_dir`` as it was.

    Returns the files with their entry counts, the records read, those the
    opt-outs excluded, and the reader's counts.
    """
    _pyspark()
    from pyspark.sql import functions as F

    shards = _shards(shards)
    key_args = _key_args(key, key_file)
    read = dict(
        profile=profile,
        region=region,
        id_col=id_col,
        email_col=_col_list(email_col),
        phone_col=_col_list(phone_col),
        region_col=region_col,
        filter_list=None if optouts is None else os.fspath(optouts),
        skip_bad_list_rows=skip_bad_list_rows,
    )
    tokenized, counts = _read(df, shards, key_args, read)
    offsets = [0]
    for records in counts["partition_records"]:
        offsets.append(offsets[-1] + records)
    target = _native.ShardDir(os.fspath(out_dir))
    staging = os.fspath(target.staging)

    def write(batches: Iterator["pyarrow.RecordBatch"]) -> Iterator["pyarrow.RecordBatch"]:
        import pyarrow as pa
        from pyspark import TaskContext

        context = TaskContext.get()
        index = context.partitionId()
        writer = _native.ShardFileWriter(staging, shards=shards, index=index, partition_offsets=offsets,
                                         attempt=context.attemptNumber(), profile=profile, **key_args)
        for batch in batches:
            _task_shard(pa.Table.from_batches([batch]), "writing the shard files")
            writer.push(batch.num_rows, _fixed_bytes(batch["part"], 4), _fixed_bytes(batch["ordinal"], 8),
                        _fixed_bytes(batch["kind"], 1), _var_column(batch["token"]), _var_column(batch["record_id"]))
        yield pa.RecordBatch.from_pylist([{"shard": index, "entries": writer.finish()}],
                                         schema=pa.schema([("shard", pa.int32()), ("entries", pa.int64())]))

    try:
        # Each file in record order: sorted by (partition, position) within its shard.
        written = sorted(
            tuple(r)
            for r in tokenized.filter(F.col("shard") >= 0)
            .sortWithinPartitions("part", "pos")
            .mapInArrow(write, "shard int, entries long")
            .collect()
        )
        if [i for i, _ in written] != list(range(shards)):
            raise MatchError("Spark did not write one file per shard")
        files = target.commit(shards)
    except BaseException as e:
        target.discard()
        if isinstance(e, Exception) and not isinstance(e, IdmatchError):
            raise _spark_failure(e, "writing the shard files") from e
        raise
    finally:
        tokenized.unpersist()
    return {
        "files": [(os.fspath(path), count) for path, (_, count) in zip(files, written)],
        "records": counts.get("records", 0),
        "excluded_records": counts.get("excluded_records", 0),
        "read": counts.get("stats", {}),
    }


__all__ = ["match", "write_shards"]
