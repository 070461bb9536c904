package kbs.release_test

import rego.v1

import data.kbs.release

m1 := concat("", [x | some _ in numbers.range(1, 48); x := "5a"])

d32 := concat("", [x | some _ in numbers.range(1, 32); x := "ab"])

claims(digest) := {
	"tee": "snp",
	"measurement": m1,
	"debug": false,
	"init_data_digest": digest,
	"snp": {"vmpl": 0},
}

tdx_claims(digest) := {"tee": "tdx", "measurement": m1, "debug": false, "init_data_digest": digest}

secret := {"name": "models/llama/key", "version": 1, "labels": {}, "allowed_measurements": [m1]}

refs := {"default": {"init_data_digests": [d32]}}

test_allows_pinned_init_data if {
	release.allow with input as {"claims": claims(d32), "secret": secret} with data.reference_values as refs
}

test_allows_padded_mrconfigid if {
	padded := concat("", [d32, concat("", [x | some _ in numbers.range(1, 16); x := "00"])])
	release.allow with input as {"claims": tdx_claims(padded), "secret": secret} with data.reference_values as refs
}

test_refuses_other_init_data if {
	other := concat("", [x | some _ in numbers.range(1, 32); x := "cd"])
	release.reasons == {sprintf("init_data_not_allowed: %v", [other])} with input as {"claims": claims(other), "secret": secret}
		with data.reference_values as refs
}

test_refuses_padding_that_is_not_zero if {
	padded := concat("", [d32, concat("", [x | some _ in numbers.range(1, 16); x := "01"])])
	not release.allow with input as {"claims": tdx_claims(padded), "secret": secret} with data.reference_values as refs
}

test_refuses_without_configured_digests if {
	not release.allow with input as {"claims": claims(d32), "secret": secret} with data.reference_values as {}
}

test_still_refuses_debug if {
	c := object.union(claims(d32), {"debug": true})
	"debug_enabled" in release.reasons with input as {"claims": c, "secret": secret} with data.reference_values as refs
}

test_refuses_missing_measurement if {
	c := object.remove(claims(d32), ["measurement"])
	release.reasons == {"measurement_not_allowed: missing for models/llama/key"} with input as {"claims": c, "secret": secret}
		with data.reference_values as refs
}
