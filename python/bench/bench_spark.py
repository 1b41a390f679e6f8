"""A partner's sharded match from Spark local mode (`idmatch.spark.match`) against a
local `idmatch serve` over loopback gRPC, timed, with the CPU and peak memory of
both sides.

Not a test: it measures. `idmatch synth --distinct` writes N distinct emails per
side, half of them shared; the server loads the audience (not timed), then Spark
reads the partner's CSV, tokenizes it in its tasks, and runs one shard stream per
task (`--shards`, all at once with `--cores` task slots). Reported: the wall time
of the `match` call; the server's CPU during it and its peak RSS (audience
included); the CPU and the peak of the summed RSS of the Spark side (driver,
JVM and Python workers, sampled every 0.2 s). The matched records are checked
against `truth.csv`.

    python python/bench/bench_spark.py --bin target/release/idmatch --rows 10000000 --shards 8

Needs a release `idmatch` binary, the extension installed in release mode, PySpark,
PyArrow, pandas
and Java 17; `scripts/spark-bench.sh` does all of it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Set, Tuple

TOKEN = "bench-token"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(binary: Path, *args: object) -> str:
    return subprocess.run([str(binary), *map(str, args)], check=True, capture_output=True, text=True).stdout


def proc_stat(pid: int) -> Tuple[int, float, int]:
    """(parent pid, CPU seconds, RSS bytes) of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ppid, utime, stime, rss_pages = int(fields[1]), int(fields[11]), int(fields[12]), int(fields[21])
    return ppid, (utime + stime) / TICKS, rss_pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def descendants(root: int, parents: Dict[int, int]) -> Set[int]:
    """`root` and every process below it, from each process's parent pid."""
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return tree


class TreeMonitor(threading.Thread):
    """Samples a process tree: the peak of its summed RSS, and each process's last
    CPU time (so processes that exit during the run still count)."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.peak, self.cpu = root, 0, {}  # type: int, int, Dict[int, float]
        self.processes = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            stats: Dict[int, Tuple[int, float, int]] = {}
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        stats[int(entry)] = proc_stat(int(entry))
                    except (OSError, IndexError, ValueError):
                        pass
            tree = descendants(self.root, {pid: s[0] for pid, s in stats.items()})
            self.peak = max(self.peak, sum(stats[p][2] for p in tree if p in stats))
            for pid in tree:
                if pid in stats:
                    self.cpu[pid] = stats[pid][1]
            self.processes = max(self.processes, len(self.cpu))
            self.stop.wait(0.2)


DRIVER = r"""
import json, os, sys, time
from pyspark.sql import SparkSession
import idmatch.spark

