//! The stored text form of timestamps: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`, always UTC, always
//! nine fractional digits, always 30 bytes.
//!
//! Why fixed width: SQLite has no timestamp type, so `ORDER BY timestamp` and
//! `timestamp >= ?` compare text. Plain RFC 3339 output varies in width (`...:05Z` vs
//! `...:05.1Z`, or `+02:00` offsets), and then `"…:05Z" > "…:05.1Z"` in byte order although
//! it is earlier. With one offset (`Z`), zero-padded fields and a fixed number of digits, byte
//! order is time order, so the `timestamp` index serves both sorting and range filters. Nine
//! digits keep the full nanosecond precision, so an event reads back exactly as written. The
//! form is still valid RFC 3339, readable by people and by any other tool.

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// 0000-01-01T00:00:00Z, the earliest instant with a four-digit year.
const MIN_NANOS: i128 = -62_167_219_200 * 1_000_000_000;
/// 9999-12-31T23:59:59.999999999Z, the latest.
const MAX_NANOS: i128 = 253_402_300_800 * 1_000_000_000 - 1;

/// Formats `t` in the stored, sortable form (UTC, nine fractional digits). Instants outside
/// years 0000–9999 are clamped to that range, so the width never changes.
///
/// ```
/// use time::macros::datetime;
/// use secure_routes_sqlite::format_timestamp;
/// assert_eq!(format_timestamp(datetime!(2025-03-01 12:00:05 +02:00)), "2025-03-01T10:00:05.000000000Z");
/// assert_eq!(format_timestamp(datetime!(2025-03-01 10:00:05.1 UTC)), "2025-03-01T10:00:05.100000000Z");
/// assert!(format_timestamp(datetime!(2025-03-01 10:00:05 UTC)) < format_timestamp(datetime!(2025-03-01 10:00:05.1 UTC)));
/// ```
pub fn format_timestamp(t: OffsetDateTime) -> String {
    let mut out = String::with_capacity(WIDTH);
    write_timestamp(&mut out, t);
    out
}

/// Bytes in a stored timestamp.
pub(crate) const WIDTH: usize = 30;

/// Appends the stored form of `t` to `out` (no allocation beyond `out`'s growth).
pub(crate) fn write_timestamp(out: &mut String, t: OffsetDateTime) {
    use std::fmt::Write;
    let nanos = t.unix_timestamp_nanos().clamp(MIN_NANOS, MAX_NANOS);
    let t = OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .to_offset(UtcOffset::UTC);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    );
}

/// Parses a stored timestamp (any RFC 3339 text, in fact).
///
/// ```
/// use secure_routes_sqlite::{format_timestamp, parse_timestamp};
/// let now = time::OffsetDateTime::now_utc();
/// assert_eq!(parse_timestamp(&format_timestamp(now)), Some(now));
/// assert_eq!(parse_timestamp("yesterday"), None);
/// ```
pub fn parse_timestamp(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn width_is_fixed_and_order_is_time_order() {
        let times = [
            datetime!(0000-01-01 00:00 UTC),
            datetime!(1999-12-31 23:59:59.999999999 UTC),
            datetime!(2025-01-01 00:00:00 +01:00),
            datetime!(2025-01-01 00:00:00 UTC),
            datetime!(2025-01-01 00:00:00.000000001 UTC),
            datetime!(9999-12-31 23:59:59.999999999 UTC),
        ];
        let texts: Vec<_> = times.iter().map(|t| format_timestamp(*t)).collect();
        assert!(texts.iter().all(|s| s.len() == 30), "{texts:?}");
        let mut sorted = texts.clone();
        sorted.sort();
        assert_eq!(sorted, texts);
        for (t, s) in times.iter().zip(&texts) {
            assert_eq!(parse_timestamp(s), Some(*t));
        }
    }

    #[test]
    fn out_of_range_years_are_clamped() {
        assert_eq!(
            format_timestamp(datetime!(-0001-06-01 00:00 UTC)),
            "0000-01-01T00:00:00.000000000Z"
        );
    }
}
