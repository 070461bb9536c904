# The default release policy.
#
# A secret is released only when no check below finds a reason to refuse:
#   - debug guests (SNP guest policy DEBUG, TDX attribute DEBUG);
#   - SNP reports requested from a VMPL other than 0;
#   - a launch measurement (SNP MEASUREMENT, TDX MRTD) that is neither in
#     the reference values that apply nor in the secret's own allow-list;
#   - TDX RTMRs other than an allowed combination, when one is configured;
#   - an SNP reported_tcb below the minimum configured for its generation;
#   - a TDX TCB status outside the allowed list (default: UpToDate only).
#
# Reference value sets that apply to a secret: those named in its `refvals`
# label (comma-separated; each must exist), else the set named `default`
# (when there is one).
package kbs.release

import rego.v1

default allow := false

allow if count(reasons) == 0

# --- which reference values apply -----------------------------------------

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

# --- debug ----------------------------------------------------------------

# A missing flag counts as debug: fail closed.
reasons contains "debug_enabled" if not input.claims.debug == false

reasons contains "debug_enabled" if {
	input.claims.tee == "snp"
	not input.claims.snp.policy.debug == false
}

reasons contains "debug_enabled" if {
	input.claims.tee == "tdx"
	not input.claims.tdx.td_attributes.debug == false
}

# --- VMPL -------------------------------------------------------------------

reasons contains sprintf("vmpl_not_allowed: %v != 0", [object.get(object.get(input.claims, "snp", {}), "vmpl", "missing")]) if {
	input.claims.tee == "snp"
	not input.claims.snp.vmpl == 0
}

# --- measurement ----------------------------------------------------------

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

# --- TDX RTMRs (only when a set lists allowed combinations) ----------------

rtmrs_match(allowed) if {
	some want in allowed
	tdx := input.claims.tdx
	lower(want[0]) == tdx.rtmr0
	lower(want[1]) == tdx.rtmr1
	lower(want[2]) == tdx.rtmr2
	lower(want[3]) == tdx.rtmr3
}

reasons contains "rtmr_not_allowed" if {
	input.claims.tee == "tdx"
	some rv in sets
	allowed := rv.tdx_rtmrs
	not rtmrs_match(allowed)
}

# --- SNP TCB minimum per generation ---------------------------------------

reasons contains sprintf("tcb_below_minimum: %v %v < %v", [component, have, want]) if {
	some rv in sets
	input.claims.tee == "snp"
	snp := object.get(input.claims, "snp", {})
	generation := object.get(snp, "generation", "missing")
	some component, want in rv.snp_min_tcb[generation]
	have := object.get(object.get(snp, "reported_tcb", {}), component, -1)
	have < want
}

# --- TDX TCB status ---------------------------------------------------------

configured_tdx_statuses contains status if {
	some rv in sets
	some status in rv.tdx_tcb_statuses
}

tdx_tcb_status := object.get(object.get(input.claims, "tdx", {}), "tcb_status", "missing")

tdx_status_allowed if tdx_tcb_status in configured_tdx_statuses

tdx_status_allowed if {
	count(configured_tdx_statuses) == 0
	tdx_tcb_status == "UpToDate"
}

reasons contains sprintf("tcb_status_not_allowed: %v", [tdx_tcb_status]) if {
	input.claims.tee == "tdx"
	not tdx_status_allowed
}

# --- unknown TEE kinds ------------------------------------------------------

reasons contains sprintf("tee_not_supported: %v", [object.get(input.claims, "tee", "missing")]) if {
	not input.claims.tee in {"snp", "tdx", "sample"}
}
