package kbs.release_test

import rego.v1

import data.kbs.release

m1 := concat("", [x | some _ in numbers.range(1, 48); x := "5a"])

claims(snp_level) := {
	"tee": "snp",
	"measurement": m1,
	"debug": false,
	"snp": {
		"generation": "milan",
		"vmpl": 0,
		"policy": {"debug": false},
		"reported_tcb": {"bootloader": 3, "tee": 0, "snp": snp_level, "microcode": 115},
	},
}

secret := {"name": "models/llama/key", "version": 1, "labels": {}, "allowed_measurements": [m1]}

refs := {"default": {
	"snp_min_tcb": {"milan": {"snp": 23}},
	"snp_tcb_grace": {"until": 2000, "snp_min_tcb": {"milan": {"snp": 22}}},
}}

test_new_firmware_always_allowed if {
	release.allow with input as {"claims": claims(23), "secret": secret, "now": 5000} with data.reference_values as refs
}

test_old_firmware_allowed_during_grace if {
	release.allow with input as {"claims": claims(22), "secret": secret, "now": 1000} with data.reference_values as refs
}

test_old_firmware_refused_after_grace if {
	release.reasons == {"tcb_below_minimum: snp 22 < 23"} with input as {"claims": claims(22), "secret": secret, "now": 2000}
		with data.reference_values as refs
}

test_older_firmware_refused_even_during_grace if {
	release.reasons == {"tcb_below_minimum: snp 21 < 23"} with input as {"claims": claims(21), "secret": secret, "now": 1000}
		with data.reference_values as refs
}

test_no_grace_without_clock if {
	not release.allow with input as {"claims": claims(22), "secret": secret} with data.reference_values as refs
}

test_refuses_missing_measurement if {
	c := object.remove(claims(23), ["measurement"])
	release.reasons == {"measurement_not_allowed: missing for models/llama/key"} with input as {"claims": c, "secret": secret, "now": 5000}
		with data.reference_values as refs
}
