# Example: release only to a VM with the expected attested NVIDIA GPUs.
#
# The default checks (debug, VMPL, measurement) plus, for every reference
# value set that applies (the secret's `refvals` label, else `default`) and
# has a `gpu` object, each of these that it names:
#
#   "gpu": {"count": 8,                          at least this many GPUs
#           "modes": ["mpt", "ppcie"],           the set's multi-GPU mode
#           "drivers": ["570.124.06"],           every device's driver
#           "vbios": ["96.00.CF.00.02"],         every device's VBIOS
#           "revocation": "good",                stapled OCSP for every device
#           "rims": "match",                     every device matched its RIMs
#           "measurements": {"3": ["<96 hex>", ...]}}   per SPDM block index
#
# A VM that presented no GPUs has no `input.claims.gpu`: every rule above
# that a set names then refuses. The broker itself already refuses secrets
# labelled `gpus = N` to VMs with fewer than N GPUs, whatever the policy.
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

# --- GPUs -------------------------------------------------------------------

gpu := object.get(input.claims, "gpu", {})

devices := object.get(gpu, "devices", [])

reasons contains sprintf("gpu_count_mismatch: %v GPUs, at least %v needed", [have, want]) if {
	some rv in sets
	want := rv.gpu.count
	have := object.get(gpu, "count", 0)
	have < want
}

reasons contains sprintf("policy_denied: GPU mode %v not allowed", [mode]) if {
	some rv in sets
	allowed := rv.gpu.modes
	mode := object.get(gpu, "mode", "missing")
	not mode in allowed
}

reasons contains sprintf("policy_denied: GPU driver %v not allowed", [version]) if {
	some rv in sets
	allowed := rv.gpu.drivers
	some device in devices
	version := object.get(device, "driver_version", "missing")
	not version in allowed
}

reasons contains sprintf("policy_denied: GPU VBIOS %v not allowed", [version]) if {
	some rv in sets
	allowed := rv.gpu.vbios
	some device in devices
	version := object.get(device, "vbios_version", "missing")
	not version in allowed
}

reasons contains "gpu_revoked: the GPUs' revocation status was not shown good" if {
	some rv in sets
	rv.gpu.revocation == "good"
	not gpu.revocation == "good"
}

# The broker appraises every device against the RIMs of its driver and
# VBIOS (`[gpu] rim_dir`): `match`, `mismatch`, `missing` (no RIM imported).
reasons contains sprintf("gpu_measurement_mismatch: GPU %v RIM appraisal %v", [i, result]) if {
	some rv in sets
	rv.gpu.rims == "match"
	some i, device in devices
	result := object.get(object.get(device, "rim", {}), "result", "not_appraised")
	result != "match"
}

reasons contains "policy_denied: no GPUs presented" if {
	some rv in sets
	rv.gpu
	count(devices) == 0
}

# A device whose block `index` is missing, or not among `allowed`, refuses.
measurement_ok(device, index, allowed) if {
	some m in device.measurements
	m.index == index
	some want in allowed
	lower(want) == m.digest
}

reasons contains sprintf("policy_denied: GPU %v measurement %v not allowed", [i, index]) if {
	some rv in sets
	some key, allowed in rv.gpu.measurements
	index := to_number(key)
	some i, device in devices
	not measurement_ok(device, index, allowed)
}
