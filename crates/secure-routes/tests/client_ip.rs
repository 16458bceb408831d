//! Property tests for client address resolution.
//!
//! * Nothing panics, whatever bytes the forwarding headers hold.
//! * From an untrusted peer, forwarding headers change nothing (spoofing is ignored).
//! * Through trusted proxies, whatever a client writes to the left of the entry the first
//!   proxy appended cannot change the answer: the client can only ever be itself.
//!
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::header::FORWARDED;
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use secure_routes::client_ip::{ForwardedHeader, MAX_HOPS, TrustedProxies};

const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

fn proxies() -> TrustedProxies {
    TrustedProxies::parse(["10.0.0.0/8", "fd00::/8", "192.0.2.1"]).unwrap()
}

fn fold(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Any address, often in or near the trusted ranges, sometimes IPv4-mapped.
fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff)))),
        any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n))),
        any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from((0xfd << 120) | (n >> 8)))),
        any::<u32>().prop_map(|n| IpAddr::V6(Ipv4Addr::from(n).to_ipv6_mapped())),
        Just(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
    ]
}

fn untrusted_ip() -> impl Strategy<Value = IpAddr> {
    any_ip().prop_filter("untrusted", |ip| !proxies().contains(*ip))
}

fn trusted_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff)))),
        any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from((0xfd << 120) | (n >> 8)))),
        Just(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
    ]
}

/// Arbitrary header bytes (whatever `HeaderValue` admits), biased towards list syntax.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        "[ -~]{0,200}".prop_map(String::into_bytes),
        r#"((for|For|by)=("?\[?[0-9a-f:.]{0,20}\]?(:[0-9_a-z]{0,6})?"?|unknown|_x)[;, ]{0,3}){0,12}"#
            .prop_map(String::into_bytes),
        r"([0-9.:a-f\[\]]{0,18}[, ]{0,3}){0,40}".prop_map(String::into_bytes),
    ]
}

fn header_map(lines: &[(HeaderName, Vec<u8>)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, bytes) in lines {
        if let Ok(v) = HeaderValue::from_bytes(bytes) {
            h.append(name.clone(), v);
        }
    }
    h
}

fn any_headers() -> impl Strategy<Value = HeaderMap> {
    let name = prop_oneof![Just(FORWARDED), Just(XFF), Just(X_REAL_IP)];
    proptest::collection::vec((name, header_bytes()), 0..5).prop_map(|l| header_map(&l))
}

/// How a proxy writes a node into each header.
fn xff_node(ip: IpAddr) -> String {
    ip.to_string()
}

