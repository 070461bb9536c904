#!/usr/bin/env bash
# One-command demo of an attested key release on the embedded store:
#   1. a broker starts with dev TLS (and, loudly, the simulated TEE enabled);
#   2. an operator stores a 32-byte model key that only one measurement may have;
#   3. a simulated SEV-SNP guest with that measurement fetches it;
#   4. a guest with another measurement is refused, with its reason code;
#   5. the operator encrypts a small generated model directory under a new
#      model key; the guest decrypts it (same SHA-256 sums), and a tampered
#      copy is refused with nothing written.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building kbs, kbsctl and kbs-attester (simulated TEE enabled; a first build takes minutes)"
# Cargo's own progress (crates compiled, the one building now) on a terminal;
# one line per crate otherwise, so a first build never looks stuck.
cargo build -p kbs --bins
cargo build -p attester-client --bins --features insecure-simulated-tee
BIN="${CARGO_TARGET_DIR:-$(pwd)/target}/debug"

WORK="$(mktemp -d)"
BROKER_PID=""
PLAIN_DIR=""
cleanup() {
    if [ -n "$BROKER_PID" ]; then kill "$BROKER_PID" 2>/dev/null || true; wait "$BROKER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
    if [ -n "$PLAIN_DIR" ]; then rm -rf "$PLAIN_DIR"; fi
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

say "operator: generate a small model and encrypt it under a new key (models/demo/weights-key)"
mkdir -p "$WORK/model/shards"
printf '{"architectures": ["DemoForCausalLM"], "hidden_size": 64}\n' > "$WORK/model/config.json"
printf '{"version": "1.0", "model": {"vocab": {}}}\n' > "$WORK/model/tokenizer.json"
# Two safetensors shards with random weights (JSON header padded to 8
# bytes, then the tensors' data in order).
python3 - "$WORK/model/shards" <<'PY'
import json, os, struct, sys
def shard(path, tensors):
    header, at = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape, size in tensors:
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + n * size]}
        at += n * size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + os.urandom(at))
shard(os.path.join(sys.argv[1], "model-00001-of-00002.safetensors"),
      [("model.embed_tokens.weight", "BF16", [1000, 1500], 2)])
shard(os.path.join(sys.argv[1], "model-00002-of-00002.safetensors"),
      [("model.layers.0.mlp.weight", "F32", [300, 1000], 4), ("model.norm.weight", "F32", [64], 4)])
PY
# --generate: the key is drawn here, the files are encrypted, the key is
# uploaded (PutSecret) and only then are the encrypted files put in place.
"$BIN/kbsctl" model encrypt --secret models/demo/weights-key --generate --allow-measurement "$GOOD" \
    "$WORK/model" "$WORK/model-enc"
"$BIN/kbsctl" model inspect "$WORK/model-enc"

# The plaintext belongs in memory: /dev/shm (tmpfs) when there is one.
if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = "tmpfs" ]; then
    PLAIN_DIR="$(mktemp -d /dev/shm/kbs-demo.XXXXXX)"
    PERSIST=()
else
    PLAIN_DIR="$(mktemp -d)"
    PERSIST=(--allow-persistent-disk)
    echo "(no tmpfs at /dev/shm: decrypting to $PLAIN_DIR with --allow-persistent-disk)"
fi

say "guest A: attest once, fetch the key the headers name, decrypt the model"
"$BIN/kbs-attester" model decrypt --kbs "https://localhost:$GUEST_PORT" --ca "$KBS_CA" \
    --in "$WORK/model-enc" --out "$PLAIN_DIR/model" "${PERSIST[@]}" \
    --evidence simulated --sim-measurement "$GOOD" 2>"$WORK/guest-a-model.log" \
    || { cat "$WORK/guest-a-model.log"; echo "guest A could not decrypt the model" >&2; exit 1; }
sums() { (cd "$1" && find . -type f | LC_ALL=C sort | xargs sha256sum); }
sums "$WORK/model" > "$WORK/model.sha256"
sums "$PLAIN_DIR/model" > "$WORK/decrypted.sha256"
cat "$WORK/decrypted.sha256"
cmp -s "$WORK/model.sha256" "$WORK/decrypted.sha256" \
    || { diff "$WORK/model.sha256" "$WORK/decrypted.sha256" >&2; echo "decrypted model differs" >&2; exit 1; }
echo "the SHA-256 sums of the decrypted model match the operator's"

say "guest A: a copy with one flipped bit in a shard is refused"
cp -r "$WORK/model-enc" "$WORK/model-tampered"
python3 - "$WORK/model-tampered/shards/model-00002-of-00002.safetensors" <<'PY'
import sys
path = sys.argv[1]
with open(path, "r+b") as f:
    f.seek(1100000)
    b = f.read(1)
    f.seek(1100000)
    f.write(bytes([b[0] ^ 0x01]))
PY
if "$BIN/kbs-attester" model decrypt --kbs "https://localhost:$GUEST_PORT" --ca "$KBS_CA" \
    --in "$WORK/model-tampered" --out "$PLAIN_DIR/tampered" "${PERSIST[@]}" \
    --evidence simulated --sim-measurement "$GOOD" 2>"$WORK/guest-a-tampered.log"; then
    echo "the tampered model must have been refused" >&2
    exit 1
fi
echo "refused: $(grep -o 'error: .*' "$WORK/guest-a-tampered.log" | tail -1)"
grep -q "failed to authenticate" "$WORK/guest-a-tampered.log" \
    || { cat "$WORK/guest-a-tampered.log"; echo "unexpected refusal" >&2; exit 1; }
if [ -n "$(find "$PLAIN_DIR/tampered" -type f 2>/dev/null)" ]; then
    echo "plaintext was left behind" >&2
    exit 1
fi
echo "no plaintext was left behind"

say "audit log (one hash-chained record per decision)"
cut -c1-200 "$WORK/kbs/audit.jsonl"
