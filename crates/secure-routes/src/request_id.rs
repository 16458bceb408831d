//! Request ids: the `x-request-id` every answer carries and every audit event records.
//!
//! Kept apart from the pipeline because two layers need the same rules: the pipeline (each
//! policy's answers) and the router-wide [`crate::fallback`] layer (answers no policy gave).
//! An incoming id is kept only from a trusted proxy, and only if it is short and plain: an
//! untrusted client could otherwise forge ids in the audit log.

use http::{HeaderName, HeaderValue};

/// The request-id header.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id, in the request extensions the handler sees: the `x-request-id` its
/// answer carries and its audit events record. A gateway forwards it; an application logs it.
///
/// ```
/// use axum::{Extension, Router, routing::get};
/// use secure_routes::RequestId;
/// async fn id(Extension(RequestId(id)): Extension<RequestId>) -> String {
///     id.to_str().unwrap_or_default().to_owned()
/// }
/// let _app: Router = Router::new().route("/id", get(id));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub HeaderValue);

/// Whether an incoming request id is short and plain enough to keep.
pub(crate) fn plain_request_id(v: &HeaderValue) -> bool {
    (1..=64).contains(&v.len())
        && v.as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A new UUIDv7 request id (RFC 9562 §5.7) at the system clock's time.
pub(crate) fn fresh_request_id() -> HeaderValue {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    fresh_request_id_at(now)
}

/// A new UUIDv7 request id (RFC 9562 §5.7) at `now` (since the Unix epoch), from this
/// thread's [`IdSequence`]. The pipeline passes the time it read for the request, so one
/// request reads the clock once for its id and its rate-limit headers.
///
/// The 36 characters are owned by one [`bytes::Bytes`] allocation that every clone shares
/// (the request header, the audit context, the [`RequestId`] extension, the response header):
/// `HeaderValue::from_str` would copy them into a buffer whose first clone allocates again.
pub(crate) fn fresh_request_id_at(now: std::time::Duration) -> HeaderValue {
    let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
    let id = SEQUENCE.with(|s| {
        let mut seq = s.get();
        let id = seq.next(now_ms, rand::random);
        s.set(seq);
        id
    });
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::from_u128(id)
        .hyphenated()
        .encode_lower(&mut text);
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

thread_local! {
    static SEQUENCE: std::cell::Cell<IdSequence> = const { std::cell::Cell::new(IdSequence::UNSEEDED) };
}

/// One thread's request ids: UUIDv7 with a counter (RFC 9562 §6.2, method 1).
///
/// Why not `Uuid::now_v7`: it takes a process-wide mutex and draws 74 random bits per id,
/// about 85 ns of a PUBLIC request's CPU over HTTP (issue 10 part 7). A request id must be
/// unique and ordered, not secret (it is echoed to the client and written to logs), so here
/// the 74 bits after the version are a 42-bit counter (`rand_a` and the top 30 bits of
/// `rand_b`) and a 32-bit tag drawn once per thread. The counter starts at a random value
/// below 2^41 in each new millisecond and counts up within it, so ids from one thread are
/// strictly increasing even if the clock steps back (the last millisecond is kept then).
/// Two threads or processes share an id only if their tags and counters collide in the same
/// millisecond: 73 random bits.
#[derive(Clone, Copy, Debug)]
struct IdSequence {
    /// The millisecond of the last id; `u64::MAX` before the first.
    ms: u64,
    /// The last id's 42-bit counter.
    counter: u64,
    /// This thread's 32-bit tag (the low bits of `rand_b`).
    tag: u32,
}

impl IdSequence {
    const UNSEEDED: Self = Self {
        ms: u64::MAX,
        counter: 0,
        tag: 0,
    };
    const COUNTER_BITS: u32 = 42;

    /// The next id at `now_ms` (Unix milliseconds); `random` draws 64 random bits.
    fn next(&mut self, now_ms: u64, mut random: impl FnMut() -> u64) -> u128 {
        let max = (1u64 << Self::COUNTER_BITS) - 1;
        let first = self.ms == u64::MAX;
        if first {
            self.tag = random() as u32;
        }
        if first || now_ms > self.ms {
            self.ms = now_ms;
            self.counter = random() >> (64 - (Self::COUNTER_BITS - 1));
        } else if self.counter < max {
            self.counter += 1;
        } else {
            // 2^41 ids in one millisecond: borrow the next millisecond (§6.2: the
            // timestamp may run ahead to keep the order).
            self.ms += 1;
            self.counter = 0;
        }
        let ms = u128::from(self.ms & ((1 << 48) - 1));
        let rand_a = u128::from(self.counter >> 30); // 12 bits
        let rand_b_high = u128::from(self.counter & ((1 << 30) - 1)); // 30 bits
        (ms << 80)
            | (0x7 << 76)
            | (rand_a << 64)
            | (0b10 << 62)
            | (rand_b_high << 32)
            | u128::from(self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_kept_others_are_not() {
        for (id, keep) in [
            ("abc-123_x.y:z", true),
            ("", false),
            ("has space", false),
            ("a/b", false),
        ] {
            let v = HeaderValue::from_bytes(id.as_bytes()).unwrap();
            assert_eq!(plain_request_id(&v), keep, "{id:?}");
        }
        let long = HeaderValue::from_str(&"a".repeat(65)).unwrap();
        assert!(!plain_request_id(&long));
        assert!(plain_request_id(&fresh_request_id()));
    }

    #[test]
    fn fresh_ids_are_lower_case_hyphenated_uuid_v7_and_differ() {
        let (a, b) = (fresh_request_id(), fresh_request_id());
        assert_ne!(a, b);
        for v in [a, b] {
            let s = v.to_str().unwrap();
            assert_eq!(s.len(), 36, "{s}");
            assert_eq!(s, s.to_ascii_lowercase());
            let id = uuid::Uuid::parse_str(s).unwrap();
            assert_eq!(id.get_version_num(), 7, "{s}");
            assert_eq!(id.hyphenated().to_string(), s);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{s}");
        }
    }

    /// A fixed stream of "random" draws, so the sequence's counter is known.
    fn draws(values: &[u64]) -> impl FnMut() -> u64 + '_ {
        let mut i = 0;
        move || {
            i += 1;
            values[i - 1]
        }
    }

    fn parts(id: u128) -> (u64, u64, u32) {
        let u = uuid::Uuid::from_u128(id);
        assert_eq!(u.get_version_num(), 7);
        assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
        let ms = (id >> 80) as u64;
        let counter = (((id >> 64) & 0xfff) << 30 | ((id >> 32) & ((1 << 30) - 1))) as u64;
        (ms, counter, id as u32)
    }

    #[test]
    fn ids_in_one_millisecond_count_up_from_a_random_start() {
        let mut seq = IdSequence::UNSEEDED;
        let mut random = draws(&[0xdead_beef, u64::MAX, 1 << 40]);
        let a = seq.next(1_000, &mut random);
        let b = seq.next(1_000, &mut random);
        let (ms, counter, tag) = parts(a);
        // The first draw is the tag; the second, shifted, the counter's start (below 2^41).
        assert_eq!((ms, counter, tag), (1_000, (1 << 41) - 1, 0xdead_beef));
        assert_eq!(parts(b), (1_000, 1 << 41, 0xdead_beef));
        assert!(b > a);
        // A new millisecond draws a new start, smaller here: the timestamp keeps the order.
        let c = seq.next(1_001, &mut random);
        assert_eq!(parts(c), (1_001, 1 << 40 >> 23, 0xdead_beef));
        assert!(c > b);
    }

    #[test]
    fn a_clock_stepping_back_keeps_the_order() {
        let mut seq = IdSequence::UNSEEDED;
        let mut random = draws(&[7, 0]);
        let a = seq.next(5_000, &mut random);
        let b = seq.next(4_000, &mut random);
        assert_eq!(parts(b), (5_000, 1, 7));
        assert!(b > a);
    }

    #[test]
    fn a_full_counter_borrows_the_next_millisecond() {
        let mut seq = IdSequence::UNSEEDED;
        let mut random = draws(&[7, u64::MAX]);
        let mut last = seq.next(9, &mut random);
        seq.counter = (1 << 42) - 2;
        // The counter's last value, then the next millisecond's first.
        for _ in 0..2 {
            let next = seq.next(9, &mut random);
            assert!(next > last);
            last = next;
        }
        assert_eq!(parts(last), (10, 0, 7));
    }

    #[test]
    fn threads_draw_their_own_tags() {
        let here = fresh_request_id();
        let there = std::thread::spawn(fresh_request_id).join().unwrap();
        let tag = |v: &HeaderValue| {
            parts(
                uuid::Uuid::parse_str(v.to_str().unwrap())
                    .unwrap()
                    .as_u128(),
            )
            .2
        };
        // 32 random bits each: equal once in four billion runs.
        assert_ne!(tag(&here), tag(&there));
    }
}
