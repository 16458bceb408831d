//! The client address behind trusted reverse proxies.
//!
//! Forwarding headers (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`) are plain request headers:
//! any client can send them, with any value. The original trusted `X-Forwarded-For` from
//! everyone, so a caller could pick a fresh address per request and walk past every per-IP
//! rate limit and ban. Here they are believed only when the socket peer is a configured
//! trusted proxy, and then only as far as the chain of trusted proxies reaches:
//!
//! 1. The peer is not trusted: the client is the peer. Headers are ignored.
//! 2. The peer is trusted: the hop list is read from exactly one header, the one the
//!    operator's proxy writes ([`ForwardedHeader`]; default `X-Forwarded-For`). The others are
//!    ignored: a proxy that appends to `X-Forwarded-For` usually passes a client's own
//!    `Forwarded` or `X-Real-IP` through untouched, so reading "whichever is present" would let
//!    the client pick its address. Every line of the header counts, in order, as one
//!    comma-separated list (RFC 9110 §5.3), so a second header line cannot hide the first.
//! 3. The list is walked right to left (each proxy *appends* the address it saw), skipping
//!    trusted proxies. The first untrusted hop is the client: everything left of it was written
//!    by that client and may be forged.
//! 4. A hop that is not an address (`unknown`, an obfuscated `_id`, garbage) stops the walk:
//!    nothing trustworthy is known beyond it, so the last trusted address seen is the answer.
//!    If every hop is trusted, that is the leftmost hop.
//!
//! The resolved address reaches handlers as the [`ClientIp`] request extension. This module
//! also owns what the pipeline does with an address afterwards: grouping IPv6 by /64 for
//! rate-limit keys, and truncating it for audit events when configured.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are folded to IPv4 everywhere, so a
//! dual-stack listener cannot give one client two identities (two rate-limit buckets). At most
//! [`MAX_HOPS`] hops are examined, so a huge header costs little.
//!
//! ```
//! use std::net::IpAddr;
//! use http::HeaderMap;
//! use secure_routes::client_ip::TrustedProxies;
//!
//! let proxies = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
//! let mut headers = HeaderMap::new();
//! headers.insert("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.1.2.3".parse().unwrap());
//!
//! // Through the trusted proxy: the first untrusted hop from the right.
//! let peer: IpAddr = "10.0.0.1".parse().unwrap();
//! assert_eq!(proxies.client_ip(peer, &headers), "203.0.113.7".parse::<IpAddr>().unwrap());
//!
//! // Straight from the internet: the header is a lie until proven otherwise.
//! let peer: IpAddr = "198.51.100.9".parse().unwrap();
//! assert_eq!(proxies.client_ip(peer, &headers), peer);
//! ```

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::{IpNet, Ipv4Net};

use crate::error::ConfigError;

/// At most this many hops (from the right) are examined. A real proxy chain is a handful of
/// hops; a longer list only costs time and is cut off as if the walk had hit an unknown hop.
pub const MAX_HOPS: usize = 32;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The one forwarding header a trusted proxy writes, and the only one believed.
///
/// There is deliberately no "whichever is present" mode: a proxy that appends to
/// `X-Forwarded-For` but passes a client's own `Forwarded` through (nginx, most load
/// balancers) would let that client choose its address per request, and with it a fresh
/// rate-limit bucket and a forged audit trail. Name the header your proxy sets; the default
/// is `X-Forwarded-For`, the most common one.
///
/// ```
/// use secure_routes::client_ip::{ForwardedHeader, TrustedProxies};
/// let p = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
/// assert_eq!(p.header(), ForwardedHeader::XForwardedFor);
/// let h: ForwardedHeader = "x-real-ip".parse().unwrap();
/// assert_eq!(p.with_header(h).header(), ForwardedHeader::XRealIp);
/// assert!("x-client-ip".parse::<ForwardedHeader>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// RFC 7239 `Forwarded` only (its `for=` parameters).
    Forwarded,
    /// `X-Forwarded-For` only (the default).
    #[default]
    XForwardedFor,
    /// `X-Real-IP` only.
    XRealIp,
}

