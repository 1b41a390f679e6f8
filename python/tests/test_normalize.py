"""The published normalization vectors, read from tests/normalization_vectors.rs,
give the same results from Python as in the Rust tests."""

from __future__ import annotations

import hashlib
import re

import pytest

import idmatch
import rust_vectors as rv
from conftest import REPO

SOURCE = rv.load(REPO / "tests" / "normalization_vectors.rs")


def normalize(kind: str, profile: str, value: str, region=None):
    """(normalized, None) or (None, reason)."""
    try:
        if kind == "email":
            return idmatch.normalize_email(value, profile=profile), None
        return idmatch.normalize_phone(value, region=region, profile=profile), None
    except idmatch.NormalizationError as e:
        assert e.kind == kind
        assert value.strip() == "" or value not in str(e), "the message must not hold the value"
        return None, e.reason


def cases(name: str):
    rows = rv.table(SOURCE, name)
    # An independent count, so that a parser that skipped rows cannot pass: every
    # row has exactly one Ok(...) or Err(...).
    body = SOURCE[SOURCE.index(f"const {name}") :]
    body = body[: body.index("\n];")]
    body = re.sub(r"//[^\n]*", "", body)
    assert len(rows) == len(re.findall(r"\b(?:Ok|Err)\(", body)) > 0, name
    return rows


TABLES = [
    ("EMAIL_CASES", "email", "idmatch-v1"),
    ("BASIC_EMAIL_CASES", "email", "basic-v1"),
    ("PHONE_CASES", "phone", "idmatch-v1"),
    ("BASIC_PHONE_CASES", "phone", "basic-v1"),
]


@pytest.mark.parametrize("name,kind,profile", TABLES)
def test_vectors(name: str, kind: str, profile: str) -> None:
    failures = []
    for row in cases(name):
        if kind == "email":
            value, want, source = row
            region = None
        else:
            value, region_value, want, source = row
            region = rv.region(region_value)
        expected = rv.expected(want)
        got = normalize(kind, profile, value, region)
        if got != expected:
            failures.append(f"{profile} {kind} {value!r} (region {region}): got {got}, expected {expected} [{source[1]}]")
        elif got[0] is not None:
            # Fixed point, as the Rust test checks.
            again = normalize(kind, profile, got[0], region)
            if again != got:
                failures.append(f"{profile} {kind} {value!r}: {got[0]!r} renormalizes to {again}")
    assert not failures, "\n".join(failures)


def test_vector_count() -> None:
    assert sum(len(cases(name)) for name, _, _ in TABLES) >= 40


def test_published_digests() -> None:
    rows = rv.table(SOURCE, "PUBLISHED_DIGESTS")
    assert len(rows) >= 10
    for kind_ident, value, region_value, strip_plus, digest, source in rows:
        kind = {"Kind::Email": "email", "Kind::Phone": "phone"}[kind_ident[1]]
        normalized, reason = normalize(kind, "idmatch-v1", value, rv.region(region_value))
        assert reason is None, (value, reason)
        hashed = normalized[1:] if strip_plus and normalized.startswith("+") else normalized
        assert hashlib.sha256(hashed.encode()).hexdigest() == digest, (value, source)


def test_cli_agrees_on_every_vector(idmatch_bin) -> None:
    """`idmatch normalize` and the Python functions give the same lines."""
    import subprocess

    for name, kind, profile in TABLES:
        for region in ["US", "GB", None] if kind == "phone" else [None]:
            values = [row[0] for row in cases(name) if "\n" not in row[0] and "\r" not in row[0]]
            args = [str(idmatch_bin), "normalize", "--kind", kind, "--profile", profile]
            if region:
                args += ["--region", region]
            out = subprocess.run(args, input="\n".join(values) + "\n", capture_output=True, text=True, check=True)
            python = []
            for v in values:
                normalized, reason = normalize(kind, profile, v, region)
                python.append(normalized if reason is None else f"!error {reason}")
            assert out.stdout.splitlines() == python, (name, region)


def test_errors_and_arguments() -> None:
    with pytest.raises(idmatch.NormalizationError) as e:
        idmatch.normalize_email("jane.doe.example.com")
    assert e.value.reason == "missing_at" and e.value.kind == "email"
    assert "missing_at" in str(e.value) and "jane" not in str(e.value)
    assert isinstance(e.value, idmatch.IdmatchError) and isinstance(e.value, ValueError)
    with pytest.raises(idmatch.NormalizationError) as e:
        idmatch.normalize_phone("020 7183 8750")
    assert e.value.reason == "unknown_country"
    assert idmatch.normalize_phone("020 7183 8750", region="gb") == "+442071838750"
    with pytest.raises(idmatch.UsageError, match="GB"):
        idmatch.normalize_phone("020 7183 8750", region="UK")
    with pytest.raises(idmatch.UsageError, match="known: idmatch-v1, basic-v1"):
        idmatch.normalize_email("a@example.com", profile="v2")
    with pytest.raises(idmatch.UsageError, match="must be a str"):
        idmatch.normalize_email(b"a@example.com")  # type: ignore[arg-type]
    with pytest.raises(idmatch.NormalizationError) as e:
        idmatch.normalize_email("jane\udcffdoe@example.com")
    assert e.value.reason == "bad_encoding"
    assert idmatch.PROFILES == ["idmatch-v1", "basic-v1"]
