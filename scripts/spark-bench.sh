#!/usr/bin/env bash
# A partner's sharded match from Spark local mode against a local `idmatch serve`
# over loopback gRPC: wall time, and CPU and peak RSS of the server and of the Spark
# side (driver, JVM, Python workers). Builds the release binary and a release wheel
# of the package, installs it with PySpark into a private virtual environment in the
# cargo target directory, then runs python/bench/bench_spark.py.
#   scripts/spark-bench.sh [--rows 10000000] [--shards 8] [--cores 8] [--dir DATA_DIR]
# Default: 10,000,000 x 10,000,000 distinct emails, 8 shard streams, local[8] (about
# 1.2 GB of CSV in a temporary directory, or in --dir, kept for the next run).
# Needs the Rust toolchain, python3 with venv and Java 17; maturin, PySpark, PyArrow
# and pandas come from PyPI. BENCH_DRIVER_MEMORY sets spark.driver.memory (default
# 4g). IDMATCH_BENCH_WHEEL=path/to/idmatch-*.whl installs that wheel instead of
# building one (to measure another version of idmatch.spark side by side, e.g. one
# built by `maturin build --release` at an earlier commit; use another
# IDMATCH_BENCH_VENV for it), and IDMATCH_BENCH_BIN=path/to/idmatch uses that
# release binary for the server and synth instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
venv=${IDMATCH_BENCH_VENV:-$target_dir/python-spark-bench-venv}
command -v java >/dev/null || { echo "PySpark needs Java 17 (Debian: apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
binary=${IDMATCH_BENCH_BIN:-$target_dir/release/idmatch}
[ -n "${IDMATCH_BENCH_BIN:-}" ] || cargo build --release --quiet
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "maturin>=1.9.4,<2" "pyspark==3.5.3" \
  "pyarrow>=4.0.0" "pandas>=1.0.5"
if [ -n "${IDMATCH_BENCH_WHEEL:-}" ]; then
  wheel=$IDMATCH_BENCH_WHEEL
else
  wheels="$target_dir/python-spark-bench-wheels"
  rm -rf "$wheels"
  CARGO_TARGET_DIR="$target_dir" "$venv/bin/maturin" build --quiet --release --manifest-path python/Cargo.toml \
    --interpreter "$venv/bin/python" --out "$wheels"
  wheel=$(echo "$wheels"/*.whl)
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel"
args=("$@")
case " $* " in *" --rows "*) ;; *) args=(--rows 10000000 "${args[@]}") ;; esac
PYSPARK_PYTHON="$venv/bin/python" exec "$venv/bin/python" python/bench/bench_spark.py \
  --bin "$binary" "${args[@]}"
