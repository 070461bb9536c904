//! What the broker's outbound HTTP clients (the Vault/OpenBao store, the
//! AMD KDS and Intel PCS collateral fetchers) share.
//!
//! A leaf: it imports no other module of the crate, so both the store and
//! the evidence fetchers can use it.

/// Whether `address` names this machine (`localhost` or a loopback IP):
/// the only hosts plain `http` is accepted (or not warned about) for.
pub fn is_loopback(address: &reqwest::Url) -> bool {
    match address.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for url in ["http://localhost:8200", "http://127.0.0.1/x", "http://127.9.9.9", "http://[::1]:80/"] {
            assert!(is_loopback(&reqwest::Url::parse(url).unwrap()), "{url}");
        }
        for url in ["http://example.com", "http://10.0.0.1", "http://[::2]/", "http://localhost.example.com"] {
            assert!(!is_loopback(&reqwest::Url::parse(url).unwrap()), "{url}");
        }
    }
}
