"""The column buffers `idmatch.spark` hands the crate (`idmatch._native.ShardReader`,
`ShardFileWriter`, `_match_shard`), without Spark or PyArrow: a batch given as
Arrow buffers gives the tokens `idmatch.tokens` gives for the same rows, nulls read
as blank cells, and buffers that do not hold what they claim are refused with a
precise error, never read out of bounds."""

from __future__ import annotations

import struct
from typing import List, Optional, Sequence, Tuple

import pytest

import idmatch
from idmatch import _native

KEY = bytes(range(1, 33))
ROWS = [("r1", "Alice@Example.com", None), ("r2", None, "+1 415 555 0100"), ("r3", "not-an-email", ""),
        ("r4", "bob@example.com", "(415) 555-0101")]


def var(values: Sequence[Optional[str]], wide: bool = False) -> Tuple[Optional[bytes], bytes, bytes, int, int, bool]:
    """An Arrow string column's buffers: (validity, offsets, data, offset, length, wide)."""
    data, offsets, bits = b"", [0], 0
    for i, v in enumerate(values):
        if v is not None:
            data += v.encode()
            bits |= 1 << i
        offsets.append(len(data))
    validity = None if all(v is not None for v in values) else bits.to_bytes((len(values) + 7) // 8, "little")
    fmt = "q" if wide else "i"
    return validity, struct.pack(f"={len(offsets)}{fmt}", *offsets), data, 0, len(values), wide


def read(rows: List[Tuple[Optional[str], ...]], shards: int = 4, wide: bool = False, **kwargs) -> dict:
    reader = _native.ShardReader(["id", "email", "phone"], shards=shards, partition_keys=list(range(100, 100 + shards)),
                                 key=KEY, region="US", **kwargs)
    columns = [var([r[i] for r in rows], wide) for i in range(3)]
    return reader.read(columns, len(rows), 10, 20)


def test_a_batch_of_columns_gives_the_tokens_of_its_rows() -> None:
    expected = idmatch.tokens(KEY, [{"id": i, "email": e or "", "phone": p or ""} for i, e, p in ROWS], region="US")
    for wide in (False, True):
        out = read(ROWS, wide=wide)
        n = out["n"]
        assert n == len(expected) == 4
        tokens = [out["token_data"][32 * i:32 * (i + 1)].hex() for i in range(n)]
        ids = struct.unpack(f"={n + 1}i", out["id_offsets"])
        assert [out["id_data"][ids[i]:ids[i + 1]].decode() for i in range(n)] == [r[0] for r in expected]
        assert tokens == [r[2] for r in expected]
        assert list(out["kind"]) == [["email", "phone"].index(r[1]) for r in expected]
        # Ordinals and positions count on from the batch's first; pkey is the shard's key.
        ordinals = struct.unpack(f"={n}q", out["ordinal"])
        assert ordinals == tuple(10 + int(r[0][1:]) - 1 for r in expected)
        assert struct.unpack(f"={n}q", out["pos"]) == tuple(range(20, 20 + n))
        shards = struct.unpack(f"={n}i", out["shard"])
        assert struct.unpack(f"={n}i", out["pkey"]) == tuple(100 + s for s in shards) and set(shards) <= set(range(4))
        assert out["records"] == 4 and out["has_id_column"] and out["stats"]["rejected"]


def test_buffers_that_do_not_hold_their_values_are_refused() -> None:
    reader = _native.ShardReader(["id", "email"], shards=2, partition_keys=[0, 1], key=KEY)
    good = var(["r1", "a@example.com"])
    validity, offsets, data, offset, length, wide = good
    with pytest.raises(idmatch.InputError, match="offsets buffer is too short for 2 values"):
        reader.read([good, (None, offsets[:-4], data, 0, 2, False)], 2, 0, 0)
    beyond = struct.pack("=3i", 0, 2, 400)
    with pytest.raises(idmatch.InputError, match="value 1's Arrow offsets are outside its data"):
        reader.read([good, (None, beyond, data, 0, 2, False)], 2, 0, 0)
    backwards = struct.pack("=3i", 0, 5, 2)
    with pytest.raises(idmatch.InputError, match="outside its data"):
        reader.read([good, (None, backwards, data, 0, 2, False)], 2, 0, 0)
    with pytest.raises(idmatch.InputError, match="validity bitmap is too short"):
        reader.read([good, (b"", offsets, data, 0, 2, False)], 2, 0, 0)
    with pytest.raises(idmatch.UsageError, match="1 columns for 2 names"):
        reader.read([good], 2, 0, 0)
    with pytest.raises(idmatch.UsageError, match="has 2 values, the batch 3"):
        reader.read([good, good], 3, 0, 0)
    with pytest.raises(idmatch.UsageError, match="3 partition keys for 2 shards"):
        _native.ShardReader(["id"], shards=2, partition_keys=[0, 1, 2], key=KEY)


def test_a_shard_file_writer_refuses_bad_entries(tmp_path) -> None:
    writer = _native.ShardFileWriter(tmp_path, shards=2, index=1, partition_offsets=[0, 5], key=KEY)
    token = var(["x" * 32])
    ids = var(["r1"])
    one = struct.pack("=i", 1), struct.pack("=q", 0), b"\x00"
    with pytest.raises(idmatch.InputError, match="names partition 2, not one of 2"):
        writer.push(1, struct.pack("=i", 2), one[1], one[2], token, ids)
    with pytest.raises(idmatch.InputError, match="a token is 32 bytes, not 3"):
        writer.push(1, *one, var(["abc"]), ids)
    with pytest.raises(idmatch.InputError, match="7 is not an identifier kind's code"):
        writer.push(1, one[0], one[1], b"\x07", token, ids)
    with pytest.raises(idmatch.InputError, match="kind: 2 bytes for 1 values"):
        writer.push(1, one[0], one[1], b"\x00\x00", token, ids)
    # Nothing is in place until finish() renames the attempt's file.
    assert not (tmp_path / "shard-00001-of-00002.idms").exists()
    writer.push(1, *one, token, ids)
    assert writer.finish() == 1 and (tmp_path / "shard-00001-of-00002.idms").stat().st_mode & 0o777 == 0o600
    with pytest.raises(idmatch.UsageError, match="finished"):
        writer.finish()


def test_a_shard_match_refuses_bad_columns_before_connecting() -> None:
    # No server listens on port 9: each refusal below comes before any connection.
    def attempt(kinds: bytes, tokens) -> None:
        _native._match_shard("http://127.0.0.1:9", "c", kinds, tokens, run_id=bytes(16), shard_index=0,
                             shard_count=1, run_set_size=1, key=KEY, token="t")

    with pytest.raises(idmatch.UsageError, match="2 kinds for 1 tokens"):
        attempt(b"\x00\x00", var(["x" * 32]))
    with pytest.raises(idmatch.InputError, match="a token is 32 bytes, not 31"):
        attempt(b"\x00", var(["x" * 31]))
    with pytest.raises(idmatch.InputError, match="a token is missing"):
        attempt(b"\x00", var([None]))