impl ForwardedHeader {
    /// The header's name in lower case, as [`FromStr`](std::str::FromStr) accepts it.
    pub const fn as_str(self) -> &'static str {
        match self {
            ForwardedHeader::Forwarded => "forwarded",
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::XRealIp => "x-real-ip",
        }
    }
}

impl std::fmt::Display for ForwardedHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ForwardedHeader {
    type Err = ConfigError;

    /// `forwarded`, `x-forwarded-for` or `x-real-ip`, in any case.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let s = s.trim();
        [
            ForwardedHeader::Forwarded,
            ForwardedHeader::XForwardedFor,
            ForwardedHeader::XRealIp,
        ]
        .into_iter()
        .find(|h| h.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| {
            ConfigError::new(format!(
                "client IP header {:?}: expected x-forwarded-for, forwarded or x-real-ip",
                s.chars().take(64).collect::<String>()
            ))
        })
    }
}

/// Proxies whose forwarding headers are believed.
///
/// ```
/// use secure_routes::client_ip::TrustedProxies;
/// let p = TrustedProxies::parse(["10.0.0.0/8", "192.0.2.1", "fd00::/8"]).unwrap();
/// assert!(p.contains("10.200.0.1".parse().unwrap()));
/// assert!(p.contains("::ffff:10.0.0.1".parse().unwrap())); // IPv4-mapped: folded
/// assert!(!p.contains("192.0.2.2".parse().unwrap()));
/// ```
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// Trusts nobody: the client is always the socket peer.
    ///
    /// ```
    /// use http::HeaderMap;
    /// use secure_routes::client_ip::TrustedProxies;
    /// let mut h = HeaderMap::new();
    /// h.insert("x-real-ip", "1.2.3.4".parse().unwrap());
    /// let peer = "127.0.0.1".parse().unwrap();
    /// assert_eq!(TrustedProxies::none().client_ip(peer, &h), peer);
    /// ```
    pub fn none() -> Self {
        Self::default()
    }

    /// Parses CIDRs (`10.0.0.0/8`, `fd00::/8`) or bare addresses (`192.0.2.1`, a /32 or /128).
    /// Surrounding whitespace is ignored; host bits in a CIDR are cleared. Every entry that is
    /// neither is reported, all at once.
    ///
    /// ```
    /// use secure_routes::client_ip::TrustedProxies;
    /// let err = TrustedProxies::parse(["10.0.0.0/33", "proxy.local", "10.0.0.1"]).unwrap_err();
    /// assert_eq!(err.problems().len(), 2);
    /// ```
    pub fn parse<I, S>(cidrs: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut nets = Vec::new();
        let mut problems = Vec::new();
        for (i, entry) in cidrs.into_iter().enumerate() {
            let entry = entry.as_ref().trim();
            match parse_net(entry) {
                Some(net) => nets.push(net),
                None => problems.push(format!(
                    "trusted proxy #{}: {:?} is neither an IP address nor a CIDR",
                    i + 1,
                    entry.chars().take(64).collect::<String>()
                )),
            }
        }
        ConfigError::check(
            problems,
            Self {
                nets,
                header: ForwardedHeader::default(),
            },
        )
    }

    /// Reads `header` (instead of the default `X-Forwarded-For`) from trusted proxies; the
    /// other forwarding headers are ignored.
    pub fn with_header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// The forwarding header read from trusted proxies.
    pub fn header(&self) -> ForwardedHeader {
        self.header
    }

    /// Whether no proxy is trusted.
    ///
    /// ```
    /// assert!(secure_routes::client_ip::TrustedProxies::none().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is a trusted proxy (IPv4-mapped IPv6 addresses are folded to IPv4 first).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = fold(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client address for a request from the socket peer `peer` with `headers`; see the
    /// [module documentation](self) for the rules. Never panics, whatever the headers hold.
    ///
    /// ```
    /// use std::net::IpAddr;
    /// use http::HeaderMap;
    /// use secure_routes::client_ip::{ForwardedHeader, TrustedProxies};
    /// let p = TrustedProxies::parse(["10.0.0.0/8"]).unwrap().with_header(ForwardedHeader::Forwarded);
    /// let mut h = HeaderMap::new();
    /// h.insert("forwarded", r#"for="[2001:db8::1]:4711", for=10.0.0.2"#.parse().unwrap());
    /// let ip = p.client_ip("10.0.0.1".parse().unwrap(), &h);
    /// assert_eq!(ip, "2001:db8::1".parse::<IpAddr>().unwrap());
    /// ```
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = fold(peer);
        if !self.contains(peer) {
            // Anyone can write forwarding headers; only a trusted proxy's are evidence.
            return peer;
        }
        let hops = self.hops(headers);
        // Walk right to left: each proxy appends what it saw, so the rightmost entries are the
        // most trustworthy and everything left of the first untrusted hop is client-written.
        let mut last_trusted = peer;
        for hop in hops.iter().rev() {
            match hop {
                Hop::Addr(ip) => {
                    let ip = fold(*ip);
                    if !self.contains(ip) {
                        return ip;
                    }
                    last_trusted = ip;
                }
                // Unknown, obfuscated or garbled: nothing beyond it is evidence.
                Hop::Opaque => return last_trusted,
            }
        }
        last_trusted
    }

    /// The last [`MAX_HOPS`] hops of the forwarding header in use, left to right (plus one
    /// opaque hop in front when the list was cut, so a walk that gets that far stops there).
    fn hops(&self, headers: &HeaderMap) -> VecDeque<Hop> {
        let mut hops = Hops::default();
        match self.header {
            ForwardedHeader::Forwarded => {
                for line in headers.get_all(http::header::FORWARDED) {
                    forwarded_hops(&line_str(line), &mut hops);
                }
            }
            ForwardedHeader::XRealIp => list_hops(headers.get_all(X_REAL_IP), &mut hops),
            ForwardedHeader::XForwardedFor => {
                list_hops(headers.get_all(X_FORWARDED_FOR), &mut hops);
            }
        }
        hops.finish()
    }
}

