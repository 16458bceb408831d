//! Client address resolution. STUB: to be completed.

use std::net::IpAddr;

use http::HeaderMap;

use crate::error::ConfigError;

/// Proxies whose forwarding headers are believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    nets: Vec<ipnet::IpNet>,
}

impl TrustedProxies {
    /// Trusts nobody: the client is always the socket peer.
    pub fn none() -> Self {
        Self::default()
    }
    /// Parses CIDRs (or bare addresses).
    pub fn parse<I, S>(cidrs: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut nets = Vec::new();
        for c in cidrs {
            nets.push(c.as_ref().parse().map_err(|_| ConfigError::new("bad cidr"))?);
        }
        Ok(Self { nets })
    }
    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }
    /// The client address for a request from `peer` with `headers`.
    pub fn client_ip(&self, peer: IpAddr, _headers: &HeaderMap) -> IpAddr {
        peer
    }
}
