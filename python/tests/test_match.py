"""A match from Python against a local `idmatch serve` returns exactly what
`idmatch match --server` returns; failures raise the exception of their category."""

from __future__ import annotations

import csv
import re
import threading
import time

import pytest

import idmatch
from conftest import COUNT_ONLY_TOKEN, EXAMPLES, TOKEN, Server, csv_rows, free_port, make_test_ca, run_cli

PARTNER = EXAMPLES / "partner.csv"


def cli_match(binary, server, key, tmp_path, reveal, *extra):
    """`idmatch match --server`: (matched rows or None, intersection or None, stdout)."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    output = tmp_path / f"cli-{reveal}.csv"
    out = run_cli(binary, "match", "--server", server.url, "--campaign", "spring", "--key-file", key,
                  "--token-file", token_file, "--input", PARTNER, "--output", output, "--region", "US",
                  "--reveal", reveal, *extra).stdout
    m = re.search(r"intersection: (\d+|not revealed)", out)
    assert m, out
    intersection = None if m.group(1) == "not revealed" else int(m.group(1))
    rows = None
    if output.exists():
        rows = [(r[0], tuple(r[1].split(";"))) for r in csv_rows(output)[1:]]
    return rows, intersection, out


@pytest.mark.parametrize("reveal", ["partner", "both"])
def test_same_matches_as_the_cli(idmatch_bin, server, campaign_key, tmp_path, reveal) -> None:
    expected, intersection, _ = cli_match(idmatch_bin, server, campaign_key, tmp_path, reveal)
    assert expected and len(expected) > 50
    result = idmatch.match(server.url, "spring", key_file=campaign_key, token=TOKEN, input=PARTNER,
                           region="US", reveal=reveal)
    assert list(result.matches) == expected
    assert result.matched_ids == [record_id for record_id, _ in expected]
    assert result.intersection == intersection and result.matched_records == len(expected)
    assert result.reveal == reveal and result.partner_set_size > 900 and result.owner_set_size > 900
    assert result.protocol == "oprf"  # auto: the fastest engine the owner allows
    ecdh = idmatch.match(server.url, "spring", key_file=campaign_key, token=TOKEN, input=PARTNER,
                         region="US", reveal=reveal, protocol="ecdh")
    assert ecdh.protocol == "ecdh" and ecdh.matches == result.matches
    assert set(result.kinds().values()) <= {("email",), ("phone",), ("email", "phone")}
    # Counts only in the repr: record ids stay out of logs.
    assert expected[0][0] not in repr(result) and "intersection" in repr(result)


def test_count_mode_same_as_the_cli(idmatch_bin, server, campaign_key, tmp_path) -> None:
    expected_rows, intersection, _ = cli_match(idmatch_bin, server, campaign_key, tmp_path, "count")
    assert expected_rows is None and intersection and intersection > 50
    result = idmatch.match(server.url, "spring", key_file=campaign_key, token=TOKEN, input=PARTNER,
                           region="US", reveal="count")
    assert result.intersection == intersection
    assert result.matches is None and result.matched_ids is None and result.matched_records is None


def test_records_bytes_key_token_file_and_output(idmatch_bin, server, campaign_key, tmp_path) -> None:
    expected, _, _ = cli_match(idmatch_bin, server, campaign_key, tmp_path, "partner")
    with open(PARTNER, newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    output = tmp_path / "py.csv"
    result = idmatch.match(server.url, "spring", key=bytes.fromhex(campaign_key.read_text().strip()),
                           token_file=token_file, records=records, region="US", output=output)
    assert list(result.matches) == expected
    assert output.read_bytes() == (tmp_path / "cli-partner.csv").read_bytes()


def test_the_gil_is_released_during_a_match(server, campaign_key) -> None:
    ticks = 0
    done = threading.Event()

    def run() -> None:
        try:
            idmatch.match(server.url, "spring", key_file=campaign_key, token=TOKEN, input=PARTNER, region="US")
        finally:
            done.set()

    thread = threading.Thread(target=run)
    thread.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    thread.join()
    assert ticks > 20, f"the main thread ran only {ticks} times during the match"


def expect(exception, match=None, **kwargs):
    args = dict(key_file=kwargs.pop("key_file"), token=TOKEN, input=PARTNER, region="US")
    args.update(kwargs)
    url = args.pop("url")
    campaign = args.pop("campaign", "spring")
    with pytest.raises(exception, match=match) as e:
        idmatch.match(url, campaign, **args)
    assert isinstance(e.value, idmatch.IdmatchError)
    return e.value


def test_bad_credentials(server, campaign_key) -> None:
    e = expect(idmatch.CredentialsError, "refused the credentials", url=server.url, key_file=campaign_key,
               token="not-the-token")
    assert e.exit_code == 5 and "not-the-token" not in str(e)
    assert isinstance(e, idmatch.MatchError)
    expect(idmatch.CredentialsError, None, url=server.url, key_file=campaign_key, token=None)


def test_unreachable_server(campaign_key) -> None:
    port = free_port()  # nothing listens there
    e = expect(idmatch.UnreachableError, f"cannot reach http://127.0.0.1:{port}", url=f"http://127.0.0.1:{port}",
               key_file=campaign_key)
    assert e.exit_code == 3


def test_plaintext_is_refused_beyond_loopback(campaign_key, tmp_path) -> None:
    # Refused before anything is read or sent: the token would cross the network in
    # clear (192.0.2.1 is a documentation address; nothing connects to it).
    e = expect(idmatch.UsageError, "allowed only to a loopback host", url="http://192.0.2.1:7443",
               key_file=campaign_key)
    assert e.exit_code == 2
    expect(idmatch.UsageError, "need an https:// server", url="http://127.0.0.1:7443", key_file=campaign_key,
           ca=tmp_path / "ca.pem")
    expect(idmatch.UsageError, "expected https://host:port", url="127.0.0.1:7443", key_file=campaign_key)


def test_malformed_input(server, campaign_key, tmp_path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text('id,email\n1,a@example.com\n2,"b@example.com\n')
    e = expect(idmatch.InputError, "bad.csv: line 3: a quoted field opened on this line is never closed",
               url=server.url, key_file=campaign_key, input=bad)
    assert e.exit_code == 1
    expect(idmatch.InputError, "records: header", url=server.url, key_file=campaign_key, input=None,
           records=[{"name": "Jane"}])
    repeated = tmp_path / "repeated.csv"
    repeated.write_text("id,email\n1,a@example.com\n1,b@example.com\n")
    expect(idmatch.InputError, "repeats the id of line 2", url=server.url, key_file=campaign_key, input=repeated)


def test_permission_limits_protocol_tls_and_key_errors(server, campaign_key, tmp_path) -> None:
    e = expect(idmatch.PermissionDeniedError, "reveal mode", url=server.url, key_file=campaign_key,
               token=COUNT_ONLY_TOKEN, reveal="partner")
    assert e.exit_code == 6
    expect(idmatch.PermissionDeniedError, "campaign", url=server.url, key_file=campaign_key, campaign="autumn")
    few = [{"id": str(i), "email": f"user{i}@example.com"} for i in range(5)]
    e = expect(idmatch.LimitError, None, url=server.url, key_file=campaign_key, input=None, records=few)
    assert e.exit_code == 7
    expect(idmatch.ProtocolError, "profile", url=server.url, key_file=campaign_key, profile="basic-v1")
    # A TLS client against this plaintext test server: a TLS failure, not "unreachable".
    e = expect(idmatch.TlsError, None, url=f"https://localhost:{server.port}", key_file=campaign_key)
    assert e.exit_code == 4
    exposed = tmp_path / "exposed.key"
    exposed.write_text(campaign_key.read_text())
    exposed.chmod(0o640)
    expect(idmatch.KeyFileError, "chmod 600", url=server.url, key_file=exposed)
    expect(idmatch.UsageError, "unknown reveal mode", url=server.url, key_file=campaign_key, reveal="all")
    expect(idmatch.UsageError, "does not offer reveal mode count", url=server.url, key_file=campaign_key,
           reveal="count", protocol="oprf")
    expect(idmatch.UsageError, "unknown protocol", url=server.url, key_file=campaign_key, protocol="rsa")
    expect(idmatch.UsageError, "token= or token_file=", url=server.url, key_file=campaign_key,
           token_file=tmp_path / "t")


def test_tls_with_a_test_ca(idmatch_bin, campaign_key, tmp_path) -> None:
    ca, cert, key = make_test_ca(tmp_path)
    server = Server(idmatch_bin, tmp_path, campaign_key, tls=(cert, key))
    try:
        result = idmatch.match(server.url, "spring", key_file=campaign_key, token=TOKEN, input=PARTNER,
                               region="US", ca=ca)
        expected, _, _ = cli_match(idmatch_bin, server, campaign_key, tmp_path, "partner", "--ca", ca)
        assert list(result.matches) == expected
        other = tmp_path / "other"
        other.mkdir()
        other_ca, _, _ = make_test_ca(other)
        e = expect(idmatch.TlsError, None, url=server.url, key_file=campaign_key, ca=other_ca)
        assert e.exit_code == 4
        # Without ca= the system's trust store decides, and it does not hold the test CA.
        e = expect(idmatch.TlsError, None, url=server.url, key_file=campaign_key)
        assert e.exit_code == 4
    finally:
        server.stop()


def test_suppression_list_same_as_the_cli_and_fails_closed(idmatch_bin, server, campaign_key, tmp_path) -> None:
    everything, _, _ = cli_match(idmatch_bin, server, campaign_key, tmp_path, "partner")
    # Suppress the first ten matched records of the partner file, by id.
    suppressed = [record_id for record_id, _ in everything[:10]]
    suppress = tmp_path / "suppress.csv"
    suppress.write_text("id\n" + "\n".join(suppressed) + "\n")
    expected, intersection, _ = cli_match(idmatch_bin, server, campaign_key, tmp_path, "partner", "--suppress",
                                          suppress)
    assert len(expected) == len(everything) - 10
    result = idmatch.match(server.url, "spring", key_file=campaign_key, token=TOKEN, input=PARTNER, region="US",
                           suppress=suppress)
    assert list(result.matches) == expected and result.intersection == intersection
    assert result.suppressed_records == 10 and not set(suppressed) & set(result.matched_ids)
    assert result.suppression_list["rows"] == 10 and result.suppression_list["bad_rows"] == {}

    # A list with an identifier that does not normalize refuses the match, as in the CLI...
    bad = tmp_path / "bad-suppress.csv"
    bad.write_text("email\nnot-an-email\n" + "".join(f"user{i}@example.com\n" for i in range(3)))
    cli = run_cli(idmatch_bin, "match", "--server", server.url, "--campaign", "spring", "--key-file", campaign_key,
                  "--token-file", tmp_path / "token", "--input", PARTNER, "--output", tmp_path / "refused.csv",
                  "--region", "US", "--suppress", bad, check=False)
    assert cli.returncode == 1 and not (tmp_path / "refused.csv").exists()
    e = expect(idmatch.InputError, "bad-suppress.csv", url=server.url, key_file=campaign_key, suppress=bad)
    assert "not-an-email" not in str(e)
    # ... unless skip_bad_list_rows: skipped, counted and warned about.
    with pytest.warns(UserWarning, match=r"suppression list: skipped 0 bad rows and 1 rejected identifiers"):
        skipped = idmatch.match(server.url, "spring", key_file=campaign_key, token=TOKEN, input=PARTNER,
                                region="US", suppress=bad, skip_bad_list_rows=True)
    assert skipped.suppression_list["rejected"] == {"missing_at": 1}
    assert list(skipped.matches) == everything


def test_another_campaign_key_is_refused(server, tmp_path) -> None:
    other = idmatch.Key.generate_to_file(tmp_path / "other.key")
    e = expect(idmatch.KeyMismatchError, "refused the match", url=server.url, key_file=None, key=other)
    assert e.exit_code == 8 and isinstance(e, idmatch.MatchError)