/// One entry of the hop list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hop {
    Addr(IpAddr),
    /// `unknown`, an obfuscated identifier, or something unparseable.
    Opaque,
}

/// A bounded ring of the most recent hops.
#[derive(Default)]
struct Hops {
    ring: VecDeque<Hop>,
    dropped: bool,
}

impl Hops {
    fn push(&mut self, hop: Hop) {
        if self.ring.len() == MAX_HOPS {
            self.ring.pop_front();
            self.dropped = true;
        }
        self.ring.push_back(hop);
    }

    fn finish(mut self) -> VecDeque<Hop> {
        if self.dropped {
            // The cut-off part is unknown territory: a walk reaching it stops.
            self.ring.push_front(Hop::Opaque);
        }
        self.ring
    }
}

/// A header line as text. Bytes that are not UTF-8 become U+FFFD instead of spoiling the whole
/// line: a proxy appends to the client's line, and a client must not be able to make the
/// proxy's own entry unreadable (and so be seen as the proxy) by adding a stray byte.
fn line_str(v: &HeaderValue) -> Cow<'_, str> {
    String::from_utf8_lossy(v.as_bytes())
}

/// `X-Forwarded-For` / `X-Real-IP`: comma-separated nodes across all lines.
fn list_hops<'a>(lines: impl IntoIterator<Item = &'a HeaderValue>, hops: &mut Hops) {
    for line in lines {
        for item in line_str(line).split(',') {
            let item = item.trim();
            if item.is_empty() {
                // RFC 9110 §5.6.1: empty list elements are ignored.
                continue;
            }
            hops.push(parse_node(unquote(item).as_deref().unwrap_or(item)));
        }
    }
}

