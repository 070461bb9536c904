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

/// The audit record of a refusal made before any effect, for
/// [`crate::audit::AuditLog::record_refusal`]: `action` by `caller`, with
/// the error's reason code and its cause (never a credential) for operators.
pub(crate) fn refusal_event(action: &'static str, caller: String, e: &crate::error::Error) -> crate::audit::Event {
    crate::audit::Event {
        reason: Some(e.reason().as_str()),
        reasons: vec![e.to_string()],
        ..crate::audit::Event::new(action, caller)
    }
}
