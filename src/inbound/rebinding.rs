//! DNS-rebinding protection for what Mandate answers itself (the native `tools/call` path): the
//! same Host and Origin allow-lists rmcp's transport applies to everything else.
//!
//! An entry is `host` (any port) or `host:port`; origins are `scheme://host[:port]`, with `:*`
//! for any port. An empty origin list means Origin is not checked (rmcp's default), a request
//! without Origin always passes.

use axum::http::{HeaderMap, header};

/// The allow-lists of one mission endpoint (the host entries parsed once, not per request).
#[derive(Debug, Clone, Default)]
pub struct Allowed {
    /// `host` (lowercase, no brackets) and the port when the entry names one.
    hosts: Vec<(String, Option<u16>)>,
    origins: Vec<String>,
}

/// `host[:port]` → (lowercase host without brackets, port).
fn split_authority(value: &str) -> Option<(String, Option<u16>)> {
    let value = value.trim();
    // A bare IPv6 address (`::1`) as written in allow-lists.
    if value.matches(':').count() > 1 && !value.starts_with('[') {
        return Some((value.to_ascii_lowercase(), None));
    }
    let authority: http::uri::Authority = value.trim().parse().ok()?;
    Some((
        authority
            .host()
            .trim_matches(['[', ']'])
            .to_ascii_lowercase(),
        authority.port_u16(),
    ))
}

impl Allowed {
    /// Allow-lists from the configured entries; a host entry that does not parse allows nothing.
    pub fn new(hosts: &[String], origins: &[String]) -> Self {
        Self {
            hosts: hosts.iter().filter_map(|h| split_authority(h)).collect(),
            origins: origins.to_vec(),
        }
    }

    /// `Err` with the refusal text when the request must be refused (403).
    pub fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        if !self.hosts.is_empty() {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(split_authority);
            let Some((host, port)) = host else {
                return Err("Forbidden: Host header is not allowed");
            };
            let allowed = self.hosts.iter().any(|(allowed, allowed_port)| {
                *allowed == host && allowed_port.is_none_or(|p| Some(p) == port)
            });
            if !allowed {
                return Err("Forbidden: Host header is not allowed");
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN)
            && !self.origins.is_empty()
        {
            let ok = origin.to_str().ok().is_some_and(|o| self.origin_allowed(o));
            if !ok {
                return Err("Forbidden: Origin header is not allowed");
            }
        }
        Ok(())
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim();
        if origin.eq_ignore_ascii_case("null") {
            return self.origins.iter().any(|o| o.eq_ignore_ascii_case("null"));
        }
        let Some((scheme, rest)) = origin.split_once("://") else {
            return false;
        };
        let Some((host, port)) = split_authority(rest) else {
            return false;
        };
        let default = match scheme.to_ascii_lowercase().as_str() {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        };
        let port = port.or(default);
        self.origins.iter().any(|entry| {
            let Some((e_scheme, e_rest)) = entry.split_once("://") else {
                return false;
            };
            if !e_scheme.eq_ignore_ascii_case(scheme) {
                return false;
            }
            match e_rest.strip_suffix(":*") {
                Some(e_host) => split_authority(e_host).is_some_and(|(h, _)| h == host),
                None => split_authority(e_rest)
                    .is_some_and(|(h, p)| h == host && (p.or(default) == port || p.is_none())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn hosts_and_origins_are_checked_like_the_transport_does() {
        let hosts = ["localhost".into(), "127.0.0.1".into(), "::1".into()];
        let allowed = Allowed::new(&hosts, &[]);
        assert!(allowed.check(&headers("127.0.0.1:8080", None)).is_ok());
        assert!(allowed.check(&headers("[::1]:8080", None)).is_ok());
        assert!(allowed.check(&headers("evil.example:8080", None)).is_err());
        // No origin list: Origin is not checked.
        assert!(
            allowed
                .check(&headers("localhost", Some("http://evil.example")))
                .is_ok()
        );
        let strict = Allowed::new(
            &hosts,
            &["http://localhost:*".into(), "https://app.example".into()],
        );
        assert!(
            strict
                .check(&headers("localhost", Some("http://localhost:3000")))
                .is_ok()
        );
        assert!(
            strict
                .check(&headers("localhost", Some("https://app.example")))
                .is_ok()
        );
        assert!(
            strict
                .check(&headers("localhost", Some("https://app.example:443")))
                .is_ok()
        );
        assert!(
            strict
                .check(&headers("localhost", Some("http://evil.example")))
                .is_err()
        );
        assert!(strict.check(&headers("localhost", Some("null"))).is_err());
    }
}