/// RFC 7239 `Forwarded`: `forwarded-element *( "," forwarded-element )`, each element
/// `pair *( ";" pair )`, values tokens or quoted strings (which may hold `,` and `;`).
/// Every element is one hop; its `for=` value is the address. An element without exactly one
/// `for=` is opaque (a hop whose sender is unknown).
fn forwarded_hops(line: &str, hops: &mut Hops) {
    for element in split_unquoted(line, b',') {
        let element = element.trim();
        if element.is_empty() {
            continue;
        }
        let mut node = None;
        let mut fors = 0usize;
        let mut well_formed = true;
        for pair in split_unquoted(element, b';') {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            let Some((name, value)) = pair.split_once('=') else {
                well_formed = false;
                continue;
            };
            if name.trim().eq_ignore_ascii_case("for") {
                fors += 1;
                let value = value.trim();
                node = if value.starts_with('"') {
                    unquote(value)
                } else {
                    Some(value.to_owned())
                };
            }
        }
        let hop = match (well_formed, fors, node) {
            (true, 1, Some(n)) => parse_node(&n),
            _ => Hop::Opaque,
        };
        hops.push(hop);
    }
}

/// Whether every RFC 9110 quoted string in `s` is closed.
fn quotes_balanced(s: &str) -> bool {
    let mut in_quotes = false;
    let mut escaped = false;
    for b in s.bytes() {
        if escaped {
            escaped = false;
        } else if in_quotes && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            in_quotes = !in_quotes;
        }
    }
    !in_quotes
}

/// Splits on `sep` outside RFC 9110 quoted strings (with `\` escapes inside them).
///
/// If a quoted string is never closed, quotes are ignored and `s` is split on every `sep`:
/// otherwise a client could send `for="` and swallow every element a proxy appends after it.
/// Such a line is malformed anyway; the elements the proxies appended still parse.
fn split_unquoted(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let honour_quotes = quotes_balanced(s);
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut pos = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        while let Some(&b) = bytes.get(pos) {
            pos += 1;
            if in_quotes {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_quotes = false;
                }
            } else if b == b'"' && honour_quotes {
                in_quotes = true;
            } else if b == sep {
                // `sep` is ASCII, so both slice ends are on char boundaries.
                let piece = s.get(start..pos - 1);
                start = pos;
                return piece;
            }
        }
        done = true;
        s.get(start..)
    })
}

/// The content of a quoted string, unescaped; `None` if `s` is not exactly one quoted string.
fn unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// An RFC 7239 §6 node: `IPv4`, `IPv4:port`, `[IPv6]`, `[IPv6]:port`, `unknown`, `_obfuscated`.
/// Bare IPv6 (common in `X-Forwarded-For`) is accepted too. Anything else is opaque.
fn parse_node(node: &str) -> Hop {
    let node = node.trim();
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Hop::Addr(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Hop::Opaque;
        };
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(valid_port)) {
            return Hop::Opaque;
        }
        return v6
            .parse::<Ipv6Addr>()
            .map_or(Hop::Opaque, |ip| Hop::Addr(IpAddr::V6(ip)));
    }
    if let Some((v4, port)) = node.split_once(':')
        && valid_port(port)
        && let Ok(ip) = v4.parse::<Ipv4Addr>()
    {
        return Hop::Addr(IpAddr::V4(ip));
    }
    Hop::Opaque
}

/// RFC 7239 `node-port`: a port number or an obfuscated `_identifier`.
fn valid_port(p: &str) -> bool {
    let digits = !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    let obfuscated = p.len() > 1
        && p.starts_with('_')
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    digits || obfuscated
}

/// The client address the pipeline resolved (trusted proxies applied), in request extensions.
///
/// ```
/// use axum::{Extension, Router, routing::get};
/// use secure_routes::ClientIp;
/// async fn who(Extension(ClientIp(ip)): Extension<ClientIp>) -> String { ip.to_string() }
/// let _app: Router = Router::new().route("/ip", get(who));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Folds IPv4-mapped IPv6 to IPv4 and truncates IPv6 to its /64 prefix: the rate-limit
/// identity of an anonymous client (one subscriber usually holds a whole /64, so per-address
/// keys would be trivially evaded).
pub(crate) fn group(ip: IpAddr) -> IpAddr {
    match fold(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// The address as audit events record it with `truncate_audit_ips`: IPv4 to /24, IPv6 to /48.
pub(crate) fn truncate(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & 0xffff_ff00).into()),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 80) - 1)).into()),
    }
}

