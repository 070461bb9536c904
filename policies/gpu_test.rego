package kbs.release_test

import rego.v1

import data.kbs.release

m1 := concat("", [x | some _ in numbers.range(1, 48); x := "5a"])

d3 := concat("", [x | some _ in numbers.range(1, 48); x := "03"])

device(driver) := {
	"class": "gpu", "arch": "hopper", "driver_version": driver, "vbios_version": "96.00.CF.00.02",
	"measurements": [{"index": 1, "digest": "00"}, {"index": 3, "digest": d3}],
}

claims(gpu) := object.union(
	{
		"tee": "snp", "measurement": m1, "debug": false,
		"snp": {"vmpl": 0, "policy": {"debug": false}},
	},
	gpu,
)

eight := {"gpu": {
	"count": 8, "mode": "mpt", "revocation": "not_checked",
	"driver_versions": ["570.124.06"], "vbios_versions": ["96.00.CF.00.02"],
	"devices": [device("570.124.06") | some _ in numbers.range(1, 8)],
}}

secret := {"name": "models/llama/key", "version": 1, "labels": {}, "allowed_measurements": [m1]}

refs := {"default": {"gpu": {
	"count": 8, "modes": ["mpt", "ppcie"], "drivers": ["570.124.06"], "vbios": ["96.00.CF.00.02"],
	"measurements": {"3": [upper(d3)]},
}}}

input_for(c) := {"claims": c, "secret": secret, "now": 0}

test_eight_expected_gpus_allowed if {
	release.allow with input as input_for(claims(eight)) with data.reference_values as refs
}

test_no_gpus_refused if {
	release.reasons == {"gpu_count_mismatch: 0 GPUs, at least 8 needed", "policy_denied: GPU mode missing not allowed", "policy_denied: no GPUs presented"} with input as input_for(claims({}))
		with data.reference_values as refs
}

test_fewer_gpus_refused if {
	seven := object.union(eight, {"gpu": object.union(eight.gpu, {"count": 7})})
	release.reasons == {"gpu_count_mismatch: 7 GPUs, at least 8 needed"} with input as input_for(claims(seven))
		with data.reference_values as refs
}

test_unknown_driver_refused if {
	odd := object.union(eight, {"gpu": object.union(eight.gpu, {"devices": [device("535.86.09")]})})
	release.reasons == {"policy_denied: GPU driver 535.86.09 not allowed"} with input as input_for(claims(odd))
		with data.reference_values as refs
}

test_wrong_mode_refused if {
	spt := object.union(eight, {"gpu": object.union(eight.gpu, {"mode": "spt"})})
	release.reasons == {"policy_denied: GPU mode spt not allowed"} with input as input_for(claims(spt))
		with data.reference_values as refs
}

test_measurement_mismatch_refused if {
	bad := object.union(device("570.124.06"), {"measurements": [{"index": 3, "digest": "ff"}]})
	odd := object.union(eight, {"gpu": object.union(eight.gpu, {"devices": [bad]})})
	release.reasons == {"policy_denied: GPU 0 measurement 3 not allowed"} with input as input_for(claims(odd))
		with data.reference_values as refs
}

test_missing_measurement_refused if {
	bad := object.union(device("570.124.06"), {"measurements": []})
	odd := object.union(eight, {"gpu": object.union(eight.gpu, {"devices": [bad]})})
	release.reasons == {"policy_denied: GPU 0 measurement 3 not allowed"} with input as input_for(claims(odd))
		with data.reference_values as refs
}

test_revocation_required_when_configured if {
	strict := {"default": {"gpu": object.union(refs["default"].gpu, {"revocation": "good"})}}
	release.reasons == {"gpu_revoked: the GPUs' revocation status was not shown good"} with input as input_for(claims(eight))
		with data.reference_values as strict
	checked := object.union(eight, {"gpu": object.union(eight.gpu, {"revocation": "good"})})
	release.allow with input as input_for(claims(checked)) with data.reference_values as strict
}

test_sets_without_gpu_rules_ignore_gpus if {
	release.allow with input as input_for(claims({})) with data.reference_values as {"default": {}}
}
