//! Property tests for the signed double-submit CSRF tokens.
//!
//! * A token issued for subject A verifies for A and never for any B ≠ A, nor under another
//!   secret.
//! * Changing any character, or flipping any bit of any byte, of a token makes it fail.
//! * Arbitrary strings never verify and never panic; arbitrary cookie and header values never
//!   pass `check_request` (and never panic).
//! * A token verifies exactly while its age is under the max age, and is refused once issued
//!   more than the allowed skew in the future, whatever the max age.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use secure_routes::clock::FakeClock;
use secure_routes::guard::csrf::{
    COOKIE_NAME, CsrfTokens, HEADER_NAME, MAX_CLOCK_SKEW, MAX_MAX_AGE, TOKEN_LEN,
};

const SECRET: &[u8] = b"csrf-props-secret-csrf-props-secret!";
const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn tokens() -> CsrfTokens {
    CsrfTokens::new(SECRET).unwrap()
}

/// Subjects: arbitrary Unicode, including empty (anonymous) and near-identical pairs.
fn subject() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z]{1,8}",
        any::<String>(),
        "user:[0-9]{1,4}",
    ]
}

fn request(cookie: &[u8], header: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut c = format!("{COOKIE_NAME}=").into_bytes();
    c.extend_from_slice(cookie);
    if let Ok(v) = HeaderValue::from_bytes(&c) {
        h.append(http::header::COOKIE, v);
    }
    if let Ok(v) = HeaderValue::from_bytes(header) {
        h.append(HEADER_NAME, v);
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn bound_to_its_subject(a in subject(), b in subject()) {
        let t = tokens();
        let token = t.issue(&a);
        prop_assert_eq!(token.len(), TOKEN_LEN);
        prop_assert!(t.verify(&token, &a));
        prop_assert_eq!(t.check_request(&request(token.as_bytes(), token.as_bytes()), COOKIE_NAME, &a), Ok(()));
        if a != b {
            prop_assert!(!t.verify(&token, &b));
            prop_assert_eq!(
                t.check_request(&request(token.as_bytes(), token.as_bytes()), COOKIE_NAME, &b),
                Err("bad_signature")
            );
        }
    }

    #[test]
    fn bound_to_its_secret(a in subject(), other in proptest::collection::vec(any::<u8>(), 32..64)) {
        prop_assume!(other != SECRET);
        let token = tokens().issue(&a);
        prop_assert!(!CsrfTokens::new(&other).unwrap().verify(&token, &a));
    }

    #[test]
    fn any_changed_character_is_rejected(a in subject(), pos in 0..TOKEN_LEN, replacement in any::<u8>()) {
        let t = tokens();
        let token = t.issue(&a);
        let mut bytes = token.clone().into_bytes();
        // Mostly another base64url character (the interesting case), sometimes any byte.
        let new = if replacement < 200 {
            BASE64URL[usize::from(replacement) % BASE64URL.len()]
        } else {
            replacement
        };
        prop_assume!(bytes[pos] != new);
        bytes[pos] = new;
        let changed = String::from_utf8_lossy(&bytes);
        prop_assert!(!t.verify(&changed, &a), "{} verified", changed);
    }

    #[test]
    fn any_flipped_bit_is_rejected(a in subject(), pos in 0..TOKEN_LEN, bit in 0u8..8) {
        let t = tokens();
        let token = t.issue(&a);
        let mut bytes = token.into_bytes();
        bytes[pos] ^= 1 << bit;
        let changed = String::from_utf8_lossy(&bytes);
        prop_assert!(!t.verify(&changed, &a));
        // And as a request, cookie and header agreeing on the altered value.
        prop_assert!(t.check_request(&request(&bytes, &bytes), COOKIE_NAME, &a).is_err());
    }

    #[test]
    fn arbitrary_strings_never_verify(s in any::<String>(), a in subject()) {
        prop_assert!(!tokens().verify(&s, &a));
    }

    #[test]
    fn arbitrary_base64url_of_the_right_length_never_verifies(
        s in "[A-Za-z0-9_-]{75}",
        a in subject(),
    ) {
        prop_assert!(!tokens().verify(&s, &a));
    }

    #[test]
    fn valid_exactly_while_younger_than_the_max_age(
        a in subject(),
        start in 0u64..4_000_000_000,
        max_age in 1..=MAX_MAX_AGE.as_secs(),
        age_permille in 0u64..2_000,
    ) {
        let clock = FakeClock::new(Duration::from_secs(start));
        let t = tokens()
            .with_clock(Arc::new(clock.clone()))
            .with_max_age(Duration::from_secs(max_age))
            .unwrap();
        let token = t.issue(&a);
        let age = max_age * age_permille / 1_000;
        clock.advance(Duration::from_secs(age));
        let want = if age < max_age { Ok(()) } else { Err("expired") };
        prop_assert_eq!(t.check_token(&token, &a), want);
        // Back before the issue time: fine within the skew, refused beyond it.
        let before = age_permille.min(2 * MAX_CLOCK_SKEW.as_secs());
        clock.set(Duration::from_secs(start.saturating_sub(before)));
        let early = start.saturating_sub(before) + MAX_CLOCK_SKEW.as_secs() < start;
        let want = if early { Err("issued_in_future") } else { Ok(()) };
        prop_assert_eq!(t.check_token(&token, &a), want);
    }

    #[test]
    fn arbitrary_requests_never_pass(
        cookie in proptest::collection::vec(any::<u8>(), 0..100),
        header in proptest::collection::vec(any::<u8>(), 0..100),
        a in subject(),
    ) {
        let t = tokens();
        prop_assert!(t.check_request(&request(&cookie, &header), COOKIE_NAME, &a).is_err());
        prop_assert!(t.check_request(&request(&cookie, &cookie), COOKIE_NAME, &a).is_err());
    }

    #[test]
    fn a_tossed_second_cookie_always_fails(a in subject()) {
        let t = tokens();
        let mine = t.issue(&a);
        let tossed = t.issue(&a);
        for order in [[&mine, &tossed], [&tossed, &mine]] {
            let mut h = HeaderMap::new();
            h.append(
                http::header::COOKIE,
                HeaderValue::from_str(&format!("{COOKIE_NAME}={}; {COOKIE_NAME}={}", order[0], order[1])).unwrap(),
            );
            h.append(HEADER_NAME, HeaderValue::from_str(&mine).unwrap());
            prop_assert_eq!(t.check_request(&h, COOKIE_NAME, &a), Err("mismatch"));
        }
    }
}

#[test]
fn tokens_are_fresh() {
    let t = tokens();
    let issued: std::collections::HashSet<String> = (0..1000).map(|_| t.issue("alice")).collect();
    assert_eq!(issued.len(), 1000);
}
