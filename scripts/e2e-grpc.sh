#!/usr/bin/env bash
# End-to-end timing of a match: the in-process `idmatch match` with both engines
# (`--protocol ecdh` and `--protocol oprf`, side by side), then `idmatch serve` and
# `idmatch match --server` over loopback TLS as two processes, with both engines, on
# the same data.
#
#   scripts/e2e-grpc.sh [N] [ENGINES]   # default 1000000 "ecdh oprf": exactly N distinct
#                                       # identifiers per side; ENGINES to run, e.g. "oprf"
#   IDMATCH_BENCH_BIN=/path/to/idmatch scripts/e2e-grpc.sh ...   # time that binary
#
# The data is `idmatch synth --distinct` (one valid email per row, 50% overlap), so
# each side holds exactly N distinct identifiers and N/2 of them are in common; the
# script prints both counts from summary.json. Needs openssl (for a throwaway CA and
# server certificate) and python3 (to read summary.json); builds the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
engines=${2:-ecdh oprf}
work=$(mktemp -d)
trap 'kill "${server_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
# IDMATCH_BENCH_BIN: time another build (say, one from an older commit) instead.
if [ -n "${IDMATCH_BENCH_BIN:-}" ]; then
  bin=$IDMATCH_BENCH_BIN
else
  bin=${CARGO_TARGET_DIR:-target}/release/idmatch
  cargo build --release --quiet
fi

"$bin" synth --rows "$rows" --overlap 0.5 --distinct --out-dir "$work" --seed 1 >/dev/null
"$bin" keygen --out "$work/campaign.key" 2>/dev/null
. scripts/loopback-server.sh
loopback_config "$work" e2e-token
cat >> "$work/server.toml" <<TOML
[[partners]]
name = "e2e"
token_sha256 = "$sha"
campaigns = ["e2e"]
reveals = ["partner", "owner", "both", "count"]
[[campaigns]]
id = "e2e"
key_file = "campaign.key"
audience = "members.csv"
region = "US"
protocols = ["ecdh", "oprf"]
TOML

# Both engines in one run, side by side.
for protocol in $engines; do
  echo "== in-process: idmatch match --protocol $protocol (both roles, one process)"
  /usr/bin/time -f "wall %e s, user %U s, sys %S s, max RSS %M KiB" \
    "$bin" match --owner "$work/members.csv" --partner "$work/partner.csv" --key-file "$work/campaign.key" \
    --region US --reveal partner --protocol "$protocol" --out-dir "$work/local-$protocol"
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print("distinct identifiers per side: owner %d, partner %d; in common: %d" % (s["owner"]["blinded"], s["partner"]["blinded"], s["intersection"]))' "$work/local-$protocol/summary.json"
done
if [ "$engines" = "ecdh oprf" ]; then
  cmp "$work/local-ecdh/partner_matches.csv" "$work/local-oprf/partner_matches.csv" &&
    echo "both engines: identical partner_matches.csv"
fi

loopback_serve "$bin" "$work"
for protocol in $engines; do
  echo "== over loopback TLS: idmatch match --server --protocol $protocol (audience loaded before timing)"
  lo_before=$(awk '$1 == "lo:" {print $2}' /proc/net/dev 2>/dev/null || echo 0)
  /usr/bin/time -f "wall %e s, user %U s, sys %S s, max RSS %M KiB (client)" \
    "$bin" match --server "https://localhost:$port" --ca "$work/ca.pem" --token-file "$work/token" \
    --campaign e2e --key-file "$work/campaign.key" --input "$work/partner.csv" --output "$work/grpc-$protocol.csv" \
    --region US --reveal partner --protocol "$protocol"
  lo_after=$(awk '$1 == "lo:" {print $2}' /proc/net/dev 2>/dev/null || echo 0)
  echo "loopback bytes during the match (both directions, TLS and HTTP/2 included): $((lo_after - lo_before))"
  cmp <(sort "$work/local-$protocol/partner_matches.csv") <(sort "$work/grpc-$protocol.csv") &&
    echo "same matches in-process and over gRPC ($protocol)"
done
echo "server peak RSS: $(grep VmHWM /proc/$server_pid/status | awk '{print $2, $3}')"
