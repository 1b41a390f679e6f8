"""Where the time of `idmatch.spark.match` goes, step by step: wall time and the CPU
of the JVM and of the Python processes (driver and workers) between the Spark
actions it runs, in order: read, tokenize, shuffle by shard and cache (the first
`collect`); the record id check; the distinct tokens per shard; the shard tasks
(`localCheckpoint`); the summaries; merging and counting the matches (`count`).

Not a test: it measures. Run it against a server already serving the data of
`bench_spark.py --dir DIR` (its `server.toml`):

    idmatch serve --config DIR/server.toml &
    python python/bench/profile_spark.py DIR http://127.0.0.1:PORT [--cores 8] [--shards 8]

with the release extension installed (`scripts/spark-bench.sh` makes such a
virtual environment in the cargo target directory).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Dict, Tuple

from bench_spark import TICKS, descendants  # this directory is on sys.path when run as a script


def tree_cpu() -> Tuple[float, float]:
    """CPU seconds of this process's tree: (the JVM, the Python processes)."""
    stats: Dict[int, Tuple[int, float, bool]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    java = b"java" in f.read().split(b"\0")[0]
            except (OSError, IndexError):
                continue
            stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS, java)
    tree = descendants(os.getpid(), {pid: s[0] for pid, s in stats.items()})
    jvm = sum(stats[p][1] for p in tree if p in stats and stats[p][2])
    python = sum(stats[p][1] for p in tree if p in stats and not stats[p][2])
    return jvm, python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="the data directory of bench_spark.py (partner.csv, campaign.key, token)")
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:PORT")
    parser.add_argument("--cores", type=int, default=8, help="Spark task slots (local[cores])")
    parser.add_argument("--shards", type=int, default=8, help="shard streams of the run")
    args = parser.parse_args()

    import pyspark.sql.dataframe as dataframe
    from pyspark.sql import SparkSession

    import idmatch.spark

    last = [time.perf_counter(), tree_cpu()]

    def mark(step: str) -> None:
        now, cpu = time.perf_counter(), tree_cpu()
        print(f"  {step:16s} wall {now - last[0]:6.1f} s   CPU: JVM {cpu[0] - last[1][0]:6.1f} s, "
              f"Python {cpu[1] - last[1][1]:6.1f} s", flush=True)
        last[0], last[1] = now, cpu

    def timed(name: str) -> None:
        action = getattr(dataframe.DataFrame, name)

        def run(self, *a, **k):  # type: ignore[no-untyped-def]
            result = action(self, *a, **k)
            mark(name)
            return result

        setattr(dataframe.DataFrame, name, run)

    for name in ("collect", "count", "localCheckpoint"):
        timed(name)
    os.environ.setdefault("PYSPARK_PYTHON", __import__("sys").executable)
    spark = (
        SparkSession.builder.master(f"local[{args.cores}]").appName("idmatch-profile")
        .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", os.environ.get("BENCH_DRIVER_MEMORY", "4g")).getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    df = spark.read.option("header", True).csv(os.path.join(args.dir, "partner.csv"))
    mark("JVM start")
    _, summary = idmatch.spark.match(df, args.url, "bench", shards=args.shards,
                                     key_file=os.path.join(args.dir, "campaign.key"),
                                     token_file=os.path.join(args.dir, "token"), region="US", reveal="partner")
    print(f"matched records {summary['matched_records']:,}")
    spark.stop()


if __name__ == "__main__":
    main()
