# Example: a TCB grace period during a firmware rollout.
#
# The default checks (debug, VMPL, measurement) plus the SNP minimum TCB,
# where a reference value set may carry a grace period:
#
#   "snp_min_tcb":   {"milan": {"snp": 23}},              the new minimum
#   "snp_tcb_grace": {"until": 1767225600,                Unix seconds
#                     "snp_min_tcb": {"milan": {"snp": 22}}}   the old one
#
# Until `until` (compared with input.now, the broker's clock), a guest that
# meets the old minimum is allowed; after it, only the new minimum counts.
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

reasons contains "debug_enabled" if {
	input.claims.tee == "snp"
	not input.claims.snp.policy.debug == false
}

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

snp := object.get(input.claims, "snp", {})

generation := object.get(snp, "generation", "missing")

level(component) := object.get(object.get(snp, "reported_tcb", {}), component, -1)

in_grace(rv, component) if {
	grace := rv.snp_tcb_grace
	input.now < grace.until
	level(component) >= grace.snp_min_tcb[generation][component]
}

reasons contains sprintf("tcb_below_minimum: %v %v < %v", [component, level(component), want]) if {
	input.claims.tee == "snp"
	some rv in sets
	some component, want in rv.snp_min_tcb[generation]
	level(component) < want
	not in_grace(rv, component)
}
