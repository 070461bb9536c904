#!/usr/bin/env bash
# Generates the INSECURE SEV-SNP test PKI used by the simulated TEE
# (`attester-client` feature `insecure-simulated-tee`) and by the broker's
# tests. Run it once; its outputs are committed next to it. Every key here is
# public test material: nothing signed by it must ever be trusted outside tests.
#
# Layout (see README.md):
#   ark.* / ask.*                 the test ARK (self-signed) and ASK (signed by the ARK)
#   vcek-<chip>.*                 VCEKs signed by the test ASK, one per simulated chip
#   vcek-genoa-expired.*          the Genoa chip's key, certified only for 2020
#   foreign/ark.* ask.* vcek-genoa.*   an independent second PKI (untrusted-root tests)
#
# Facts the certificates follow (AMD SEV-SNP VCEK format):
#   - ARK, ASK: RSA-4096, CA:TRUE; every certificate signature is RSASSA-PSS
#     with SHA-384, MGF1-SHA-384 and a 48-byte salt.
#   - VCEK: EC P-384; extensions under 1.3.6.1.4.1.3704.1: .1 structVersion,
#     .2 productName, .3.1-.3.9 TCB SPLs, .4 hwID (the chip_id as raw
#     extension bytes, not wrapped in an OCTET STRING).
#   - chip_id of chip NAME = SHA-512("kbs test chip NAME") (64 bytes; the
#     first 8 bytes on Turin), so tests can recompute it.
set -euo pipefail

cd "$(dirname "$0")"
OUT=$PWD
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

START=240101000000Z
END=491231235959Z
PSS=(-md sha384 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:48 -sigopt rsa_mgf1_md:sha384)

# chip_hex NAME LEN: the first LEN bytes of SHA-512("kbs test chip NAME"), colon-separated hex.
chip_hex() {
    printf 'kbs test chip %s' "$1" | openssl dgst -sha512 -binary | head -c "$2" |
        od -An -v -tx1 | tr -s ' \n' ':' | sed 's/^://; s/:$//'
}

# ca_db DIR: a fresh `openssl ca` database in DIR.
ca_db() {
    mkdir -p "$1/newcerts"
    : >"$1/index.txt"
    cat >"$1/ca.cnf" <<CNF
[ ca ]
default_ca = test_ca
[ test_ca ]
dir = $1
database = \$dir/index.txt
new_certs_dir = \$dir/newcerts
default_md = sha384
policy = policy_any
unique_subject = no
copy_extensions = none
rand_serial = yes
[ policy_any ]
commonName = supplied
organizationalUnitName = optional
organizationName = optional
localityName = optional
stateOrProvinceName = optional
countryName = optional
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused
CNF
}

# rsa_key PATH: an RSA-4096 private key (PKCS#8 PEM).
rsa_key() { openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 -out "$1" 2>/dev/null; }

# ec_key PATH: an EC P-384 private key (PKCS#8 PEM, named curve).
ec_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 \
        -pkeyopt ec_param_enc:named_curve -out "$1"
}

