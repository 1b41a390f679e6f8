"""Side-by-side timing: a match from Python (`idmatch.match`) against the CLI client
(`idmatch match --server`) on the same data and the same local server.

Not a test: it measures. Both clients run the crate's client code; the difference
is what the Python layer adds (argument conversion, the temporary files for values,
reading the matches back into Python objects).

    python python/bench/bench_match.py --bin target/release/idmatch --rows 100000 --runs 5

Needs a release `idmatch` binary and the extension installed in release mode
(`pip install ./python`, or `maturin develop --release -m python/Cargo.toml`).
`scripts/python-bench.sh` does all of it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import idmatch

TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(binary: Path, *args: object) -> str:
    return subprocess.run([str(binary), *map(str, args)], check=True, capture_output=True, text=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", type=Path, default=Path(os.environ.get("IDMATCH_BIN", "target/release/idmatch")))
    parser.add_argument("--rows", type=int, default=100_000, help="rows per side (idmatch synth --distinct)")
    parser.add_argument("--runs", type=int, default=5, help="runs of each client, alternating")
    parser.add_argument("--reveal", default="partner", choices=["partner", "both", "count"])
    parser.add_argument("--records", action="store_true", help="also time records= (a list of dicts) from Python")
    args = parser.parse_args()
    binary = args.bin.resolve()
    if not binary.is_file():
        sys.exit(f"no idmatch binary at {binary} (cargo build --release, or --bin / IDMATCH_BIN)")

    with tempfile.TemporaryDirectory(prefix="idmatch-bench-") as tmp:
        d = Path(tmp)
        run(binary, "synth", "--rows", args.rows, "--overlap", "0.5", "--distinct", "--out-dir", d, "--seed", "1")
        run(binary, "keygen", "--out", d / "campaign.key")
        (d / "token").write_text(TOKEN)
        port = free_port()
        sha = hashlib.sha256(TOKEN.encode()).hexdigest()
        (d / "server.toml").write_text(f"""
listen = "127.0.0.1:{port}"
results_dir = "results"
audit_log = "audit.jsonl"
state_file = "budgets.json"

[limits]
min_partner_set = 1
max_matches_per_partner_per_day = 100000
max_identifiers_per_partner_per_day = 100000000000
idle_timeout_secs = 600

[[partners]]
name = "bench"
token_sha256 = "{sha}"
campaigns = ["bench"]
reveals = ["partner", "both", "count"]

[[campaigns]]
id = "bench"
key_file = "campaign.key"
audience = "members.csv"
region = "US"
""")
        log = open(d / "server.log", "wb")
        server = subprocess.Popen([str(binary), "serve", "--config", str(d / "server.toml")], stdout=log,
                                  stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 300
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        sys.exit(f"the server did not start:\n{(d / 'server.log').read_text()}")
                    time.sleep(0.2)
            common = dict(key_file=d / "campaign.key", token=TOKEN, region="US", reveal=args.reveal)
            records = None
            if args.records:
                with open(d / "partner.csv", newline="", encoding="utf-8") as f:
                    records = list(csv.DictReader(f))

            def cli() -> int:
                run(binary, "match", "--server", url, "--campaign", "bench", "--key-file", d / "campaign.key",
                    "--token-file", d / "token", "--input", d / "partner.csv", "--output", d / "cli.csv",
                    "--region", "US", "--reveal", args.reveal)
                return sum(1 for _ in open(d / "cli.csv")) - 1 if args.reveal != "count" else 0

            def python_input() -> int:
                return idmatch.match(url, "bench", input=d / "partner.csv", **common).matched_records or 0

            def python_records() -> int:
                return idmatch.match(url, "bench", records=records, **common).matched_records or 0

            clients = {"cli": cli, "python input=": python_input}
            if args.records:
                clients["python records="] = python_records
            # One warm-up each (page cache, server), then alternate.
            found = {name: f() for name, f in clients.items()}
            if len(set(found.values())) != 1:
                sys.exit(f"the clients disagree on the number of matched records: {found}")
            times = {name: [] for name in clients}
            for _ in range(args.runs):
                for name, f in clients.items():
                    start = time.perf_counter()
                    f()
                    times[name].append(time.perf_counter() - start)
        finally:
            server.terminate()
            server.wait()
            log.close()

    print(f"{args.rows} rows per side, reveal {args.reveal}, {args.runs} runs each, alternating; "
          f"matched records: {next(iter(found.values()))}")
    base = statistics.median(times["cli"])
    for name, samples in times.items():
        median = statistics.median(samples)
        runs = ", ".join(f"{t:.2f}" for t in samples)
        print(f"  {name:16} median {median:6.2f} s  ({median / base - 1:+.1%} vs cli)  runs: {runs}")
    # Each round runs the clients back to back, so a round's ratio shares its
    # machine's load: on a noisy machine its median says more than the medians'.
    for name, samples in times.items():
        if name != "cli":
            ratios = sorted(t / c for t, c in zip(samples, times["cli"]))
            print(f"  {name:16} / cli, per round: median {statistics.median(ratios):.3f}, "
                  f"range {ratios[0]:.3f}-{ratios[-1]:.3f}; totals {sum(samples) / sum(times['cli']):.3f}")


if __name__ == "__main__":
    main()