/// `::ffff:a.b.c.d` becomes `a.b.c.d`: one client, one identity, whatever the socket family.
fn fold(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// A CIDR or a bare address, IPv4-mapped ranges folded to IPv4.
fn parse_net(entry: &str) -> Option<IpNet> {
    let net = if entry.contains('/') {
        entry.parse::<IpNet>().ok()?.trunc()
    } else {
        IpNet::from(entry.parse::<IpAddr>().ok()?)
    };
    Some(match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).ok()?),
            None => net,
        },
        _ => net,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn parse_reports_every_problem() {
        let err =
            TrustedProxies::parse(["10.0.0.0/8", "nope", "", "1.2.3.4/40", "::1"]).unwrap_err();
        assert_eq!(err.problems().len(), 3, "{err}");
        assert!(err.problems()[0].contains("#2"));
    }

    #[test]
    fn parse_accepts_cidrs_and_addresses() {
        let p = TrustedProxies::parse([
            " 10.0.0.0/8 ",
            "192.0.2.1",
            "fd00::/8",
            "::ffff:172.16.0.0/108",
        ])
        .unwrap();
        for (addr, trusted) in [
            ("10.1.2.3", true),
            ("11.0.0.0", false),
            ("192.0.2.1", true),
            ("192.0.2.2", false),
            ("fd12::1", true),
            ("fe80::1", false),
            ("172.16.5.5", true), // from the IPv4-mapped range
            ("::ffff:172.16.5.5", true),
            ("::ffff:10.0.0.1", true),
            ("172.32.0.0", false),
        ] {
            assert_eq!(p.contains(ip(addr)), trusted, "{addr}");
        }
    }

    #[test]
    fn host_bits_are_cleared() {
        let p = TrustedProxies::parse(["10.1.2.3/8"]).unwrap();
        assert!(p.contains(ip("10.200.0.1")));
    }

    /// Peer, request headers, expected client address.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

    #[test]
    fn table() {
        let p = TrustedProxies::parse(["10.0.0.0/8", "2001:db8:ffff::/48"]).unwrap();
        let proxy = "10.0.0.1";
        let cases: &[Case<'_>] = &[
            // Untrusted peer: headers ignored.
            (
                "203.0.113.1",
                &[("x-forwarded-for", "1.1.1.1")],
                "203.0.113.1",
            ),
            (
                "::ffff:203.0.113.1",
                &[("x-forwarded-for", "1.1.1.1")],
                "203.0.113.1",
            ),
            // Trusted peer without headers: the peer.
            (proxy, &[], proxy),
            // XFF: first untrusted from the right.
            (proxy, &[("x-forwarded-for", "6.6.6.6, 1.1.1.1")], "1.1.1.1"),
            (
                proxy,
                &[("x-forwarded-for", "6.6.6.6, 1.1.1.1, 10.9.9.9")],
                "1.1.1.1",
            ),
            // Several lines are one list, in order.
            (
                proxy,
                &[
                    ("x-forwarded-for", "6.6.6.6"),
                    ("x-forwarded-for", "1.1.1.1, 10.2.2.2"),
                ],
                "1.1.1.1",
            ),
            (
                proxy,
                &[
                    ("x-forwarded-for", "1.1.1.1, 10.2.2.2"),
                    ("x-forwarded-for", "2.2.2.2"),
                ],
                "2.2.2.2",
            ),
            // All trusted: the leftmost.
            (
                proxy,
                &[("x-forwarded-for", "10.3.3.3, 10.2.2.2")],
                "10.3.3.3",
            ),
            // Garbage stops the walk at the last trusted address.
            (
                proxy,
                &[("x-forwarded-for", "1.1.1.1, garbage, 10.2.2.2")],
                "10.2.2.2",
            ),
            (proxy, &[("x-forwarded-for", "1.1.1.1, garbage")], proxy),
            // Ports and brackets in XFF.
            (proxy, &[("x-forwarded-for", "1.1.1.1:8080")], "1.1.1.1"),
            (
                proxy,
                &[("x-forwarded-for", "[2001:db8::5]:443")],
                "2001:db8::5",
            ),
            (proxy, &[("x-forwarded-for", "2001:db8::5")], "2001:db8::5"),
            (proxy, &[("x-forwarded-for", "::ffff:1.1.1.1")], "1.1.1.1"),
            (proxy, &[("x-forwarded-for", "::ffff:10.1.1.1")], "10.1.1.1"), // folded, trusted: leftmost
            (proxy, &[("x-forwarded-for", " , 1.1.1.1 ,, ")], "1.1.1.1"),
            // Trusted IPv6 proxy in the chain.
            (
                proxy,
                &[("x-forwarded-for", "1.1.1.1, 2001:db8:ffff::9")],
                "1.1.1.1",
            ),
            // An X-Real-IP proxy.
            (proxy, &[("x-real-ip", "1.1.1.1")], "1.1.1.1"),
            (proxy, &[("x-real-ip", "nonsense")], proxy),
            // A Forwarded proxy: a client-sent XFF is ignored.
            (
                proxy,
                &[("forwarded", "for=2.2.2.2"), ("x-forwarded-for", "1.1.1.1")],
                "2.2.2.2",
            ),
            // Forwarded syntax.
            (
                proxy,
                &[("forwarded", r#"for="[2001:db8::1]:4711""#)],
                "2001:db8::1",
            ),
            (
                proxy,
                &[("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43")],
                "192.0.2.60",
            ),
            (
                proxy,
                &[("forwarded", r#"For="192.0.2.60:8080""#)],
                "192.0.2.60",
            ),
            (
                proxy,
                &[("forwarded", "for=1.1.1.1, for=2.2.2.2")],
                "2.2.2.2",
            ),
            (
                proxy,
                &[("forwarded", "for=1.1.1.1"), ("forwarded", "for=10.0.0.7")],
                "1.1.1.1",
            ),
            (
                proxy,
                &[("forwarded", r#"for="_hidden", for=10.0.0.7"#)],
                "10.0.0.7",
            ),
            (proxy, &[("forwarded", "for=unknown")], proxy),
            (proxy, &[("forwarded", r#"for="1.1.1.1:_port""#)], "1.1.1.1"),
            // Quoted commas and semicolons do not split.
            (
                proxy,
                &[("forwarded", r#"for=1.1.1.1;x="a,b;c""#)],
                "1.1.1.1",
            ),
            // An element without for= (or with two) is opaque.
            (proxy, &[("forwarded", "for=1.1.1.1, proto=https")], proxy),
            (proxy, &[("forwarded", "for=1.1.1.1;for=2.2.2.2")], proxy),
            // Unbalanced quotes: opaque, no panic.
            (proxy, &[("forwarded", r#"for="1.1.1.1"#)], proxy),
            (proxy, &[("forwarded", r#"for=1.1.1.1;x="a,b"#)], proxy),
        ];
        for (peer, hs, want) in cases {
            // Each case is read as the proxy that writes its first header would configure it.
            let pinned = hs
                .first()
                .and_then(|(name, _)| name.parse().ok())
                .unwrap_or_default();
            let got = p
                .clone()
                .with_header(pinned)
                .client_ip(ip(peer), &headers(hs));
            assert_eq!(got, ip(want), "peer {peer} headers {hs:?}");
        }
    }

    /// Behind a proxy that appends to `X-Forwarded-For`, a client's own `Forwarded` or
    /// `X-Real-IP` must not pick its address (before: the first header present won).
    #[test]
    fn default_reads_only_x_forwarded_for() {
        let p = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        assert_eq!(p.header(), ForwardedHeader::XForwardedFor);
        for spoof in [
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=10.9.9.9"),
        ] {
            let h = headers(&[spoof, ("x-forwarded-for", "1.1.1.1")]);
            assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("1.1.1.1"), "{spoof:?}");
        }
        // A client's X-Forwarded-For behind an X-Real-IP proxy is ignored the same way.
        let p = p.with_header(ForwardedHeader::XRealIp);
        let h = headers(&[("x-forwarded-for", "6.6.6.6"), ("x-real-ip", "1.1.1.1")]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("1.1.1.1"));
    }

    #[test]
    fn header_names_parse() {
        for h in [
            ForwardedHeader::Forwarded,
            ForwardedHeader::XForwardedFor,
            ForwardedHeader::XRealIp,
        ] {
            assert_eq!(h.as_str().parse::<ForwardedHeader>().unwrap(), h);
            assert_eq!(
                h.as_str()
                    .to_uppercase()
                    .parse::<ForwardedHeader>()
                    .unwrap(),
                h
            );
        }
        for bad in ["", "auto", "x-client-ip", "forwarded,x-real-ip"] {
            assert!(bad.parse::<ForwardedHeader>().is_err(), "{bad}");
        }
    }

    #[test]
    fn pinned_header_ignores_the_others() {
        let p = TrustedProxies::parse(["10.0.0.0/8"])
            .unwrap()
            .with_header(ForwardedHeader::XForwardedFor);
        let h = headers(&[("forwarded", "for=6.6.6.6"), ("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("1.1.1.1"));
        let p = p.with_header(ForwardedHeader::XRealIp);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn non_utf8_bytes_spoil_only_their_entry() {
        let p = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        let mut h = HeaderMap::new();
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"1.1.1.1").unwrap(),
        );
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"));
        // The client's junk and the proxy's entry on one line: the proxy's entry counts.
        let mut h = HeaderMap::new();
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"\xff, 2.2.2.2").unwrap(),
        );
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("2.2.2.2"));
        let mut h = HeaderMap::new();
        h.append(
            http::header::FORWARDED,
            HeaderValue::from_bytes(b"for=\xff, for=2.2.2.2").unwrap(),
        );
        let p = p.with_header(ForwardedHeader::Forwarded);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("2.2.2.2"));
    }

    #[test]
    fn unclosed_quote_cannot_swallow_appended_elements() {
        let p = TrustedProxies::parse(["10.0.0.0/8"])
            .unwrap()
            .with_header(ForwardedHeader::Forwarded);
        for line in [
            r#"for="1.1.1.1, for=2.2.2.2"#,
            r#"for=", for=2.2.2.2"#,
            r#"x="\, for=2.2.2.2"#,
        ] {
            let h = headers(&[("forwarded", line)]);
            assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("2.2.2.2"), "{line}");
        }
    }

    #[test]
    fn long_lists_are_cut() {
        let p = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        // 100 trusted hops after the real client: the client is out of reach, and the answer
        // is the leftmost trusted hop examined.
        let mut list = vec!["1.1.1.1".to_owned()];
        list.extend((0..100).map(|i| format!("10.0.{}.{}", i / 250, i % 250)));
        let h = headers(&[("x-forwarded-for", &list.join(","))]);
        let leftmost_examined = 100 - MAX_HOPS;
        assert_eq!(
            p.client_ip(ip("10.0.0.1"), &h),
            ip(&format!("10.0.0.{leftmost_examined}"))
        );
        // A short list still reaches the client.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 10.0.0.2, 10.0.0.3")]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("1.1.1.1"));
    }

    #[test]
    fn node_parsing() {
        for (node, want) in [
            ("1.2.3.4", Some("1.2.3.4")),
            ("1.2.3.4:80", Some("1.2.3.4")),
            ("1.2.3.4:", None),
            ("1.2.3.4:999999", None),
            ("[::1]", Some("::1")),
            ("[::1]:_x", Some("::1")),
            ("[::1", None),
            ("[::1]x", None),
            ("::1", Some("::1")),
            ("unknown", None),
            ("_secret", None),
            ("fe80::1%eth0", None),
            ("", None),
        ] {
            let got = match parse_node(node) {
                Hop::Addr(a) => Some(a),
                Hop::Opaque => None,
            };
            assert_eq!(got, want.map(ip), "{node:?}");
        }
    }

    #[test]
    fn unquote_handles_escapes() {
        assert_eq!(unquote(r#""a\"b""#).as_deref(), Some("a\"b"));
        assert_eq!(unquote(r#""a"b""#), None);
        assert_eq!(unquote(r#""abc\""#), None);
        assert_eq!(unquote("abc"), None);
        assert_eq!(unquote("\""), None);
    }

    #[test]
    fn split_respects_quotes() {
        let parts: Vec<_> = split_unquoted(r#"a="x,y",b,"c\",d""#, b',').collect();
        assert_eq!(parts, [r#"a="x,y""#, "b", r#""c\",d""#]);
    }
}
