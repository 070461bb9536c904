#!/usr/bin/env bash
# Generates the INSECURE test CRLs of the SEV-SNP test PKI (see generate.sh)
# with its committed ARK keys. Run it after generate.sh; its outputs are
# committed under crl/. Every CRL here is public test material.
#
#   crl/vcek/v1/<Product>/crl   the test ARK's CRL, revoking nothing, laid out
#                               as KDS serves it (so crl/ is an offline
#                               `snp.crl_dir`); valid 2024-01-01 to 2049-12-31
#   crl/ark-revokes-ask.crl     the test ARK's later CRL (2024-06-01) revoking
#                               the test ASK
#   crl/ark-revokes-three.crl   the test ARK's CRL (2024-06-01) revoking two
#                               other serials (01, FFFF...FF) and the test ASK
#   crl/ark-expired.crl         the test ARK's CRL for 2024 only
#   crl/ark-pkcs1.crl           revokes nothing, signed with RSA PKCS#1 v1.5
#                               SHA-384 instead of AMD's RSASSA-PSS
#   crl/foreign-ark.crl         the foreign ARK's CRL (an untrusted signer)
#
# Facts the CRLs follow (AMD KDS, /vcek/v1/{product}/crl): X.509 v2 CRLs
# issued and signed by the ARK with RSASSA-PSS, SHA-384, MGF1-SHA-384 and a
# 48-byte salt, listing the serial numbers of revoked ASKs (ASVKs on the
# /vlek/ path).
set -euo pipefail

cd "$(dirname "$0")"
OUT=$PWD/crl
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

PSS=(-md sha384 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:48 -sigopt rsa_mgf1_md:sha384)
ASK_SERIAL=$(openssl x509 -in ask.pem -noout -serial | cut -d= -f2)

# crl ARK_DIR OUT LAST NEXT REVOKED_SERIALS|- [SIGOPTS...]  (serials comma-separated, hex)
crl() {
    local dir=$1 out=$2 last=$3 next=$4 revoked=$5
    shift 5
    local db="$WORK/$(basename "$out")"
    mkdir -p "$db"
    : >"$db/index.txt"
    if [ "$revoked" != "-" ]; then
        for serial in ${revoked//,/ }; do
            printf 'R\t491231235959Z\t240301000000Z\t%s\tunknown\t/CN=revoked\n' "$serial" >>"$db/index.txt"
        done
    fi
    echo 01 >"$db/crlnumber"
    cat >"$db/ca.cnf" <<CNF
[ ca ]
default_ca = test_ca
[ test_ca ]
database = $db/index.txt
crlnumber = $db/crlnumber
default_md = sha384
CNF
    openssl ca -gencrl -config "$db/ca.cnf" -cert "$dir/ark.pem" -keyfile "$dir/ark-key.pem" \
        -crl_lastupdate "$last" -crl_nextupdate "$next" -out "$db/crl.pem" "$@" 2>/dev/null
    mkdir -p "$(dirname "$out")"
    openssl crl -in "$db/crl.pem" -outform DER -out "$out"
    openssl crl -in "$out" -inform DER -noout -CAfile "$dir/ark.pem" 2>/dev/null
}

crl . "$OUT/vcek/v1/Genoa/crl" 240101000000Z 491231235959Z - "${PSS[@]}"
mkdir -p "$OUT/vcek/v1/Milan" "$OUT/vcek/v1/Turin"
cp "$OUT/vcek/v1/Genoa/crl" "$OUT/vcek/v1/Milan/crl"
cp "$OUT/vcek/v1/Genoa/crl" "$OUT/vcek/v1/Turin/crl"
crl . "$OUT/ark-revokes-ask.crl" 240601000000Z 491231235959Z "$ASK_SERIAL" "${PSS[@]}"
crl . "$OUT/ark-revokes-three.crl" 240601000000Z 491231235959Z \
    "01,$ASK_SERIAL,FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF" "${PSS[@]}"
crl . "$OUT/ark-expired.crl" 240101000000Z 241231235959Z - "${PSS[@]}"
crl . "$OUT/ark-pkcs1.crl" 240101000000Z 491231235959Z - -md sha384
crl foreign "$OUT/foreign-ark.crl" 240101000000Z 491231235959Z - "${PSS[@]}"
echo "test CRLs written to $OUT"
