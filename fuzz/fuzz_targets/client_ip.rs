//! Arbitrary forwarding headers (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`) and trusted
//! proxy lists through `TrustedProxies::client_ip`.
//!
//! Input layout: one configuration byte (bits 0-1: which header to read, bits 2-4: the socket
//! peer, bit 5: the first line is a comma-separated proxy list), then the peer's address bytes
//! if the configuration asks for them, then header lines separated by `\n`, each starting with
//! `F`, `X` or `R` for the header it belongs to. Nothing may panic; an untrusted peer is always
//! the answer (the headers are only believed from a trusted proxy); the answer is IPv4 whenever
//! it could be (IPv4-mapped addresses are folded).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use secure_routes::client_ip::{ForwardedHeader, TrustedProxies};

fn take<const N: usize>(rest: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = rest.len().min(N);
    out[..n].copy_from_slice(&rest[..n]);
    *rest = &rest[n..];
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, mut rest)) = data.split_first() else {
        return;
    };
    let header = match cfg & 0b11 {
        0 => ForwardedHeader::Forwarded,
        1 => ForwardedHeader::XForwardedFor,
        _ => ForwardedHeader::XRealIp,
    };
    let peer = match (cfg >> 2) & 0b111 {
        0 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        1 => "::ffff:10.0.0.1".parse().expect("literal"),
        2 => "fd00::1".parse().expect("literal"),
        3 => IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9)),
        4 | 5 => IpAddr::V4(Ipv4Addr::from(take::<4>(&mut rest))),
        _ => IpAddr::V6(Ipv6Addr::from(take::<16>(&mut rest))),
    };
    let mut lines = rest.split(|&b| b == b'\n');
    let mut proxies = TrustedProxies::parse(["10.0.0.0/8", "fd00::/8", "192.0.2.1"])
        .expect("valid literal CIDRs");
    if cfg & 0b10_0000 != 0 {
        let list = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
        if let Ok(p) = TrustedProxies::parse(list.split(',')) {
            proxies = p;
        }
    }
    let proxies = proxies.with_header(header);

    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = match line.split_first() {
            Some((b'X', v)) => (HeaderName::from_static("x-forwarded-for"), v),
            Some((b'R', v)) => (HeaderName::from_static("x-real-ip"), v),
            Some((_, v)) => (http::header::FORWARDED, v),
            None => continue,
        };
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
    }

    let ip = proxies.client_ip(peer, &headers);
    if !proxies.contains(peer) {
        assert_eq!(
            ip,
            peer.to_canonical(),
            "headers believed from an untrusted peer"
        );
    }
    assert_eq!(
        ip,
        ip.to_canonical(),
        "an IPv4-mapped answer was not folded"
    );
    assert_eq!(proxies.client_ip(peer, &headers), ip, "not deterministic");
    assert_eq!(
        TrustedProxies::none().client_ip(peer, &headers),
        peer.to_canonical()
    );
});
