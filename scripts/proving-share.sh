#!/usr/bin/env bash
# What the owner's range proofs cost a concurrent match: a 100k x 100k ECDH match
# over loopback TLS timed alone, then while the owner proves a learner-owner
# measurement of N outcome people (clip 1000), in one run of `idmatch serve`.
#
#   scripts/proving-share.sh [N] [THREADS]   # default 20000 people, every core
#
# THREADS sets [limits] proving_threads. Needs openssl; builds the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
bin=${CARGO_TARGET_DIR:-target}/release/idmatch
cargo build --release --quiet
w=$(mktemp -d)
trap 'kill "${server_pid:-0}" 2>/dev/null || true; rm -rf "$w"' EXIT
"$bin" synth --rows 100000 --overlap 0.5 --distinct --out-dir "$w" --seed 1 >/dev/null
head -n $((n+1)) "$w/members.csv" | awk 'NR==1{print $0",value";next}{print $0","((NR*7919)%1000)}' > "$w/outcomes.csv"
head -n $((n+1)) "$w/partner.csv" | awk 'NR==1{print $0",arm";next}{print $0","((NR%2)?"test":"control")}' > "$w/exposures.csv"
"$bin" keygen --out "$w/campaign.key" 2>/dev/null
. scripts/loopback-server.sh
loopback_config "$w" tok "${2:+proving_threads = $2}"
cat >> "$w/server.toml" <<TOML
[[partners]]
name = "bench"
token_sha256 = "$sha"
campaigns = ["m", "p"]
reveals = ["both"]
[[campaigns]]
id = "m"
key_file = "campaign.key"
audience = "members.csv"
region = "US"
protocols = ["ecdh"]
[[campaigns]]
id = "p"
key_file = "campaign.key"
audience = "outcomes.csv"
region = "US"
[campaigns.measurement]
outcomes = "outcomes.csv"
value_column = "value"
learner = "owner"
epsilon = 1.0
value_max = 1000
max_epsilon_per_partner_per_day = 1e9
max_epsilon_per_partner_lifetime = 1e9
TOML
loopback_serve "$bin" "$w"
match() { /usr/bin/time -f "$1: match wall %e s" "$bin" match --server "https://localhost:$port" --ca "$w/ca.pem" --token-file "$w/token" \
  --campaign m --key-file "$w/campaign.key" --input "$w/partner.csv" --region US --reveal both --protocol ecdh --output "$w/$1.csv" >/dev/null 2>"$w/$1.err"; grep wall "$w/$1.err"; }
match alone
/usr/bin/time -f "measure wall %e s" "$bin" measure --server "https://localhost:$port" --ca "$w/ca.pem" --token-file "$w/token" \
  --campaign p --key-file "$w/campaign.key" --partner "$w/exposures.csv" --group-col arm --region US --out-dir "$w/meas" >/dev/null 2>"$w/meas.err" &
mp=$!
sleep 3
match during-proving
wait $mp; grep "wall" "$w/meas.err" || tail -5 "$w/meas.err"
