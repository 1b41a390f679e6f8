"""idmatch.spark in Spark local mode against a real `idmatch serve`: a sharded run
from Spark's tasks gives the unsharded match (from Python and from the CLI, over
gRPC and locally, unsharded and sharded), a shard task that Spark retries still
gives it (the owner charging and auditing one run), a shard that fails on every
attempt, fails after its stream or runs twice fails the run with no results, and the owner's shard files
are `idmatch shard`'s, byte for byte. Skipped only when PySpark, PyArrow or pandas is not installed (CI installs
them)."""

from __future__ import annotations

import csv
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

pytest.importorskip("pyspark")
pytest.importorskip("pyarrow")
pytest.importorskip("pandas")

import idmatch  # noqa: E402
import idmatch.spark  # noqa: E402
from conftest import EXAMPLES, TOKEN, Server, csv_rows, run_cli  # noqa: E402

PARTNER = EXAMPLES / "partner.csv"
MEMBERS = EXAMPLES / "members.csv"
OPTOUTS = EXAMPLES / "optouts.csv"


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    from pyspark.sql import SparkSession

    # The executors' Python must be this one, which has idmatch installed.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    # local[2, 2]: two task slots, and a failed task is tried once more (as
    # spark.task.maxFailures does on a cluster, where it is 4 by default).
    session = (
        SparkSession.builder.master("local[2,2]")
        .appName("idmatch-tests")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def frame(spark, path: Path, partitions: int):
    """The CSV file as a DataFrame of strings in `partitions` partitions, in file order."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [tuple(r) for r in reader]
    return spark.createDataFrame(spark.sparkContext.parallelize(rows, partitions), header)


def rows_of(matches) -> List[Tuple[str, Tuple[str, ...]]]:
    return [(r.record_id, tuple(r.matched_kinds.split(";"))) for r in matches.collect()]


def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    path.chmod(0o600)
    return path


def test_a_sharded_run_from_spark_gives_the_unsharded_match(spark, idmatch_bin, server, campaign_key, tmp_path) -> None:
    whole = idmatch.match(server.url, "spring", key_file=campaign_key, token=TOKEN, input=PARTNER, region="US",
                          reveal="both")
    assert whole.matches and len(whole.matches) > 50
    assert any(len(kinds) == 2 for _, kinds in whole.matches)  # some records match through both kinds
    cli_out = tmp_path / "cli.csv"
    run_cli(idmatch_bin, "match", "--server", server.url, "--campaign", "spring", "--key-file", campaign_key,
            "--token-file", token_file(tmp_path), "--input", PARTNER, "--output", cli_out, "--region", "US",
            "--reveal", "both")
    cli_rows = [(r[0], tuple(r[1].split(";"))) for r in csv_rows(cli_out)[1:]]
    assert cli_rows == list(whole.matches)
    # The local match of the same files (both roles in one process, the server's
    # opt-outs), unsharded and out of core, writes the same partner rows.
    for extra in ((), ("--shards", "3")):
        local = tmp_path / f"local{len(extra)}"
        run_cli(idmatch_bin, "match", "--owner", MEMBERS, "--partner", PARTNER, "--key-file", campaign_key,
                "--optouts", OPTOUTS, "--region", "US", "--reveal", "both", "--out-dir", local, *extra)
        assert [(r[0], tuple(r[1].split(";"))) for r in csv_rows(local / "partner_matches.csv")[1:]] == cli_rows

    df = frame(spark, PARTNER, 3)
    matches, summary = idmatch.spark.match(df, server.url, "spring", shards=4, key_file=campaign_key, token=TOKEN,
                                           region="US", reveal="both")
    # The same records, kinds merged over shards, in the DataFrame's order.
    assert rows_of(matches) == list(whole.matches)
    assert summary["shards"] == 4 and len(summary["run_id"]) == 32 and summary["protocol"] == "oprf"
    for field in ("partner_set_size", "intersection", "matched_records", "suppressed_records"):
        assert summary[field] == getattr(whole, field), field
    # The owner pads its four shards to one size (PROTOCOL.md §13.4).
    assert summary["owner_set_size"] >= whole.owner_set_size and summary["owner_set_size"] % 4 == 0
    assert sum(summary["shard_set_sizes"]) == summary["partner_set_size"]
    assert summary["read"]["rows"] == 1000
    # The owner audited one run, finished.
    runs = [json.loads(line) for line in (server.dir / "audit.jsonl").read_text().splitlines()]
    run = [r for r in runs if r.get("kind") == "run" and r.get("run_id") == summary["run_id"]]
    assert len(run) == 1 and run[0]["outcome"] == "ok" and run[0]["shards_finished"] == 4
    # Every shard went out padded to one size: the owner saw no shard's real size.
    streams = [r for r in runs if r.get("run_id") == summary["run_id"] and "shard" in r]
    assert len(streams) == 4 and {r["partner_set_size"] for r in streams} == {run[0]["run_set_size"] // 4}

    # The other engine, another N, and the count mode.
    ecdh, s = idmatch.spark.match(frame(spark, PARTNER, 2), server.url, "spring", shards=3, key_file=campaign_key,
                                  token=TOKEN, region="US", reveal="partner", protocol="ecdh")
    assert rows_of(ecdh) == list(whole.matches) and s["protocol"] == "ecdh"
    none, count = idmatch.spark.match(df, server.url, "spring", shards=2, key_file=campaign_key, token=TOKEN,
                                      region="US", reveal="count")
    assert none is None and count["intersection"] == whole.intersection and count["matched_records"] is None


def test_a_shard_run_twice_fails_the_whole_run(spark, idmatch_bin, server, campaign_key, tmp_path) -> None:
    run_id = secrets.token_hex(16)
    # Shard 0 of the run, from the CLI, first; then the whole run from Spark, whose
    # task for shard 0 opens it a second time (as a retried task would).
    run_cli(idmatch_bin, "match", "--server", server.url, "--campaign", "spring", "--key-file", campaign_key,
            "--token-file", token_file(tmp_path), "--input", PARTNER, "--output", tmp_path / "shard0.csv",
            "--region", "US", "--reveal", "both", "--shard", "0/4", "--run-id", run_id)
    with pytest.raises(idmatch.MatchError) as failed:
        idmatch.spark.match(frame(spark, PARTNER, 2), server.url, "spring", shards=4, key_file=campaign_key,
                            token=TOKEN, region="US", reveal="both", run_id=run_id)
    message = str(failed.value)
    assert f"run {run_id} failed" in message and "new run id" in message, message
    assert "already joined" in message or "this run has failed" in message, message
    runs = [json.loads(line) for line in (server.dir / "audit.jsonl").read_text().splitlines()]
    run = [r for r in runs if r.get("kind") == "run" and r.get("run_id") == run_id]
    assert len(run) == 1 and run[0]["outcome"] != "ok"
    # The run's id is spent.
    with pytest.raises(idmatch.MatchError, match="this run has failed"):
        idmatch.spark.match(frame(spark, PARTNER, 1), server.url, "spring", shards=4, key_file=campaign_key,
                            token=TOKEN, region="US", run_id=run_id)


def budget(server) -> Tuple[int, int, List[str]]:
    """The partner's charges today on the owner's server: matches, identifiers, run ids."""
    path = server.dir / "budgets.json"
    state = json.loads(path.read_text()) if path.exists() else {"partners": {}}
    used = state["partners"].get("python-tests", {"matches": 0, "identifiers": 0})
    return used["matches"], used["identifiers"], state.get("runs", {}).get("python-tests", [])


def audited(server, run_id: str) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """The owner's audit records of a run: its run records and its streams'."""
    lines = [json.loads(line) for line in (server.dir / "audit.jsonl").read_text().splitlines()]
    mine = [r for r in lines if r.get("run_id") == run_id]
    return [r for r in mine if r.get("kind") == "run"], [r for r in mine if "shard" in r]


def failed_tasks(spark, group: str) -> int:
    """Task attempts that failed in the Spark jobs of a job group."""
    tracker = spark.sparkContext.statusTracker()
    stages = [s for j in tracker.getJobIdsForGroup(group) for s in (tracker.getJobInfo(j).stageIds if tracker.getJobInfo(j) else [])]
    return sum(info.numFailedTasks for info in map(tracker.getStageInfo, stages) if info is not None)


def test_a_shard_task_that_spark_retries_gives_the_unsharded_match(spark, server, campaign_key,
                                                                    monkeypatch) -> None:
    whole = idmatch.match(server.url, "spring", key_file=campaign_key, token=TOKEN, input=PARTNER, region="US",
                          reveal="both")
    matches_before, identifiers_before, runs_before = budget(server)
    # Shard 1's task fails on its first attempt, before it opens its stream (as a
    # task does that loses its executor or its shuffle input); Spark runs it again.
    monkeypatch.setattr(idmatch.spark, "_FAIL_SHARD_BEFORE_STREAM", (1, 1))
    spark.sparkContext.setJobGroup("retry-once", "shard 1 fails once")
    try:
        matches, summary = idmatch.spark.match(frame(spark, PARTNER, 2), server.url, "spring", shards=4,
                                               key_file=campaign_key, token=TOKEN, region="US", reveal="both")
        got = rows_of(matches)
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    assert failed_tasks(spark, "retry-once") == 1
    assert got == list(whole.matches)
    assert summary["intersection"] == whole.intersection and summary["matched_records"] == whole.matched_records
    # The owner saw each shard once and one run, finished, charged once.
    runs, streams = audited(server, summary["run_id"])
    assert len(runs) == 1 and runs[0]["outcome"] == "ok" and runs[0]["shards_finished"] == 4
    assert sorted(r["shard"] for r in streams) == ["0/4", "1/4", "2/4", "3/4"]
    matches_after, identifiers_after, runs_after = budget(server)
    assert matches_after == matches_before + 1
    # Under oprf the partner, the receiver, pays for what its tables can hold:
    # ceil(1.25 x the run's size) + 215 per shard (docs/PRIVACY.md, "Under oprf").
    size = runs[0]["run_set_size"]
    charged = -(-5 * size // 4) + 215 * 4 if summary["protocol"] == "oprf" else size
    assert identifiers_after == identifiers_before + charged
    assert summary["run_id"] not in runs_before and set(runs_after) == {*runs_before, summary["run_id"]}


def test_a_shard_task_failing_on_every_attempt_fails_the_run(spark, idmatch_bin, campaign_key, tmp_path,
                                                             monkeypatch) -> None:
    # A server of its own, whose runs fail after 5 s without a stream.
    (tmp_path / "server").mkdir()
    server = Server(idmatch_bin, tmp_path / "server", campaign_key, idle_timeout_secs=5)
    try:
        run_id = secrets.token_hex(16)
        monkeypatch.setattr(idmatch.spark, "_FAIL_SHARD_BEFORE_STREAM", (3, 1_000_000))
        with pytest.raises(idmatch.MatchError) as failed:
            idmatch.spark.match(frame(spark, PARTNER, 2), server.url, "spring", shards=4, key_file=campaign_key,
                                token=TOKEN, region="US", reveal="both", run_id=run_id)
        failed_at = time.monotonic()
        message = str(failed.value)
        assert f"run {run_id} failed" in message and "a fault injected by a test" in message, message
        # Nothing was returned, and the owner wrote no results for the run.
        assert not [p.name for p in (server.dir / "results").glob(f"*{run_id}*")]
        # Shards 0 and 1 ran before shard 3's task (two slots): the run was charged
        # once. Without shard 3 it never finishes; the owner fails it once no stream
        # has been open for its idle timeout, and refuses shard 3 from then on.
        assert budget(server)[0] == 1 and budget(server)[2] == [run_id]
        time.sleep(max(0.0, failed_at + 6 - time.monotonic()))
        late = run_cli(idmatch_bin, "match", "--server", server.url, "--campaign", "spring", "--key-file",
                       campaign_key, "--token-file", token_file(tmp_path), "--input", PARTNER, "--output",
                       tmp_path / "shard3.csv", "--region", "US", "--reveal", "both", "--shard", "3/4", "--run-id",
                       run_id, check=False)
        assert late.returncode != 0 and "this run has failed" in late.stderr, late.stderr
        assert not (tmp_path / "shard3.csv").exists()
        runs, _ = audited(server, run_id)
        assert len(runs) == 1 and runs[0]["outcome"] != "ok" and runs[0]["shards_finished"] < 4, runs
        assert budget(server)[0] == 1
        assert not [p.name for p in (server.dir / "results").glob(f"*{run_id}*")]
    finally:
        server.stop()


def test_a_shard_task_failing_after_its_stream_fails_the_run(spark, server, campaign_key, monkeypatch) -> None:
    run_id = secrets.token_hex(16)
    matches_before = budget(server)[0]
    # Shard 0's task fails once its stream has ended: Spark's retry (the next task
    # to start, while shards 2 and 3 wait for a slot) opens shard 0 again, which the
    # owner refuses, failing the run (a second stream of a shard would be a second
    # query under the run's single charge).
    monkeypatch.setattr(idmatch.spark, "_FAIL_SHARD_AFTER_STREAM", (0, 1))
    with pytest.raises(idmatch.MatchError) as failed:
        idmatch.spark.match(frame(spark, PARTNER, 2), server.url, "spring", shards=4, key_file=campaign_key,
                            token=TOKEN, region="US", reveal="both", run_id=run_id)
    message = str(failed.value)
    assert f"run {run_id} failed" in message, message
    runs, streams = audited(server, run_id)
    # Audited once, whichever way the scheduling went (README, "Spark": retries).
    assert len(runs) == 1, runs
    # The first attempt's stream finished; the retry's was refused.
    shard0 = [r["outcome"] for r in streams if r["shard"] == "0/4"]
    assert shard0[0] == "ok" and len(shard0) == 2 and shard0[1] != "ok", shard0
    results = [p.name for p in (server.dir / "results").glob(f"*{run_id}*")]
    if "this run has finished" in message:
        # The lopsided case: every other shard had finished before the retry came,
        # so the owner's run is complete while the partner's match raises.
        assert runs[0]["outcome"] == "ok" and len(results) == 1, (runs, results)
    else:
        # The retry came while shards were still open: it fails the run.
        assert "already joined" in message or "this run has failed" in message, message
        assert runs[0]["outcome"] != "ok" and runs[0]["results_file"] is None and not results, runs
    assert budget(server)[0] == matches_before + 1


def test_the_owners_shard_files_are_those_of_idmatch_shard(spark, idmatch_bin, campaign_key, tmp_path,
                                                            monkeypatch) -> None:
    cli_dir = tmp_path / "cli"
    run_cli(idmatch_bin, "shard", "--input", MEMBERS, "--key-file", campaign_key, "--shards", "4", "--out-dir",
            cli_dir, "--optouts", OPTOUTS, "--region", "US")
    names = sorted(p.name for p in cli_dir.iterdir())
    assert names == [f"shard-0000{i}-of-00004.idms" for i in range(4)]
    for df, batch_rows in ((frame(spark, MEMBERS, 3), 70), (spark.read.option("header", True).csv(str(MEMBERS)), None)):
        # Partitions read in batches of 70 rows, then whole: the same records' ordinals.
        if batch_rows:
            monkeypatch.setattr(idmatch.spark, "_BATCH_ROWS", batch_rows)
        else:
            monkeypatch.undo()
        out = tmp_path / "spark"
        summary = idmatch.spark.write_shards(df, out, shards=4, key_file=campaign_key, optouts=OPTOUTS, region="US")
        assert sorted(p.name for p in out.iterdir()) == names
        for name in names:
            assert (out / name).read_bytes() == (cli_dir / name).read_bytes(), name
            assert (out / name).stat().st_mode & 0o777 == 0o600
        assert summary["records"] == 1000 and 0 < summary["excluded_records"] < 20
        assert sum(count for _, count in summary["files"]) > 1000
    # More shards than tokens: the empty shards' files are written too, as the CLI's.
    few = tmp_path / "few.csv"
    few.write_text("id,email,phone\na1,x@example.com,\na2,y@example.com,+14155550100\na3,,\n")
    run_cli(idmatch_bin, "shard", "--input", few, "--key-file", campaign_key, "--shards", "8", "--out-dir",
            tmp_path / "few-cli", "--region", "US")
    idmatch.spark.write_shards(frame(spark, few, 2), tmp_path / "few-spark", shards=8, key_file=campaign_key,
                               region="US")
    cli_files = sorted((tmp_path / "few-cli").iterdir())
    assert len(cli_files) == 8 and sum(p.stat().st_size for p in cli_files) > 8 * 101  # some shards hold entries
    for path in cli_files:
        assert (tmp_path / "few-spark" / path.name).read_bytes() == path.read_bytes(), path.name
    # A split into another N replaces the files; a failed one leaves them.
    idmatch.spark.write_shards(frame(spark, MEMBERS, 2), out, shards=2, key_file=campaign_key, region="US")
    assert sorted(p.name for p in out.iterdir()) == ["shard-00000-of-00002.idms", "shard-00001-of-00002.idms"]
    bad_list = tmp_path / "bad-optouts.csv"
    bad_list.write_text("email\nnot-an-email\n")
    with pytest.raises(idmatch.InputError, match="missing_at") as refused:
        idmatch.spark.write_shards(frame(spark, MEMBERS, 2), out, shards=8, key_file=campaign_key, optouts=bad_list)
    assert str(refused.value).startswith("reading the records: partition ") and "bad-optouts.csv" in str(refused.value)
    assert sorted(p.name for p in out.iterdir()) == ["shard-00000-of-00002.idms", "shard-00001-of-00002.idms"]


def test_bad_frames_and_arguments_are_refused_before_any_match(spark, server, campaign_key) -> None:
    def attempt(df, **kwargs):
        args = dict(shards=2, key_file=campaign_key, token=TOKEN, region="US")
        args.update(kwargs)
        return idmatch.spark.match(df, server.url, "spring", **args)

    no_id = spark.createDataFrame([("a@example.com",), ("b@example.com",)], ["email"])
    with pytest.raises(idmatch.UsageError, match="no id column"):
        attempt(no_id)
    repeated = spark.createDataFrame([("p1", "a@example.com"), ("p1", "b@example.com")], ["id", "email"])
    with pytest.raises(idmatch.InputError, match="record id `p1` names 2 records"):
        attempt(repeated)
    df = frame(spark, PARTNER, 1)
    with pytest.raises(idmatch.UsageError, match="shards"):
        attempt(df, shards=0)
    with pytest.raises(idmatch.UsageError, match="run_id"):
        attempt(df, run_id="abc")
    with pytest.raises(idmatch.UsageError, match="key_file"):
        attempt(df, key_file=None, key=idmatch.Key.from_bytes(bytes(range(1, 33))))
