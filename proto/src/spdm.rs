//! The wire constants of NVIDIA's attestation report that the guest (the
//! NVML buffer checks, the simulated GPUs) and the broker (the GPU verifier)
//! must agree on: the SPDM 1.1 GET_MEASUREMENTS request and MEASUREMENTS
//! response (DMTF DSP0274 1.1, tables 40-45) and the types of NVIDIA's
//! opaque data. Constants only; the layout is described, and parsed
//! strictly, by the broker's `evidence::gpu::spdm`.
//!
//! ```text
//! request (37)   SPDMVersion 0x11 | Code 0xE0 | Param1 0x01 (sign) | Param2 0xFF (all)
//!                | Nonce[32] | SlotID 0
//! response       SPDMVersion 0x11 | Code 0x60 | Param1 | Param2 | NumberOfBlocks
//!                | MeasurementRecordLength (u24) | record | ResponderNonce[32]
//!                | OpaqueLength (u16) | OpaqueData | Signature[96]
//! ```

/// SPDM version 1.1, the only one NVIDIA devices speak for attestation.
pub const SPDM_VERSION_11: u8 = 0x11;

/// GET_MEASUREMENTS request code.
pub const CODE_GET_MEASUREMENTS: u8 = 0xE0;

/// MEASUREMENTS response code.
pub const CODE_MEASUREMENTS: u8 = 0x60;

/// GET_MEASUREMENTS Param1: a signature is requested.
pub const PARAM1_SIGNATURE_REQUESTED: u8 = 0x01;

/// GET_MEASUREMENTS Param2: all measurement blocks.
pub const PARAM2_ALL_MEASUREMENTS: u8 = 0xFF;

/// The first four bytes of the request: SPDM 1.1, GET_MEASUREMENTS,
/// signature requested, all measurements.
pub const REQUEST_HEADER: [u8; 4] =
    [SPDM_VERSION_11, CODE_GET_MEASUREMENTS, PARAM1_SIGNATURE_REQUESTED, PARAM2_ALL_MEASUREMENTS];

/// The first two bytes of the response: SPDM 1.1, MEASUREMENTS.
pub const RESPONSE_HEADER: [u8; 2] = [SPDM_VERSION_11, CODE_MEASUREMENTS];

/// Length of the nonce in the request (the GPU nonce, [`crate::GPU_NONCE_LEN`]).
pub const NONCE_LEN: usize = 32;

/// Length of the GET_MEASUREMENTS request with a nonce and a slot.
pub const REQUEST_LEN: usize = REQUEST_HEADER.len() + NONCE_LEN + 1;

/// Length of the ECDSA P-384 `r || s` signature ending the response.
pub const SIGNATURE_LEN: usize = 96;

/// Length of a SHA-384 measurement.
pub const DIGEST_LEN: usize = 48;

/// DMTF measurement specification (MeasurementSpecification bit 0).
pub const MEAS_SPEC_DMTF: u8 = 0x01;

/// The versioned opaque format's magic (from the drivers of CUDA 13.5 on;
/// without it, the opaque data is the legacy TLV list).
pub const NVDAOD_MAGIC: [u8; 6] = *b"NVDAOD";

/// NVIDIA's opaque data types (`OpaqueDataType`) that the claims use and the
/// simulated GPUs report.
pub mod opaque_type {
    /// The driver version, NUL-terminated ASCII.
    pub const DRIVER_VERSION: u16 = 3;
    /// The board SKU, ASCII.
    pub const SKU: u16 = 5;
    /// The VBIOS version (four bytes reversed, then the fifth).
    pub const VBIOS_VERSION: u16 = 6;
    /// The NVDEC0 status (0xAA or 0x55).
    pub const NVDEC0_STATUS: u16 = 11;
    /// The chip SKU, ASCII.
    pub const CHIP_SKU: u16 = 15;
    /// The project, ASCII.
    pub const PROJECT: u16 = 17;
    /// The project SKU, ASCII.
    pub const PROJECT_SKU: u16 = 18;
    /// The firmware digest (FWID), SHA-384.
    pub const FWID: u16 = 20;
    /// The list of PDIs (8 bytes each).
    pub const PDI: u16 = 22;
    /// The opaque data version (u16).
    pub const OPAQUE_DATA_VERSION: u16 = 34;
    /// The chip info, ASCII.
    pub const CHIP_INFO: u16 = 35;
    /// The multi-GPU mode (u16: 0 single-GPU passthrough, 1 multi-GPU
    /// protected passthrough).
    pub const FEATURE_FLAG: u16 = 36;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_37_bytes_and_its_nonce_is_the_gpu_nonce() {
        assert_eq!(REQUEST_LEN, 37);
        assert_eq!(NONCE_LEN, crate::GPU_NONCE_LEN);
        assert_eq!(REQUEST_HEADER, [0x11, 0xE0, 0x01, 0xFF]);
        assert_eq!(RESPONSE_HEADER, [0x11, 0x60]);
    }
}
