"""idmatch on Apache Spark: a partner's sharded match, and an owner's shard files.

``pip install 'idmatch[spark]'`` adds PySpark (imported only when these functions
run). Every executor must be able to ``import idmatch`` (install the package in
the executors' Python, and point ``PYSPARK_PYTHON`` at it), and reach the owner's
server for :func:`match`.

- :func:`match`: the partner's side of one match as a *run* of ``shards`` shard
  streams (docs/PROTOCOL.md §13.4), one Spark task per shard, each running the
  crate's client for its shard against the owner's ``idmatch serve``. Returns the
  matched records as a DataFrame ``record_id, matched_kinds`` (the rows of the
  unsharded ``idmatch.match``, in the DataFrame's order) and the run's summary.
- :func:`write_shards`: the owner's (or anyone's) table split into the shard files
  ``idmatch shard`` writes (docs/PROTOCOL.md §13.2), byte for byte.

What runs where: each input partition is normalized and tokenized by the crate in
the task that reads it (opt-outs or suppressions applied there, before any
shard); only keyed tokens, kinds, shards and record ids cross Spark's shuffle,
never emails or phone numbers. Tokens are keyed hashes, still personal data: keep
the shuffle and spill directories private (docs/PRIVACY.md, "Sharding and Spark").

A run is all or nothing, and not idempotent: the owner takes each shard of a run
once. A task that Spark retries or runs speculatively opens its shard a second
time, which the owner refuses (``run-shard-repeated``), failing the whole run:
:func:`match` then raises, and a new call (a new run id) starts again. Turn
speculation off (``spark.speculation=false``, the default; :func:`match` refuses
to run with it on).
"""

from __future__ import annotations

import itertools
import os
import re
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from . import _errors, _native
from ._errors import IdmatchError, MatchError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import pyspark.sql

StrPath = Union[str, "os.PathLike[str]"]

#: The order of kinds in ``matched_kinds``, as the CLI writes them.
_KINDS = ("email", "phone")
#: Rows of a partition read by the crate at once.
_BATCH_ROWS = 100_000


def _pyspark() -> Any:
    try:
        import pyspark
        from pyspark import StorageLevel  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise UsageError("idmatch.spark needs PySpark: pip install 'idmatch[spark]'") from e
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


def _tokenize(
    df: "pyspark.sql.DataFrame", shards: int, key: Dict[str, Any], read: Dict[str, Any]
) -> Tuple[Any, Any, Dict[str, Any]]:
    """Each partition of `df` read by the crate: the persisted RDD (to unpersist
    when done), its entries ``("E", shard, (partition, ordinal), position, kind,
    token, record id)``, and the partitions' counts summed, with ``records`` per
    partition in order."""
    pyspark = _pyspark()
    columns = [str(c) for c in df.columns]
    batch_rows = _BATCH_ROWS

    def tokenize(partition: int, rows: Iterator[Any]) -> Iterator[Tuple[Any, ...]]:
        # In batches, so that a large partition is never held whole.
        totals: Dict[str, Any] = {}
        records = position = read_rows = 0
        while True:
            batch = [tuple(r) for r in itertools.islice(rows, batch_rows)]
            try:
                entries, counts = _native._shard_entries(batch, shards=shards, columns_=columns, **key, **read)
            except IdmatchError as e:
                # The crate numbers the batch's rows from line 2 (line 1 its header).
                where = f"partition {partition}, its rows {read_rows} to {read_rows + len(batch) - 1} as lines 2 on"
                raise type(e)(f"{where}: {e}") from None
            read_rows += len(batch)
            for shard, ordinal, kind, token, record_id in entries:
                yield ("E", shard, (partition, records + ordinal), position, kind, token, record_id)
                position += 1
            records += counts["records"]
            _add_counts(totals, counts)
            if len(batch) < batch_rows:
                break
        yield ("C", partition, totals)

    tokenized = df.rdd.mapPartitionsWithIndex(tokenize).persist(pyspark.StorageLevel.MEMORY_AND_DISK)
    try:
        parts = sorted(tokenized.filter(lambda r: r[0] == "C").map(lambda r: (r[1], r[2])).collect())
    except BaseException:
        tokenized.unpersist()
        raise
    totals: Dict[str, Any] = {"partition_records": [c["records"] for _, c in parts]}
    for _, counts in parts:
        _add_counts(totals, counts)
    if not totals.get("has_id_column", True):
        tokenized.unpersist()
        raise UsageError(
            "the DataFrame has no id column (id, record_id, member_id, user_id or customer_id, or id_col=): "
            "outputs name records by id"
        )
    return tokenized, tokenized.filter(lambda r: r[0] == "E"), totals


