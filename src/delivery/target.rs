//! Which URLs a channel may point at, and which addresses a delivery may connect to.
//!
//! Link-local addresses (169.254.0.0/16, fe80::/10, where cloud metadata services answer)
//! and the unspecified address are never a target. With `delivery_public_only`, neither is
//! any loopback, private, shared or unique-local address. Host names are checked where they
//! resolve, at each attempt ([`GuardedResolver`]), so a name that later points at a refused
//! address is refused then.

use crate::policy::names::FieldError;
use reqwest::Url;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why an address is refused, or `None` when a delivery may connect to it.
pub fn refused_address(ip: IpAddr, public_only: bool) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => refused_v4(v4, public_only),
        IpAddr::V6(v6) => refused_v6(v6, public_only),
    }
}

fn refused_v4(ip: Ipv4Addr, public_only: bool) -> Option<&'static str> {
    if ip.is_link_local() {
        return Some("a link-local address (169.254.0.0/16, where cloud metadata answers)");
    }
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        return Some("not a unicast address");
    }
    if public_only {
        let [a, b, ..] = ip.octets();
        if ip.is_loopback() {
            return Some("a loopback address, and only public addresses are allowed");
        }
        if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
            return Some("a private address, and only public addresses are allowed");
        }
    }
    None
}

fn refused_v6(ip: Ipv6Addr, public_only: bool) -> Option<&'static str> {
    let first = ip.segments()[0];
    if first & 0xffc0 == 0xfe80 {
        return Some("a link-local address (fe80::/10)");
    }
    // AWS's instance metadata service over IPv6.
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return Some("a cloud metadata address");
    }
    if ip.is_unspecified() || ip.is_multicast() {
        return Some("not a unicast address");
    }
    if public_only {
        if ip.is_loopback() {
            return Some("a loopback address, and only public addresses are allowed");
        }
        if first & 0xfe00 == 0xfc00 {
            return Some("a unique local address, and only public addresses are allowed");
        }
    }
    None
}

/// Checks a channel's URL: http or https, a host, no user name or password (secrets go in
/// `secret`), and, when the host is an address, one a delivery may connect to.
pub fn check_url(field: &str, url: &str, public_only: bool) -> Result<Url, FieldError> {
    let parsed =
        Url::parse(url).map_err(|e| FieldError::new(field, format!("is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(FieldError::new(
            field,
            format!("must be an http or https URL, not {:?}", parsed.scheme()),
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(FieldError::new(
            field,
            "must not carry a user name or password; the channel's secret signs each delivery",
        ));
    }
    let refused = |why: &str| FieldError::new(field, format!("points at {why}"));
    match parsed.host() {
        None => return Err(FieldError::new(field, "has no host")),
        Some(url::Host::Ipv4(v4)) => {
            if let Some(why) = refused_address(IpAddr::V4(v4), public_only) {
                return Err(refused(why));
            }
        }
        Some(url::Host::Ipv6(v6)) => {
            if let Some(why) = refused_address(IpAddr::V6(v6), public_only) {
                return Err(refused(why));
            }
        }
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "metadata.google.internal" || name == "metadata" {
                return Err(refused("a cloud metadata service"));
            }
        }
    }
    Ok(parsed)
}

/// Resolves host names for deliveries and drops every address a delivery may not connect
/// to; a name left with none fails with the reason.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    pub public_only: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let public_only = self.public_only;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut why = "no address";
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match refused_address(a.ip(), public_only) {
                    Some(reason) => {
                        why = reason;
                        false
                    }
                    None => true,
                })
                .collect();
            if allowed.is_empty() {
                let e = std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{host} resolves to {why}; not a delivery target"),
                );
                return Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str, public_only: bool) -> Option<String> {
        check_url("channel.url", url, public_only)
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn link_local_and_metadata_are_never_targets() {
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://169.254.1.1:8080/",
            "http://[fe80::1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[fd00:ec2::254]/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://0.0.0.0:80/",
        ] {
            let e = refused(url, false).unwrap_or_else(|| panic!("{url} accepted"));
            assert!(e.starts_with("channel.url: "), "{e}");
        }
    }

    #[test]
    fn only_http_urls_with_a_host_and_no_credentials() {
        for url in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "example.com/hook",
            "https://user:pw@example.com/",
            "",
        ] {
            assert!(refused(url, false).is_some(), "{url} accepted");
        }
        assert_eq!(refused("https://hooks.example.com/toolgate", true), None);
        assert_eq!(refused("http://127.0.0.1:8080/hook", false), None);
    }

    #[test]
    fn public_only_refuses_private_and_loopback() {
        for url in [
            "http://127.0.0.1/",
            "http://10.1.2.3/",
            "http://192.168.0.10/",
            "http://172.16.0.1/",
            "http://100.64.0.1/",
            "http://[::1]/",
            "http://[fd12::1]/",
        ] {
            assert!(refused(url, true).is_some(), "{url} accepted");
            assert_eq!(refused(url, false), None, "{url}");
        }
        assert_eq!(refused("http://93.184.215.14/", true), None);
    }
}
