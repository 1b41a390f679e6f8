#!/usr/bin/env bash
# Side-by-side timing of a match from Python against the CLI client (python/bench/).
# Builds the release binary and installs the extension in release mode into a
# private virtual environment, then runs python/bench/bench_match.py.
#   scripts/python-bench.sh [--rows 100000] [--runs 5] [--reveal partner] [--records]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${IDMATCH_BENCH_VENV:-target/python-bench-venv}
cargo build --release
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet maturin
VIRTUAL_ENV="$PWD/$venv" "$venv/bin/maturin" develop --release --manifest-path python/Cargo.toml >/dev/null
exec "$venv/bin/python" python/bench/bench_match.py --bin target/release/idmatch "$@"
