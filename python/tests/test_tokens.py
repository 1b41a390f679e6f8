"""`idmatch.tokens` / `write_tokens` give what `idmatch tokens` writes, on examples/."""

from __future__ import annotations

import csv
import json
import pickle
import subprocess
import sys

import pytest

import idmatch
from conftest import EXAMPLES, csv_rows, run_cli


@pytest.fixture(scope="module")
def cli_export(idmatch_bin, campaign_key, tmp_path_factory):
    """`idmatch tokens` on examples/partner.csv and examples/members.csv (with the
    opt-outs): {name: (csv path, meta path)}."""
    out = tmp_path_factory.mktemp("cli-tokens")
    exports = {}
    for name, extra in [("partner", []), ("members", ["--optouts", EXAMPLES / "optouts.csv"])]:
        path = out / f"{name}.csv"
        run_cli(idmatch_bin, "tokens", "--key-file", campaign_key, "--input", EXAMPLES / f"{name}.csv",
                "--output", path, "--region", "US", *extra)
        exports[name] = (path, out / f"{name}.csv.meta.json")
    return exports


def cli_rows(path):
    rows = csv_rows(path)
    assert rows[0] == ["record_id", "kind", "token_hex"]
    assert len(rows) > 1000
    return [tuple(r) for r in rows[1:]]


def test_rows_equal_the_cli(cli_export, campaign_key) -> None:
    key = idmatch.Key.load(campaign_key)
    assert idmatch.tokens(key, input=EXAMPLES / "partner.csv", region="US") == cli_rows(cli_export["partner"][0])
    members = idmatch.tokens(key_file=campaign_key, input=str(EXAMPLES / "members.csv"), region="US",
                             optouts=EXAMPLES / "optouts.csv")
    assert members == cli_rows(cli_export["members"][0])
    # The opt-outs did leave records out.
    assert len(members) < len(idmatch.tokens(key, input=EXAMPLES / "members.csv", region="US"))


def test_written_files_equal_the_cli_byte_for_byte(cli_export, campaign_key, tmp_path) -> None:
    for name, extra in [("partner", {}), ("members", {"optouts": EXAMPLES / "optouts.csv"})]:
        output = tmp_path / f"{name}.csv"
        description = idmatch.write_tokens(key_file=campaign_key, input=EXAMPLES / f"{name}.csv", output=output,
                                           region="US", **extra)
        cli_csv, cli_meta = cli_export[name]
        assert output.read_bytes() == cli_csv.read_bytes()
        meta = tmp_path / f"{name}.csv.meta.json"
        assert meta.read_bytes() == cli_meta.read_bytes()
        assert description == json.loads(cli_meta.read_text()) and description["profile"] == "idmatch-v1"
        assert output.stat().st_mode & 0o777 == 0o600


def test_records_as_dicts_tuples_and_bytes_key(cli_export, campaign_key) -> None:
    expected = cli_rows(cli_export["partner"][0])
    with open(EXAMPLES / "partner.csv", newline="", encoding="utf-8") as f:
        dicts = list(csv.DictReader(f))
    key = idmatch.Key.from_hex(campaign_key.read_text())
    assert idmatch.tokens(key, dicts, region="US") == expected
    # A generator of tuples with their column names, and the key as raw bytes.
    tuples = ((d["id"], d["email"], d["phone"]) for d in dicts)
    raw = bytes.fromhex(campaign_key.read_text().strip())
    assert idmatch.tokens(raw, tuples, columns=["id", "email", "phone"], region="US") == expected
    # None is a blank cell; other values become their str().
    assert idmatch.tokens(key, [{"id": 7, "email": None, "phone": "+1 650 555 1212"}])[0][:2] == ("7", "phone")


def test_pandas_dataframe(cli_export, campaign_key) -> None:
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_csv(EXAMPLES / "partner.csv", dtype=str)  # blanks are NaN: blank cells
    key = idmatch.Key.load(campaign_key)
    assert idmatch.tokens(key, frame, region="US") == cli_rows(cli_export["partner"][0])


