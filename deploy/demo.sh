#!/usr/bin/env bash
# One-command demo of an attested key release on the embedded store:
#   1. a broker starts with dev TLS (and, loudly, the simulated TEE enabled);
#   2. an operator stores a 32-byte model key that only one measurement may have;
#   3. a simulated SEV-SNP guest with that measurement fetches it;
#   4. a guest with another measurement is refused, with its reason code.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building kbs, kbsctl and kbs-attester (simulated TEE enabled)"
cargo build --quiet -p kbs --bins
cargo build --quiet -p attester-client --bins --features insecure-simulated-tee
BIN="${CARGO_TARGET_DIR:-$(pwd)/target}/debug"

WORK="$(mktemp -d)"
BROKER_PID=""
cleanup() {
    if [ -n "$BROKER_PID" ]; then kill "$BROKER_PID" 2>/dev/null || true; wait "$BROKER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
GUEST_PORT="$(free_port)"
ADMIN_PORT="$(free_port)"

say "operator: dev set-up (dev CA, server certificate, challenge key, KEK, admin token)"
"$BIN/kbs" dev-init --dir "$WORK/kbs" \
    --guest-listen "127.0.0.1:$GUEST_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --snp-test-root attester-client/testdata/snp-pki/ark.pem

say "broker: starting on 127.0.0.1:$GUEST_PORT (guests) and 127.0.0.1:$ADMIN_PORT (admin)"
KBS_LOG=warn "$BIN/kbs" serve --config "$WORK/kbs/kbs.toml" --insecure-dev 2>"$WORK/kbs.log" &
BROKER_PID=$!

export KBS_ADMIN_URL="https://localhost:$ADMIN_PORT"
export KBS_ADMIN_TOKEN_FILE="$WORK/kbs/admin.token"
export KBS_CA="$WORK/kbs/tls/ca.pem"
for _ in $(seq 1 100); do
    if "$BIN/kbsctl" secret list >/dev/null 2>&1; then break; fi
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then cat "$WORK/kbs.log"; echo "broker failed to start" >&2; exit 1; fi
    sleep 0.1
done

# The measurement the model server's confidential VM is launched with.
GOOD=$(printf 'a1%.0s' $(seq 48))
BAD=$(printf 'b2%.0s' $(seq 48))

say "operator: store the 32-byte model key, releasable only to measurement ${GOOD:0:16}..."
head -c 32 /dev/urandom > "$WORK/model.key"
"$BIN/kbsctl" secret put models/llama/key --from-file "$WORK/model.key" --allow-measurement "$GOOD"
STORED_SHA=$(sha256sum "$WORK/model.key" | cut -d' ' -f1)
echo "sha256 of the operator's key:     $STORED_SHA"
rm -f "$WORK/model.key"

say "guest A (measurement ${GOOD:0:16}...): attest and fetch"
"$BIN/kbs-attester" fetch --kbs "https://localhost:$GUEST_PORT" --ca "$KBS_CA" \
    --secret models/llama/key --out "$WORK/guest-a" \
    --evidence simulated --sim-measurement "$GOOD" 2>"$WORK/guest-a.log"
echo "guest A received: $WORK/guest-a/models/llama/key ($(stat -c %a "$WORK/guest-a/models/llama/key"))"
GOT_SHA=$(sha256sum "$WORK/guest-a/models/llama/key" | cut -d' ' -f1)
echo "sha256 of the key guest A received: $GOT_SHA"
[ "$GOT_SHA" = "$STORED_SHA" ] || { echo "guest A received other bytes" >&2; exit 1; }

say "guest B (measurement ${BAD:0:16}...): attest and fetch"
if "$BIN/kbs-attester" fetch --kbs "https://localhost:$GUEST_PORT" --ca "$KBS_CA" \
    --secret models/llama/key --out "$WORK/guest-b" \
    --evidence simulated --sim-measurement "$BAD" 2>"$WORK/guest-b.log"; then
    echo "guest B must have been refused" >&2
    exit 1
fi
echo "guest B refused: $(grep -o 'error: .*' "$WORK/guest-b.log" | tail -1)"
grep -q measurement_not_allowed "$WORK/guest-b.log" || { cat "$WORK/guest-b.log"; echo "unexpected refusal" >&2; exit 1; }
if [ -e "$WORK/guest-b/models/llama/key" ]; then echo "guest B wrote a key" >&2; exit 1; fi

say "audit log (one hash-chained record per decision)"
cut -c1-200 "$WORK/kbs/audit.jsonl"
