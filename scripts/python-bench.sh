#!/usr/bin/env bash
# Side-by-side timing of a match from Python (idmatch.match) against the CLI client
# (idmatch match --server) on the same data and the same local server: builds the
# release binary, builds a release wheel of the package and installs it (as
# `pip install ./python` would, not an editable install) into a private virtual
# environment in the cargo target directory, then runs python/bench/bench_match.py.
#   scripts/python-bench.sh [--rows 100000] [--runs 5] [--reveal partner] [--records]
# Needs the Rust toolchain and python3 with venv; maturin comes from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
venv=${IDMATCH_BENCH_VENV:-$target_dir/python-bench-venv}
cargo build --release --quiet
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "maturin>=1.9.4,<2"
wheels="$target_dir/python-bench-wheels"
rm -rf "$wheels"
CARGO_TARGET_DIR="$target_dir" "$venv/bin/maturin" build --quiet --release --manifest-path python/Cargo.toml \
  --interpreter "$venv/bin/python" --out "$wheels"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheels"/*.whl
exec "$venv/bin/python" python/bench/bench_match.py --bin "$target_dir/release/idmatch" "$@"
