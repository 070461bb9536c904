# Example: pin a secret to the pod's init-data.
#
# The default checks (debug, VMPL, measurement) plus: the launch binding of
# the init-data (SNP HOST_DATA, TDX MRCONFIGID, in claims.init_data_digest)
# must equal one of the `init_data_digests` of the reference value sets that
# apply (the secret's `refvals` label, else `default`). A digest shorter than
# the field matches when the rest of the field is zero (a SHA-256 digest in
# the 48-byte MRCONFIGID).
package kbs.release

import rego.v1

default allow := false

allow if count(reasons) == 0

set_names contains name if {
	some raw in split(input.secret.labels.refvals, ",")
	name := trim_space(raw)
	name != ""
}

set_names contains "default" if not input.secret.labels.refvals

sets contains rv if {
	some name in set_names
	rv := data.reference_values[name]
}

# A set named by the secret's label that does not exist refuses: a typo or
# a deleted set must not silently drop the checks it stood for.
reasons contains sprintf("policy_denied: reference value set %v, named by the secret's refvals label, does not exist", [name]) if {
	input.secret.labels.refvals
	some name in set_names
	not data.reference_values[name]
}

reasons contains "debug_enabled" if not input.claims.debug == false

reasons contains sprintf("vmpl_not_allowed: %v != 0", [vmpl]) if {
	input.claims.tee == "snp"
	vmpl := object.get(object.get(input.claims, "snp", {}), "vmpl", "missing")
	vmpl != 0
}

measurement_allowed if {
	some m in input.secret.allowed_measurements
	lower(m) == input.claims.measurement
}

measurement_allowed if {
	some rv in sets
	some m in rv.measurements
	lower(m) == input.claims.measurement
}

reasons contains sprintf("measurement_not_allowed: %v for %v", [object.get(input.claims, "measurement", "missing"), input.secret.name]) if {
	not measurement_allowed
}

digest_matches(want) if input.claims.init_data_digest == lower(want)

digest_matches(want) if {
	have := input.claims.init_data_digest
	count(want) < count(have)
	startswith(have, lower(want))
	trim(substring(have, count(want), -1), "0") == ""
}

init_data_allowed if {
	some rv in sets
	some want in rv.init_data_digests
	digest_matches(want)
}

reasons contains sprintf("init_data_not_allowed: %v", [object.get(input.claims, "init_data_digest", "missing")]) if {
	not init_data_allowed
}
