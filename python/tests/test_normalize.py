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


def with_overrides(base: list, overrides: list) -> list:
    """``base`` with each override replacing the row of the same input and region."""
    keyed = {row[:2]: row for row in overrides}
    assert all(key in {row[:2] for row in base} for key in keyed), "an override matches no base vector"
    return [keyed.get(row[:2], row) for row in base]


# (table name or names, kind, profile). idmatch-v2 runs every idmatch-v1 vector, with
# its overrides, plus its own cases, as the Rust tests do.
TABLES = [
    (["EMAIL_CASES"], "email", "idmatch-v1"),
    (["BASIC_EMAIL_CASES"], "email", "basic-v1"),
    (["PHONE_CASES"], "phone", "idmatch-v1"),
    (["BASIC_PHONE_CASES"], "phone", "basic-v1"),
    (["EMAIL_CASES", "V2_EMAIL_CASES"], "email", "idmatch-v2"),
    (["PHONE_CASES", "V2_PHONE_CASES"], "phone", "idmatch-v2"),
]
OVERRIDES = {("phone", "idmatch-v2"): "V2_PHONE_OVERRIDES"}


def rows_for(names: list, kind: str, profile: str) -> list:
    base = cases(names[0])
    if (kind, profile) in OVERRIDES:
        base = with_overrides(base, cases(OVERRIDES[kind, profile]))
    return base + [row for name in names[1:] for row in cases(name)]


@pytest.mark.parametrize("names,kind,profile", TABLES)
def test_vectors(names: list, kind: str, profile: str) -> None:
    failures = []
    for row in rows_for(names, kind, profile):
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
    assert sum(len(cases(names[0])) for names, _, profile in TABLES if profile != "idmatch-v2") >= 40
    assert sum(len(cases(name)) for name in ["V2_EMAIL_CASES", "V2_PHONE_CASES", "V2_PHONE_OVERRIDES"]) >= 15


def test_idmatch_v1_fails_every_v2_case() -> None:
    """Every idmatch-v2 case tests a fix: idmatch-v1 gives something else."""
    for name, kind in [("V2_EMAIL_CASES", "email"), ("V2_PHONE_CASES", "phone"), ("V2_PHONE_OVERRIDES", "phone")]:
        for row in cases(name):
            value, region = row[0], None if kind == "email" else rv.region(row[1])
            assert normalize(kind, "idmatch-v1", value, region) != rv.expected(row[-2]), (name, value)


def test_published_digests() -> None:
    rows = rv.table(SOURCE, "PUBLISHED_DIGESTS")
    assert len(rows) >= 10
    for profile in ["idmatch-v1", "idmatch-v2"]:
        for kind_ident, value, region_value, strip_plus, digest, source in rows:
            kind = {"Kind::Email": "email", "Kind::Phone": "phone"}[kind_ident[1]]
            normalized, reason = normalize(kind, profile, value, rv.region(region_value))
            assert reason is None, (profile, value, reason)
            hashed = normalized[1:] if strip_plus and normalized.startswith("+") else normalized
            assert hashlib.sha256(hashed.encode()).hexdigest() == digest, (profile, value, source)


def test_cli_agrees_on_every_vector(idmatch_bin) -> None:
    """`idmatch normalize` and the Python functions give the same lines."""
    import subprocess

    for names, kind, profile in TABLES:
        for region in ["US", "GB", None] if kind == "phone" else [None]:
            rows = rows_for(names, kind, profile)
            values = [row[0] for row in rows if "\n" not in row[0] and "\r" not in row[0]]
            args = [str(idmatch_bin), "normalize", "--kind", kind, "--profile", profile]
            if region:
                args += ["--region", region]
            out = subprocess.run(args, input="\n".join(values) + "\n", capture_output=True, text=True, check=True)
            python = []
            for v in values:
                normalized, reason = normalize(kind, profile, v, region)
                python.append(normalized if reason is None else f"!error {reason}")
            assert out.stdout.splitlines() == python, (names, profile, region)


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
    with pytest.raises(idmatch.UsageError, match="known: idmatch-v1, basic-v1, idmatch-v2"):
        idmatch.normalize_email("a@example.com", profile="v2")
    with pytest.raises(idmatch.UsageError, match="must be a str"):
        idmatch.normalize_email(b"a@example.com")  # type: ignore[arg-type]
    with pytest.raises(idmatch.NormalizationError) as e:
        idmatch.normalize_email("jane\udcffdoe@example.com")
    assert e.value.reason == "bad_encoding"
    assert idmatch.PROFILES == ["idmatch-v1", "basic-v1", "idmatch-v2"]