def _read(df: "pyspark.sql.DataFrame", shards: int, key: Dict[str, Any], read: Dict[str, Any]) -> Tuple[Any, Any, Dict[str, Any]]:
    """:func:`_tokenize`, a failed job raising the idmatch error it carries."""
    try:
        return _tokenize(df, shards, key, read)
    except IdmatchError:
        raise
    except Exception as e:  # noqa: BLE001 - a failed job becomes the idmatch error it carries
        raise _spark_failure(e, "reading the records") from e


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
    pyspark = _pyspark()
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
    tokenized, entries, counts = _read(df, shards, key_args, read)
    persisted = [tokenized]
    try:
        # Record ids must be unique: the matches name records by id.
        repeated = (
            entries.map(lambda e: (e[6], e[2])).distinct().map(lambda r: (r[0], 1)).reduceByKey(lambda a, b: a + b)
            .filter(lambda r: r[1] > 1).take(1)
        )
        if repeated:
            raise _errors.InputError(
                f"record id `{repeated[0][0]}` names {repeated[0][1]} records; record ids must be unique, since the "
                "matches name records by id"
            )
        # One partition per shard (identity partitioner): only tokens are shuffled.
        by_shard = (
            entries.map(lambda e: (e[1], (e[2], e[6], e[4], e[5])))
            .partitionBy(shards, lambda shard: shard)
            .persist(pyspark.StorageLevel.MEMORY_AND_DISK)
        )
        persisted.append(by_shard)

        def distinct_tokens(index: int, items: Iterator[Any]) -> Iterator[Tuple[int, int, bool]]:
            seen = set()
            misplaced = False
            for shard, (_, _, _, token_bytes) in items:
                misplaced |= shard != index
                seen.add(token_bytes)
            yield index, len(seen), misplaced

        sizes = sorted(by_shard.mapPartitionsWithIndex(distinct_tokens).collect())
        if len(sizes) != shards or any(bad for _, _, bad in sizes):
            raise MatchError("Spark did not put one shard in each partition")
        partner_set_size = sum(size for _, size, _ in sizes)
        # Every shard is padded to the largest one's size (PROTOCOL.md §13.4).
        run_set_size = shards * max(size for _, size, _ in sizes)

        def run_shard(index: int, items: Iterator[Any]) -> Iterator[Tuple[Any, ...]]:
            records: List[Tuple[Any, str]] = []
            numbers: Dict[Any, int] = {}
            shard_entries = []
            for _, (record, record_id, kind, token_bytes) in items:
                number = numbers.get(record)
                if number is None:
                    number = numbers[record] = len(records)
                    records.append((record, record_id))
                shard_entries.append((number, kind, token_bytes))
            result = _native._match_shard(
                server,
                campaign,
                shard_entries,
                run_id=run,
                shard_index=index,
                shard_count=shards,
                run_set_size=run_set_size,
                **connect,
            )
            for number, kinds in result.pop("matches") or ():
                record, record_id = records[number]
                yield ("M", record, (record_id, kinds))
            yield ("S", index, result)

        results = by_shard.mapPartitionsWithIndex(run_shard).persist(pyspark.StorageLevel.MEMORY_AND_DISK)
        # Never computed twice: a second computation would open the shards again.
        results.localCheckpoint()
        persisted.append(results)
        try:
            outcomes = sorted(results.filter(lambda r: r[0] == "S").map(lambda r: (r[1], r[2])).collect())
        except Exception as e:  # noqa: BLE001
            raise _spark_failure(
                e, f"run {run_hex} failed (the owner fails it as a whole; a new run, with a new run id, is needed)"
            ) from e
    except BaseException:
        for rdd in persisted:
            rdd.unpersist()
        raise
    for rdd in persisted[:-1]:
        rdd.unpersist()

    engines = {o["protocol"] for _, o in outcomes}
    if len(engines) != 1:
        raise MatchError(f"run {run_hex}: the owner chose different engines for the shards: {sorted(engines)}")
    intersections = [o["intersection"] for _, o in outcomes]
    matches = None
    matched_records = None
    if reveal in ("partner", "both"):
        from pyspark.sql.types import StringType, StructField, StructType

        def merge(a: Tuple[str, Tuple[str, ...]], b: Tuple[str, Tuple[str, ...]]) -> Tuple[str, Tuple[str, ...]]:
            return a[0], tuple(k for k in _KINDS if k in a[1] or k in b[1])

        merged = (
            results.filter(lambda r: r[0] == "M")
            .map(lambda r: (r[1], r[2]))
            .reduceByKey(merge)
            .sortByKey()
            .map(lambda r: (r[1][0], ";".join(r[1][1])))
        )
        schema = StructType([StructField("record_id", StringType(), False), StructField("matched_kinds", StringType(), False)])
        matches = spark.createDataFrame(merged, schema)
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
    pyspark = _pyspark()
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
    tokenized, entries, counts = _read(df, shards, key_args, read)
    offsets = [0]
    for records in counts["partition_records"]:
        offsets.append(offsets[-1] + records)
    target = _native.ShardDir(os.fspath(out_dir))
    staging = os.fspath(target.staging)

    def write(index: int, items: Iterator[Any]) -> Iterator[Tuple[int, int]]:
        rows = ((offsets[p] + ordinal, kind, token_bytes, record_id) for (_, p, _), (ordinal, kind, token_bytes, record_id) in items)
        yield index, _native._write_shard_file(staging, rows, shards=shards, index=index, profile=profile, **key_args)

    try:
        # Sorted by (shard, partition, position): each file in record order.
        written = sorted(
            entries.map(lambda e: ((e[1], e[2][0], e[3]), (e[2][1], e[4], e[5], e[6])))
            .repartitionAndSortWithinPartitions(shards, lambda k: k[0])
            .mapPartitionsWithIndex(write)
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
