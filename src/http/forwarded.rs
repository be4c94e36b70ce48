//! Proxy headers: which peers may say who the client is.
//!
//! Behind a reverse proxy every request comes from the proxy. A peer listed
//! in `--forwarded-allow-ips` (an address, a network in CIDR form, or `*`;
//! peers on a UNIX socket always, since the socket's permissions already say
//! who may connect) is believed about two things, as gunicorn and uvicorn
//! believe them:
//!
//! - `X-Forwarded-Proto` (`http` or `https`; the last of a list) is the
//!   scheme the client used ([`scheme`]);
//! - `X-Forwarded-For` names the client: walking the list from the right
//!   (the hop nearest to us), trusted proxies are skipped and the first
//!   other address is the client; if every hop is trusted, the leftmost
//!   ([`TrustedProxies::client`]). The port the client used is not known.
//!
//! The connection decides once, at accept, whether its peer is trusted
//! ([`crate::http::service::ConnInfo::trusted_proxy`]); a service applies
//! these rules to the headers of that connection's requests.
//!
//! A value that is not one of those (a scheme we do not serve, a hop that is
//! not an IP address) is ignored rather than passed on: the environ keeps
//! what the connection itself says. The headers stay in the environ as
//! `HTTP_X_FORWARDED_*` either way.

use std::net::IpAddr;

/// The peers whose proxy headers are believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    any: bool,
    nets: Vec<(IpAddr, u8)>,
}

/// `fe80::1%eth0` and `::ffff:10.0.0.1` read as the addresses they name.
fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    let text = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    let text = text.split('%').next().unwrap_or(text);
    let ip: IpAddr = text.parse().ok()?;
    Some(canonical(ip))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl TrustedProxies {
    /// Parse `--forwarded-allow-ips` entries; the error names the bad one.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<TrustedProxies, String> {
        let mut out = TrustedProxies::default();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            if entry == "*" {
                out.any = true;
                continue;
            }
            let bad = || {
                format!(
                    "invalid forwarded-allow-ips entry {entry:?}: expected an IP address, \
                     a network such as 10.0.0.0/8, or *"
                )
            };
            let (addr, prefix) = match entry.split_once('/') {
                Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
                None => (entry, None),
            };
            let ip = parse_ip(addr).ok_or_else(bad)?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = prefix.unwrap_or(max);
            if prefix > max {
                return Err(bad());
            }
            out.nets.push((ip, prefix));
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        !self.any && self.nets.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.any || self.nets.iter().any(|&(n, p)| in_net(ip, n, p))
    }

    /// Whether a connection from `peer_host` (empty for a UNIX socket) may
    /// set the proxy headers.
    pub fn trusts_peer(&self, unix: bool, peer_host: &str) -> bool {
        if unix {
            return true;
        }
        parse_ip(peer_host).is_some_and(|ip| self.trusts(ip))
    }

    /// The client named by an `X-Forwarded-For` value (all of the request's
    /// such headers, joined with commas), or `None` to keep the peer.
    pub fn client(&self, forwarded_for: &str) -> Option<String> {
        let hops: Vec<&str> = forwarded_for
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        let mut chosen = None;
        for hop in hops.iter().rev() {
            let ip = parse_ip(hop)?;
            chosen = Some(ip);
            if !self.trusts(ip) {
                break;
            }
        }
        chosen.map(|ip| ip.to_string())
    }
}

/// The scheme an `X-Forwarded-Proto` value names, if it is one we serve.
pub fn scheme(forwarded_proto: &str) -> Option<&'static str> {
    let last = forwarded_proto.rsplit(',').next()?.trim();
    if last.eq_ignore_ascii_case("https") {
        Some("https")
    } else if last.eq_ignore_ascii_case("http") {
        Some("http")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(entries).unwrap()
    }

    #[test]
    fn parses_addresses_networks_and_star() {
        let p = proxies(&["127.0.0.1", "::1", "10.0.0.0/8", "fd00::/8"]);
        assert!(p.trusts_peer(false, "127.0.0.1"));
        assert!(p.trusts_peer(false, "::1"));
        assert!(p.trusts_peer(false, "10.20.30.40"));
        assert!(p.trusts_peer(false, "::ffff:10.1.2.3"), "v4-mapped");
        assert!(p.trusts_peer(false, "fd12::5"));
        assert!(!p.trusts_peer(false, "11.0.0.1"));
        assert!(!p.trusts_peer(false, "2001:db8::1"));
        assert!(!p.trusts_peer(false, ""));
        assert!(p.trusts_peer(true, ""), "a UNIX socket peer is trusted");
        assert!(proxies(&["*"]).trusts_peer(false, "203.0.113.9"));
        assert!(proxies(&[]).is_empty());
        assert!(!proxies(&[]).trusts_peer(false, "127.0.0.1"));
    }

    #[test]
    fn rejects_bad_entries_by_name() {
        for bad in ["localhost", "10.0.0.0/33", "::/129", "1.2.3.4/x", "1.2.3"] {
            let e = TrustedProxies::parse(&[bad]).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn client_is_the_first_untrusted_hop_from_the_right() {
        let p = proxies(&["127.0.0.1", "10.0.0.0/8"]);
        assert_eq!(p.client("203.0.113.7").as_deref(), Some("203.0.113.7"));
        assert_eq!(
            p.client("198.51.100.1, 203.0.113.7, 10.0.0.2").as_deref(),
            Some("203.0.113.7"),
            "a spoofed leftmost entry is not believed"
        );
        assert_eq!(p.client("10.0.0.3, 10.0.0.2").as_deref(), Some("10.0.0.3"));
        assert_eq!(p.client("[2001:db8::1]").as_deref(), Some("2001:db8::1"));
        assert_eq!(p.client(""), None);
        assert_eq!(p.client("unknown, 10.0.0.2"), None, "not an address");
        assert_eq!(p.client("203.0.113.7, garbage"), None);
    }

    #[test]
    fn scheme_is_the_last_listed() {
        assert_eq!(scheme("https"), Some("https"));
        assert_eq!(scheme("HTTP"), Some("http"));
        assert_eq!(scheme("http, https"), Some("https"));
        assert_eq!(scheme("ftp"), None);
        assert_eq!(scheme(""), None);
    }
}
