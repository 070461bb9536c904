package kbs.release_test

import rego.v1

import data.kbs.release

m1 := concat("", [x | some _ in numbers.range(1, 48); x := "5a"])

m2 := concat("", [x | some _ in numbers.range(1, 48); x := "77"])

snp_claims(overrides) := object.union(
	{
		"tee": "snp",
		"measurement": m1,
		"debug": false,
		"init_data_digest": "00",
		"snp": {
			"generation": "milan",
			"vmpl": 0,
			"policy": {"debug": false},
			"reported_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
		},
	},
	overrides,
)

tdx_claims(overrides) := object.union(
	{
		"tee": "tdx",
		"measurement": m1,
		"debug": false,
		"init_data_digest": "00",
		"tdx": {
			"td_attributes": {"debug": false},
			"tcb_status": "UpToDate",
			"rtmr0": "00", "rtmr1": "01", "rtmr2": "02", "rtmr3": "03",
		},
	},
	overrides,
)

secret(allowed, labels) := {"name": "models/llama/key", "version": 1, "labels": labels, "allowed_measurements": allowed}

refs := {"default": {"measurements": [m1]}}

test_allows_snp_guest_in_reference_values if {
	release.allow with input as {"claims": snp_claims({}), "secret": secret([], {})}
		with data.reference_values as refs
}

test_allows_measurement_from_secret_allow_list if {
	release.allow with input as {"claims": snp_claims({}), "secret": secret([m1], {})}
		with data.reference_values as {}
}

# A guest whose claims carry no measurement at all is refused, and the
# reason still says why.
test_refuses_missing_measurement if {
	claims := object.remove(snp_claims({}), ["measurement"])
	r := release.reasons with input as {"claims": claims, "secret": secret([m1], {})}
		with data.reference_values as refs
	r == {"measurement_not_allowed: missing for models/llama/key"}
	not release.allow with input as {"claims": claims, "secret": secret([m1], {})}
		with data.reference_values as refs
}

test_refuses_unknown_measurement if {
	r := release.reasons with input as {"claims": snp_claims({"measurement": m2}), "secret": secret([m1], {})}
		with data.reference_values as refs
	r == {sprintf("measurement_not_allowed: %v for models/llama/key", [m2])}
}

test_refuses_debug_snp if {
	not release.allow with input as {"claims": snp_claims({"debug": true}), "secret": secret([m1], {})}
	"debug_enabled" in release.reasons with input as {"claims": snp_claims({"debug": true}), "secret": secret([m1], {})}
}

test_refuses_debug_policy_bit_even_if_summary_disagrees if {
	c := snp_claims({"snp": {"generation": "milan", "vmpl": 0, "policy": {"debug": true}, "reported_tcb": {}}})
	"debug_enabled" in release.reasons with input as {"claims": c, "secret": secret([m1], {})}
}

test_refuses_missing_debug_flag if {
	c := json.remove(snp_claims({}), ["debug"])
	"debug_enabled" in release.reasons with input as {"claims": c, "secret": secret([m1], {})}
}

test_refuses_vmpl_1 if {
	c := snp_claims({"snp": {"generation": "milan", "vmpl": 1, "policy": {"debug": false}, "reported_tcb": {}}})
	release.reasons == {"vmpl_not_allowed: 1 != 0"} with input as {"claims": c, "secret": secret([m1], {})}
}

test_refuses_tcb_below_minimum if {
	refs_tcb := {"default": {"measurements": [m1], "snp_min_tcb": {"milan": {"snp": 23, "microcode": 100}}}}
	release.reasons == {"tcb_below_minimum: snp 8 < 23"} with input as {"claims": snp_claims({}), "secret": secret([], {})}
		with data.reference_values as refs_tcb
}

test_minimum_of_another_generation_does_not_apply if {
	refs_tcb := {"default": {"measurements": [m1], "snp_min_tcb": {"genoa": {"snp": 23}}}}
	release.allow with input as {"claims": snp_claims({}), "secret": secret([], {})}
		with data.reference_values as refs_tcb
}

test_secret_label_selects_sets if {
	sets := {"default": {"measurements": [m2]}, "other": {"measurements": []}, "llama": {"measurements": [m1]}}
	release.allow with input as {"claims": snp_claims({}), "secret": secret([], {"refvals": "other, llama"})}
		with data.reference_values as sets
	not release.allow with input as {"claims": snp_claims({}), "secret": secret([], {})}
		with data.reference_values as sets
}

test_a_label_naming_a_missing_set_refuses if {
	sets := {"llama": {"measurements": [m1]}}
	release.reasons == {"policy_denied: reference value set typo, named by the secret's refvals label, does not exist"} with input as {"claims": snp_claims({}), "secret": secret([m1], {"refvals": "llama, typo"})}
		with data.reference_values as sets
}

test_allows_tdx_up_to_date if {
	release.allow with input as {"claims": tdx_claims({}), "secret": secret([], {})}
		with data.reference_values as refs
}

test_refuses_tdx_debug if {
	c := tdx_claims({"tdx": {"td_attributes": {"debug": true}, "tcb_status": "UpToDate"}})
	"debug_enabled" in release.reasons with input as {"claims": c, "secret": secret([m1], {})}
}

test_refuses_tdx_out_of_date if {
	c := tdx_claims({"tdx": {"td_attributes": {"debug": false}, "tcb_status": "OutOfDate"}})
	release.reasons == {"tcb_status_not_allowed: OutOfDate"} with input as {"claims": c, "secret": secret([m1], {})}
}

test_tdx_status_list_is_configurable if {
	c := tdx_claims({"tdx": {"td_attributes": {"debug": false}, "tcb_status": "SWHardeningNeeded"}})
	sets := {"default": {"measurements": [m1], "tdx_tcb_statuses": ["UpToDate", "SWHardeningNeeded"]}}
	release.allow with input as {"claims": c, "secret": secret([], {})} with data.reference_values as sets
}

test_refuses_tdx_without_status if {
	c := json.remove(tdx_claims({}), ["tdx/tcb_status"])
	"tcb_status_not_allowed: missing" in release.reasons with input as {"claims": c, "secret": secret([m1], {})}
}

test_tdx_rtmrs_when_configured if {
	good := {"default": {"measurements": [m1], "tdx_rtmrs": [["00", "01", "02", "03"]]}}
	bad := {"default": {"measurements": [m1], "tdx_rtmrs": [["00", "01", "02", "ff"]]}}
	release.allow with input as {"claims": tdx_claims({}), "secret": secret([], {})} with data.reference_values as good
	release.reasons == {"rtmr_not_allowed"} with input as {"claims": tdx_claims({}), "secret": secret([], {})}
		with data.reference_values as bad
}

test_refuses_unknown_tee if {
	c := object.union(snp_claims({}), {"tee": "sgx"})
	"tee_not_supported: sgx" in release.reasons with input as {"claims": c, "secret": secret([m1], {})}
}

test_refuses_empty_input if {
	not release.allow with input as {}
}