fn forwarded_node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("for={v4}"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_panics(peer in any_ip(), headers in any_headers(), pin in 0usize..3) {
        let pin = [
            ForwardedHeader::Forwarded,
            ForwardedHeader::XForwardedFor,
            ForwardedHeader::XRealIp,
        ][pin];
        let p = proxies().with_header(pin);
        let ip = p.client_ip(peer, &headers);
        // Headers only ever matter behind a trusted proxy.
        if ip != fold(peer) {
            prop_assert!(p.contains(peer), "headers used for an untrusted peer");
        }
    }

    #[test]
    fn untrusted_peer_headers_are_ignored(peer in untrusted_ip(), headers in any_headers()) {
        prop_assert_eq!(proxies().client_ip(peer, &headers), fold(peer));
    }

    #[test]
    fn spoofed_xff_from_untrusted_peer_is_ignored(
        peer in untrusted_ip(),
        claimed in proptest::collection::vec(any_ip(), 1..6),
    ) {
        let list: Vec<String> = claimed.iter().map(|ip| ip.to_string()).collect();
        let mut h = HeaderMap::new();
        h.insert(XFF, HeaderValue::from_str(&list.join(", ")).unwrap());
        h.insert(X_REAL_IP, HeaderValue::from_str(&list[0]).unwrap());
        h.insert(FORWARDED, HeaderValue::from_str(&format!("for={}", list[0])).unwrap());
        prop_assert_eq!(proxies().client_ip(peer, &h), fold(peer));
    }

    /// The client sends anything it likes in X-Forwarded-For; the first proxy appends the
    /// client's real address, later (trusted) proxies append theirs. The answer is the real
    /// address whatever the client wrote.
    #[test]
    fn client_prefix_cannot_change_the_answer_xff(
        prefix in proptest::collection::vec(any::<u8>(), 0..120),
        real in untrusted_ip(),
        chain in proptest::collection::vec(trusted_ip(), 0..4),
        peer in trusted_ip(),
        split_lines in any::<bool>(),
    ) {
        let mut appended = vec![xff_node(real)];
        appended.extend(chain.iter().map(|ip| xff_node(*ip)));
        let mut h = HeaderMap::new();
        match HeaderValue::from_bytes(&prefix) {
            Ok(v) if split_lines => {
                h.append(XFF, v);
                h.append(XFF, HeaderValue::from_str(&appended.join(", ")).unwrap());
            }
            Ok(_) => {
                let mut line = prefix.clone();
                line.extend_from_slice(b", ");
                line.extend_from_slice(appended.join(", ").as_bytes());
                h.append(XFF, HeaderValue::from_bytes(&line).unwrap());
            }
            Err(_) => {
                h.append(XFF, HeaderValue::from_str(&appended.join(", ")).unwrap());
            }
        }
        prop_assert_eq!(proxies().client_ip(peer, &h), fold(real));
    }

    /// The same for RFC 7239 `Forwarded`, where quoted strings make the syntax richer.
    #[test]
    fn client_prefix_cannot_change_the_answer_forwarded(
        prefix in prop_oneof![
            "[ -~]{0,80}",
            r#"(for|by|x)=("[ !#-~]{0,10}"?|[a-z0-9.:_]{0,10})[;, \\]{0,2}"#,
        ],
        real in untrusted_ip(),
        chain in proptest::collection::vec(trusted_ip(), 0..4),
        peer in trusted_ip(),
    ) {
        let mut appended = vec![forwarded_node(real)];
        appended.extend(chain.iter().map(|ip| forwarded_node(*ip)));
        let line = format!("{prefix}, {}", appended.join(", "));
        let mut h = HeaderMap::new();
        h.append(FORWARDED, HeaderValue::from_str(&line).unwrap());
        let p = proxies().with_header(ForwardedHeader::Forwarded);
        prop_assert_eq!(p.client_ip(peer, &h), fold(real), "{}", line);
    }

    /// Only the last [`MAX_HOPS`] hops are examined, so a header's cost does not grow with
    /// its length. The list opens with an untrusted address (the client) followed by `n`
    /// distinct trusted hops: a walk over the whole list would reach the client; a cut one
    /// stops at the leftmost hop it examined, and which hop that is shows where it stopped.
    /// Lists no longer than `MAX_HOPS` are walked whole.
    #[test]
    fn long_headers_are_cut_not_slow(
        n in prop_oneof![0..MAX_HOPS, MAX_HOPS..2_000usize],
        client in untrusted_ip(),
        forwarded in any::<bool>(),
    ) {
        let hop = |i: usize| {
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | u32::try_from(i).unwrap()))
        };
        let mut nodes = vec![client];
        nodes.extend((0..n).map(hop));
        let mut h = HeaderMap::new();
        if forwarded {
            let list: Vec<String> = nodes.iter().map(|ip| forwarded_node(*ip)).collect();
            h.insert(FORWARDED, HeaderValue::from_str(&list.join(", ")).unwrap());
        } else {
            let list: Vec<String> = nodes.iter().map(|ip| xff_node(*ip)).collect();
            h.insert(XFF, HeaderValue::from_str(&list.join(",")).unwrap());
        }
        let want = if n < MAX_HOPS { fold(client) } else { hop(n - MAX_HOPS) };
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let header = if forwarded { ForwardedHeader::Forwarded } else { ForwardedHeader::XForwardedFor };
        prop_assert_eq!(proxies().with_header(header).client_ip(peer, &h), want, "{} hops", n + 1);
    }
}

#[test]
fn mapped_peer_is_folded_everywhere() {
    let p = proxies();
    let mapped_proxy: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
    let mut h = HeaderMap::new();
    h.insert(XFF, HeaderValue::from_static("::ffff:198.51.100.7"));
    assert_eq!(
        p.client_ip(mapped_proxy, &h),
        "198.51.100.7".parse::<IpAddr>().unwrap()
    );
    let mapped_client: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
    assert_eq!(
        p.client_ip(mapped_client, &h),
        "198.51.100.7".parse::<IpAddr>().unwrap()
    );
}