d, url, shards, cores = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
spark = (SparkSession.builder.master(f"local[{cores}]").appName("idmatch-bench")
         .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
         .config("spark.ui.enabled", "false").config("spark.driver.memory", os.environ.get("BENCH_DRIVER_MEMORY", "4g"))
         .getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
df = spark.read.option("header", True).csv(os.path.join(d, "partner.csv"))
print("READY", flush=True)
sys.stdin.readline()
start = time.perf_counter()
matches, summary = idmatch.spark.match(df, url, "bench", shards=shards, key_file=os.path.join(d, "campaign.key"),
                                       token_file=os.path.join(d, "token"), region="US", reveal="partner")
wall = time.perf_counter() - start
truth = spark.read.option("header", True).csv(os.path.join(d, "truth.csv")).selectExpr("partner_id AS record_id")
missing = truth.join(matches, "record_id", "left_anti").count()
extra = matches.join(truth, "record_id", "left_anti").count()
print("RESULT " + json.dumps({"wall": wall, "summary": summary, "missing": missing, "extra": extra,
                             "partitions": df.rdd.getNumPartitions()}), flush=True)
spark.stop()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", type=Path, default=Path(os.environ.get("IDMATCH_BIN", "target/release/idmatch")))
    parser.add_argument("--rows", type=int, default=100_000, help="rows per side (idmatch synth --distinct)")
    parser.add_argument("--shards", type=int, default=8, help="shard streams of the run")
    parser.add_argument("--cores", type=int, default=8, help="Spark task slots (local[cores])")
    parser.add_argument("--dir", type=Path, help="keep the data here (default: a temporary directory)")
    args = parser.parse_args()
    binary = args.bin.resolve()
    if not binary.is_file():
        sys.exit(f"no idmatch binary at {binary} (cargo build --release, or --bin / IDMATCH_BIN)")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    with tempfile.TemporaryDirectory(prefix="idmatch-spark-bench-") as tmp:
        d = args.dir or Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        if not (d / "truth.csv").exists():
            run(binary, "synth", "--rows", args.rows, "--overlap", "0.5", "--distinct", "--out-dir", d, "--seed", "1")
        if not (d / "campaign.key").exists():
            run(binary, "keygen", "--out", d / "campaign.key")
        (d / "token").write_text(TOKEN)
        (d / "token").chmod(0o600)
        port = free_port()
        sha = hashlib.sha256(TOKEN.encode()).hexdigest()
        (d / "server.toml").write_text(f"""
listen = "127.0.0.1:{port}"
results_dir = "results"
audit_log = "audit.jsonl"
state_file = "budgets.json"

[limits]
min_partner_set = 1
max_partner_set = 10000000000
max_concurrent_matches = {max(16, args.shards)}
max_concurrent_matches_per_partner = {max(16, args.shards)}
max_matches_per_partner_per_day = 100000
max_identifiers_per_partner_per_day = 100000000000
idle_timeout_secs = 600

[[partners]]
name = "bench"
token_sha256 = "{sha}"
campaigns = ["bench"]
reveals = ["partner", "both", "count"]
honest_client_trusted = true

[[campaigns]]
id = "bench"
key_file = "campaign.key"
audience = "members.csv"
region = "US"
protocols = ["ecdh", "oprf"]
""")
        log = open(d / "server.log", "wb")
        server = subprocess.Popen([str(binary), "serve", "--config", str(d / "server.toml")], stdout=log,
                                  stderr=subprocess.STDOUT)
        driver = None
        try:
            deadline = time.monotonic() + 1800
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        sys.exit(f"the server did not start:\n{(d / 'server.log').read_text()}")
                    time.sleep(0.2)
            driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(d), f"http://127.0.0.1:{port}",
                                       str(args.shards), str(args.cores)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
            assert driver.stdin and driver.stdout
            lines: List[str] = []
            for line in driver.stdout:
                lines.append(line)
                if line.startswith("READY"):
                    break
            monitor = TreeMonitor(driver.pid)
            monitor.start()
            server_cpu_before = proc_stat(server.pid)[1]
            driver.stdin.write("go\n")
            driver.stdin.flush()
            result = None
            for line in driver.stdout:
                if line.startswith("RESULT "):
                    result = json.loads(line[len("RESULT "):])
                    server_cpu = proc_stat(server.pid)[1] - server_cpu_before
                    server_peak = peak_rss(server.pid)
            monitor.stop.set()
            monitor.join()
            if driver.wait() != 0 or result is None:
                sys.exit(f"the Spark driver failed ({driver.returncode}):\n{''.join(lines)}")
        finally:
            if driver and driver.poll() is None:
                driver.kill()
            server.terminate()
            server.wait()
            log.close()

    s = result["summary"]
    print(f"{args.rows:,} x {args.rows:,} distinct emails (half shared), loopback gRPC, engine {s['protocol']}, "
          f"{args.shards} shard streams, Spark local[{args.cores}], {result['partitions']} input partitions")
    print(f"  matched records {s['matched_records']:,} (missing from truth {result['missing']}, "
          f"extra {result['extra']}); partner set {s['partner_set_size']:,}, owner set {s['owner_set_size']:,}")
    print(f"  wall (idmatch.spark.match)   {result['wall']:8.1f} s")
    print(f"  server: CPU during the match {server_cpu:8.1f} s, peak RSS {server_peak / 2**20:,.0f} MiB")
    print(f"  Spark (driver, JVM, workers: {monitor.processes} processes): CPU {sum(monitor.cpu.values()):8.1f} s, "
          f"peak summed RSS {monitor.peak / 2**20:,.0f} MiB")
    if result["missing"] or result["extra"]:
        sys.exit("the matches differ from truth.csv")


if __name__ == "__main__":
    main()
