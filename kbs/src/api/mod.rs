//! gRPC front ends: one file per service.

pub mod admin;
pub mod coco;
pub mod key_broker;
pub mod policy_admin;
pub mod status;

/// The peer address of a request, for audit.
pub(crate) fn peer<T>(request: &tonic::Request<T>) -> String {
    request.remote_addr().map(|a| a.to_string()).unwrap_or_else(|| "unknown".into())
}