def test_pandas_stays_optional(campaign_key) -> None:
    """Without pandas (its import fails), the package imports and works on dicts."""
    script = f"""
import sys
sys.modules["pandas"] = None  # `import pandas` now raises ImportError
import idmatch
rows = idmatch.tokens(idmatch.Key.load({str(campaign_key)!r}), [{{"id": "1", "email": "a@example.com"}}])
assert [r[:2] for r in rows] == [("1", "email")], rows
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_basic_profile_differs_and_is_recorded(campaign_key, tmp_path) -> None:
    key = idmatch.Key.load(campaign_key)
    records = [{"id": "a", "email": "Jane.Doe+x@gmail.com"}]
    v1 = idmatch.tokens(key, records)
    basic = idmatch.tokens(key, records, profile="basic-v1")
    assert v1[0][:2] == basic[0][:2] == ("a", "email") and v1[0][2] != basic[0][2]
    description = idmatch.write_tokens(key, records, profile="basic-v1", output=tmp_path / "t.csv")
    assert description["profile"] == "basic-v1" and description["rows"] == 1


def test_keys_are_never_shown(campaign_key, tmp_path) -> None:
    hex_key = campaign_key.read_text().strip()
    for key in [idmatch.Key.load(campaign_key), idmatch.Key.from_hex(hex_key), idmatch.Key.from_bytes(bytes.fromhex(hex_key))]:
        for text in (repr(key), str(key)):
            assert "<redacted>" in text and hex_key not in text and hex_key[:8] not in text
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(key)
    generated = idmatch.Key.generate_to_file(tmp_path / "new.key")
    assert (tmp_path / "new.key").stat().st_mode & 0o777 == 0o600
    assert str(generated.path) == str(tmp_path / "new.key")
    with pytest.raises(idmatch.KeyFileError, match="already exists"):
        idmatch.Key.generate_to_file(tmp_path / "new.key")


def test_key_errors(campaign_key, tmp_path) -> None:
    exposed = tmp_path / "exposed.key"
    exposed.write_text(campaign_key.read_text())
    exposed.chmod(0o644)
    with pytest.raises(idmatch.KeyFileError, match="chmod 600") as e:
        idmatch.Key.load(exposed)
    assert campaign_key.read_text().strip() not in str(e.value)
    with pytest.raises(idmatch.KeyFileError, match="chmod 600"):
        idmatch.tokens(key_file=exposed, input=EXAMPLES / "partner.csv")
    with pytest.raises(idmatch.KeyFileError, match="exactly 32 bytes"):
        idmatch.Key.from_bytes(b"short")
    with pytest.raises(idmatch.KeyFileError, match="64 hex digits"):
        idmatch.Key.from_hex("zz" * 32)
    with pytest.raises(idmatch.KeyFileError, match="all zeros"):
        idmatch.Key.from_bytes(bytes(32))
    with pytest.raises(idmatch.UsageError, match="key= or key_file="):
        idmatch.tokens(idmatch.Key.load(campaign_key), key_file=campaign_key, input=EXAMPLES / "partner.csv")
    with pytest.raises(idmatch.UsageError, match="32 bytes"):
        idmatch.tokens("campaign.key", input=EXAMPLES / "partner.csv")  # type: ignore[arg-type]


def test_malformed_input(campaign_key, tmp_path) -> None:
    key = idmatch.Key.load(campaign_key)
    bad = tmp_path / "bad.csv"
    bad.write_text('id,email\n1,a@example.com\n2,"b@example.com\n3,c@example.com\n')
    with pytest.raises(idmatch.InputError, match=r"line 3: a quoted field opened on this line is never closed"):
        idmatch.tokens(key, input=bad)
    # Values are quoted on the way to the reader: a stray quote is only a bad value.
    rows = idmatch.tokens(key, [("1", "a@example.com"), ("2", '"b@example.com'), ("3", "c,@example.com")],
                          columns=["id", "email"])
    assert [r[0] for r in rows] == ["1"]
    with pytest.raises(idmatch.InputError, match=r"record 1 \(line 3\): has fields the first record does not have \(phone\)"):
        idmatch.tokens(key, [{"id": "1", "email": "a@example.com"}, {"id": "2", "email": "", "phone": "+16505551212"}])
    with pytest.raises(idmatch.InputError, match="records: header"):
        idmatch.tokens(key, [{"name": "Jane"}])
    with pytest.raises(idmatch.InputError, match=r"has 1 fields, but there are 2 columns"):
        idmatch.tokens(key, [("1",)], columns=["id", "email"])
    with pytest.raises(idmatch.UsageError, match="columns="):
        idmatch.tokens(key, [("1", "a@example.com")])
    with pytest.raises(idmatch.UsageError, match=r"\(records=\) or a CSV/TSV file \(input=\)"):
        idmatch.tokens(key)
    with pytest.raises(idmatch.UsageError, match="use input="):
        idmatch.tokens(key, "partner.csv")
    with pytest.raises(idmatch.InputError, match="No such file"):
        idmatch.tokens(key, input=tmp_path / "missing.csv")
    # Invalid identifiers are counted and skipped, as in the CLI: not an error.
    assert idmatch.tokens(key, [{"id": "1", "email": "not-an-email"}, {"id": "2", "email": "b@example.com"}])[0][0] == "2"


def test_an_unreadable_optout_list_refuses_the_export(idmatch_bin, campaign_key, tmp_path) -> None:
    optouts = tmp_path / "optouts.csv"
    optouts.write_text((EXAMPLES / "optouts.csv").read_text() + ",not-an-email,\n")
    output = tmp_path / "cli.csv"
    cli = run_cli(idmatch_bin, "tokens", "--key-file", campaign_key, "--input", EXAMPLES / "members.csv",
                  "--output", output, "--region", "US", "--optouts", optouts, check=False)
    assert cli.returncode != 0 and not output.exists()
    with pytest.raises(idmatch.InputError, match="optouts.csv") as e:
        idmatch.tokens(key_file=campaign_key, input=EXAMPLES / "members.csv", region="US", optouts=optouts)
    assert "not-an-email" not in str(e.value)
    assert not (tmp_path / "py.csv").exists()
    with pytest.raises(idmatch.InputError):
        idmatch.write_tokens(key_file=campaign_key, input=EXAMPLES / "members.csv", region="US", optouts=optouts,
                             output=tmp_path / "py.csv")
    assert not (tmp_path / "py.csv").exists() and not (tmp_path / "py.csv.meta.json").exists()
    # With skip_bad_list_rows the rest of the list still applies, as in the CLI.
    run_cli(idmatch_bin, "tokens", "--key-file", campaign_key, "--input", EXAMPLES / "members.csv",
            "--output", output, "--region", "US", "--optouts", optouts, "--skip-bad-list-rows")
    rows = idmatch.tokens(key_file=campaign_key, input=EXAMPLES / "members.csv", region="US", optouts=optouts,
                          skip_bad_list_rows=True)
    assert rows == cli_rows(output)
