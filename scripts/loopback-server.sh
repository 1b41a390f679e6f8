# Sourced by the loopback timing scripts (e2e-grpc.sh, measure-bench.sh,
# proving-share.sh): a throwaway owner's server on 127.0.0.1 with TLS.
#
#   loopback_config DIR TOKEN [LIMIT LINES]   # certificates, DIR/token, and the
#                                            # head of DIR/server.toml (through
#                                            # [limits]); sets $port and $sha
#   ... append [[partners]] and [[campaigns]] to DIR/server.toml ...
#   loopback_serve BIN DIR                   # starts it (log: DIR/server.log),
#                                            # sets $server_pid, waits for it
#
# The caller's EXIT trap should kill "$server_pid". Needs openssl.

loopback_config() {
  local dir=$1 token=$2 limits=${3:-}
  "$(dirname "${BASH_SOURCE[0]}")/throwaway-tls.sh" "$dir"
  printf '%s\n' "$token" > "$dir/token" && chmod 600 "$dir/token"
  sha=$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)
  port=$((20000 + RANDOM % 20000))
  cat > "$dir/server.toml" <<TOML
listen = "127.0.0.1:$port"
results_dir = "results"
audit_log = "audit.jsonl"
state_file = "budgets.json"
[tls]
cert = "server.pem"
key = "server.key"
[limits]
idle_timeout_secs = 600
$limits
TOML
}

loopback_serve() {
  local bin=$1 dir=$2
  "$bin" serve --config "$dir/server.toml" 2>"$dir/server.log" &
  server_pid=$!
  for _ in $(seq 1 1200); do
    grep -q "serving" "$dir/server.log" 2>/dev/null && return 0
    sleep 0.5
  done
  echo "the server did not start: $dir/server.log" >&2
  return 1
}