# issue DB SUBJECT KEY EXTFILE OUT START END [ISSUER_CERT ISSUER_KEY]
# Issues a certificate for KEY; self-signed when no issuer is given.
issue() {
    local db=$1 subj=$2 key=$3 ext=$4 out=$5 start=$6 end=$7
    local csr="$WORK/$(basename "$out").csr"
    openssl req -new -config "$db/ca.cnf" -key "$key" -subj "$subj" -out "$csr"
    if [ $# -ge 9 ]; then
        openssl ca -batch -config "$db/ca.cnf" -cert "$8" -keyfile "$9" -in "$csr" \
            -out "$out" -startdate "$start" -enddate "$end" -preserveDN -notext \
            -extfile "$ext" -extensions ext "${PSS[@]}" 2>/dev/null
    else
        openssl ca -batch -config "$db/ca.cnf" -selfsign -keyfile "$key" -in "$csr" \
            -out "$out" -startdate "$start" -enddate "$end" -preserveDN -notext \
            -extfile "$ext" -extensions ext "${PSS[@]}" 2>/dev/null
    fi
    openssl x509 -in "$out" -outform DER -out "${out%.pem}.der"
}

cat >"$WORK/ark.ext" <<EXT
[ ext ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EXT
cat >"$WORK/ask.ext" <<EXT
[ ext ]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EXT

# vcek_ext PATH PRODUCT BL TEE SNP UCODE FMC HWID_HEX
# (FMC "-" for generations without an FMC SPL.)
vcek_ext() {
    {
        echo "[ ext ]"
        echo "1.3.6.1.4.1.3704.1.1 = ASN1:INTEGER:1"
        echo "1.3.6.1.4.1.3704.1.2 = ASN1:IA5STRING:$2"
        echo "1.3.6.1.4.1.3704.1.3.1 = ASN1:INTEGER:$3"
        echo "1.3.6.1.4.1.3704.1.3.2 = ASN1:INTEGER:$4"
        echo "1.3.6.1.4.1.3704.1.3.3 = ASN1:INTEGER:$5"
        echo "1.3.6.1.4.1.3704.1.3.4 = ASN1:INTEGER:0"
        echo "1.3.6.1.4.1.3704.1.3.5 = ASN1:INTEGER:0"
        echo "1.3.6.1.4.1.3704.1.3.6 = ASN1:INTEGER:0"
        echo "1.3.6.1.4.1.3704.1.3.7 = ASN1:INTEGER:0"
        echo "1.3.6.1.4.1.3704.1.3.8 = ASN1:INTEGER:$6"
        if [ "$7" != "-" ]; then
            echo "1.3.6.1.4.1.3704.1.3.9 = ASN1:INTEGER:$7"
        fi
        # Raw extension content: the chip_id bytes themselves.
        echo "1.3.6.1.4.1.3704.1.4 = DER:$8"
    } >"$1"
}

# The chips. TCB values are realistic for each generation:
#            name       product  bl  tee snp ucode fmc  hwID bytes
CHIPS=(
    "milan      Milan    4   0   22  213   -    64"
    "genoa      Genoa    10  0   23  84    -    64"
    "turin      Turin    1   1   3   72    1    8"
    "genoa-other Genoa   10  0   23  84    -    64"
)

org="/O=KBS Test PKI (INSECURE)/OU=Test Only/L=Nowhere/ST=NA/C=US"

make_pki() {
    local dir=$1 label=$2
    local db="$WORK/db-$label"
    ca_db "$db"
    mkdir -p "$dir"
    rsa_key "$dir/ark-key.pem"
    issue "$db" "/CN=ARK-${label^^}$org" "$dir/ark-key.pem" "$WORK/ark.ext" \
        "$dir/ark.pem" "$START" "$END"
    rsa_key "$dir/ask-key.pem"
    issue "$db" "/CN=SEV-${label^^}$org" "$dir/ask-key.pem" "$WORK/ask.ext" \
        "$dir/ask.pem" "$START" "$END" "$dir/ark.pem" "$dir/ark-key.pem"
}

# vcek DIR LABEL NAME PRODUCT BL TEE SNP UCODE FMC HWLEN CHIPNAME START END [KEY]
vcek() {
    local dir=$1 label=$2 name=$3 product=$4 bl=$5 tee=$6 snp=$7 ucode=$8 fmc=$9
    local hwlen=${10} chip=${11} start=${12} end=${13} key=${14:-}
    local db="$WORK/db-$label"
    if [ -z "$key" ]; then
        key="$dir/vcek-$name-key.pem"
        ec_key "$key"
        openssl pkcs8 -topk8 -nocrypt -in "$key" -outform DER -out "${key%.pem}.der"
    fi
    vcek_ext "$WORK/vcek-$label-$name.ext" "$product" "$bl" "$tee" "$snp" "$ucode" "$fmc" \
        "$(chip_hex "$chip" "$hwlen")"
    issue "$db" "/CN=SEV-VCEK-${label^^}$org" "$key" "$WORK/vcek-$label-$name.ext" \
        "$dir/vcek-$name.pem" "$start" "$end" "$dir/ask.pem" "$dir/ask-key.pem"
}

make_pki "$OUT" Test
for row in "${CHIPS[@]}"; do
    # shellcheck disable=SC2086
    set -- $row
    vcek "$OUT" Test "$1" "$2" "$3" "$4" "$5" "$6" "$7" "$8" "$1" "$START" "$END"
done
# The Genoa chip's own key, certified only for a past period.
vcek "$OUT" Test genoa-expired Genoa 10 0 23 84 - 64 genoa 200101000000Z 201231235959Z \
    "$OUT/vcek-genoa-key.pem"

make_pki "$OUT/foreign" Foreign
vcek "$OUT/foreign" Foreign genoa Genoa 10 0 23 84 - 64 genoa "$START" "$END"

# Check every certificate chains as intended and carries the AMD extensions.
openssl verify -x509_strict -CAfile "$OUT/ark.pem" "$OUT/ark.pem" >/dev/null
openssl verify -x509_strict -CAfile "$OUT/ark.pem" "$OUT/ask.pem" >/dev/null
for c in milan genoa turin genoa-other; do
    openssl verify -CAfile "$OUT/ark.pem" -untrusted "$OUT/ask.pem" "$OUT/vcek-$c.pem" >/dev/null
done
openssl verify -CAfile "$OUT/foreign/ark.pem" -untrusted "$OUT/foreign/ask.pem" \
    "$OUT/foreign/vcek-genoa.pem" >/dev/null
echo "test PKI written to $OUT"
