#!/usr/bin/env bash
# Writes a throwaway CA (ca.pem, ca.key) and a server certificate for localhost and
# 127.0.0.1 (server.pem, server.key), valid one day, into DIR. For the loopback
# timing scripts only; needs openssl.
#
#   scripts/throwaway-tls.sh DIR
set -euo pipefail
dir=$1
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=idmatch throwaway ca" \
  -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$dir/ext.cnf"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 1 \
  -extfile "$dir/ext.cnf" -out "$dir/server.pem" 2>/dev/null
chmod 600 "$dir/ca.key" "$dir/server.key"
