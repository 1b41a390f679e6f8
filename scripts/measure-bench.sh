#!/usr/bin/env bash
# Campaign measurement timed side by side with the ECDH match of the same sets, in
# one run: the in-process `idmatch match --protocol ecdh --reveal both`, the
# in-process `idmatch measure` with learner `owner` and with learner `partner`, then
# `idmatch serve` and `idmatch measure --server` over loopback TLS as two processes:
# learner `partner`, and learner `owner` (protocol version 5: the owner proves every
# value within the clip, the partner verifies and noises what the owner decrypts;
# no trust flag). Checks that every measurement releases the same figures (within
# the noise).
#
#   scripts/measure-bench.sh [N]   # default 1000000: N exposures × N outcomes
#
# Data: `idmatch synth --rows N --overlap 0.5 --distinct` (one distinct email per row,
# N/2 in common); outcomes get a value `(line · 7919) mod 50000`, exposures an arm
# alternating test/control. Needs openssl and python3; builds the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
work=$(mktemp -d)
trap 'kill "${server_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
bin=${CARGO_TARGET_DIR:-target}/release/idmatch
cargo build --release --quiet
timed() { /usr/bin/time -f "wall %e s, user %U s, sys %S s, max RSS %M KiB" "$@"; }

"$bin" synth --rows "$rows" --overlap 0.5 --distinct --out-dir "$work" --seed 1 >/dev/null
awk 'NR==1{print $0",value";next}{print $0","((NR*7919)%50000)}' "$work/members.csv" > "$work/outcomes.csv"
awk 'NR==1{print $0",arm";next}{print $0","((NR%2)?"test":"control")}' "$work/partner.csv" > "$work/exposures.csv"
"$bin" keygen --out "$work/campaign.key" 2>/dev/null

echo "== in-process: idmatch match --protocol ecdh --reveal both"
timed "$bin" match --owner "$work/members.csv" --partner "$work/partner.csv" --key-file "$work/campaign.key" \
  --region US --reveal both --protocol ecdh --out-dir "$work/match" >/dev/null
for learner in owner partner; do
  echo "== in-process: idmatch measure --learner $learner"
  timed "$bin" measure --owner "$work/outcomes.csv" --partner "$work/exposures.csv" --value-col value \
    --group-col arm --key-file "$work/campaign.key" --region US --learner "$learner" --out-dir "$work/local-$learner"
done

. scripts/loopback-server.sh
loopback_config "$work" bench-token
cat >> "$work/server.toml" <<TOML
[[partners]]
name = "bench"
token_sha256 = "$sha"
campaigns = ["bench", "bench-owner"]
reveals = ["count"]
# Learner partner is open to a cheating partner's scaled reads (docs/PRIVACY.md):
# the owner runs it only for a partner it trusts to run an honest client.
honest_client_trusted = true
TOML
# One measurement campaign on the outcomes: id, learner, clip (value_max). Epsilon
# 2^16 (nearly exact: the sums within a few noise scales of the plaintext).
campaign() {
  cat >> "$work/server.toml" <<TOML
[[campaigns]]
id = "$1"
key_file = "campaign.key"
audience = "members.csv"
region = "US"
[campaigns.measurement]
outcomes = "outcomes.csv"
value_column = "value"
learner = "$2"
epsilon = 65536.0
value_max = $3
max_epsilon_per_partner_per_day = 1e9
max_epsilon_per_partner_lifetime = 1e9
TOML
}
# Learner partner (a partner learns figures only with noise): no clip, so the sums
# are off by noise of scale about 6·2^16.
campaign bench partner 4294967296
# Learner owner: the owner proves every value within the clip (50000: the values are
# below it), the partner noises every figure before the owner decrypts it.
campaign bench-owner owner 50000
loopback_serve "$bin" "$work"
echo "== over loopback TLS: idmatch measure --server (learner partner; outcomes loaded before timing)"
timed "$bin" measure --server "https://localhost:$port" --ca "$work/ca.pem" --token-file "$work/token" \
  --campaign bench --key-file "$work/campaign.key" --partner "$work/exposures.csv" --group-col arm --region US \
  --out-dir "$work/grpc"
echo "server peak RSS: $(grep VmHWM /proc/$server_pid/status | awk '{print $2, $3}')"
echo "== over loopback TLS: idmatch measure --server (learner owner: range proofs, the partner's noise; no trust flag)"
timed "$bin" measure --server "https://localhost:$port" --ca "$work/ca.pem" --token-file "$work/token" \
  --campaign bench-owner --key-file "$work/campaign.key" --partner "$work/exposures.csv" --group-col arm --region US \
  --max-epsilon 65536 --out-dir "$work/grpc-owner"
echo "server peak RSS (both runs): $(grep VmHWM /proc/$server_pid/status | awk '{print $2, $3}')"
python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
def groups(path, key=None):
    d = json.load(open(path))
    d = d[key] if key else d
    return [(g["group"], g["group_size"], g["matched_exposure_records"], g["matched_outcome_people"], g["sum"]) for g in d["groups"]]
a = groups(w + "/local-owner/measurement.json")
b = groups(w + "/local-partner/measurement.json")
c = groups(w + "/grpc/measurement.json", "release")
import glob
d = groups(glob.glob(w + "/results/bench-owner-*.measurement.json")[0])
print("figures (group, size, matched records, matched people, sum):", a)
near = all(x[:4] == y[:4] and abs(x[4] - y[4]) <= 40 * 6 * (1 + 2**16) for x, y in zip(a, c)) and len(a) == len(c)
# Learner owner: the partner's noise at epsilon 2^16 (clip 50000, s = 8: limbs up to 255
# and 195, at epsilon/12 and epsilon/4; the high limb counts 2^8 times).
bound = 40 * (12 * 255 + 4 * 195 * 2**8) // 65536 + 1
near_owner = all(x[:4] == y[:4] and abs(x[4] - y[4]) <= bound for x, y in zip(a, d)) and len(a) == len(d)
print("learner owner and learner partner agree:", a == b, "; over gRPC (epsilon 2^16) within 40 noise scales:", near,
      "; learner owner over gRPC (range proofs, the partner's noise) within 40 noise scales:", near_owner)
m = json.load(open(w + "/match/summary.json"))
print("ecdh match: distinct identifiers per side: owner %d, partner %d; in common: %d"
      % (m["owner"]["blinded"], m["partner"]["blinded"], m["intersection"]))
sys.exit(0 if a == b and near and near_owner else 1)
PY
