//! Arbitrary request paths through the gateway's `path::normalize` and route table.
//!
//! Properties: nothing panics; normalizing is idempotent; a normalized path has no `//`, and
//! decoded once more (as an upstream would) it has the same segments, none of them `.` or
//! `..`, and no `\`; and the route the table picks for the normalized path is `/admin/...`'s
//! exactly when the upstream's view of that path is under `/admin`, so no spelling reaches the
//! protected route's upstream path while being matched to the public one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secure_routes_gateway::path::normalize;
use secure_routes_gateway::routes::RouteTable;

const ADMIN: usize = 0;

fn decoded_once(path: &str) -> Vec<u8> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16).expect("normalized escapes are hex") as u8;
            out.push(hex(b[i + 1]) << 4 | hex(b[i + 2]));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let table = RouteTable::new(["/admin/{*rest}", "/{*rest}"]).expect("valid table");
    let Ok(n) = normalize(raw) else {
        return;
    };
    assert_eq!(normalize(&n).as_deref(), Ok(n.as_str()), "not idempotent: {raw:?}");
    assert!(n.starts_with('/') && !n.contains("//"), "{raw:?} -> {n:?}");
    let upstream = decoded_once(&n);
    assert!(!upstream.contains(&b'\\'), "{raw:?} -> {n:?}");
    let segments: Vec<&[u8]> = upstream.split(|&c| c == b'/').collect();
    assert_eq!(segments.len(), n.split('/').count(), "{raw:?} -> {n:?}");
    assert!(
        segments.iter().all(|s| *s != b"." && *s != b".."),
        "{raw:?} -> {n:?}"
    );
    let under_admin = segments.get(1) == Some(&&b"admin"[..]);
    assert_eq!(
        table.find(&n) == Some(ADMIN),
        under_admin,
        "{raw:?} -> {n:?} escapes or wrongly takes the protected route"
    );
});
