//! Human durations for flags: a positive integer and a unit (`ms`, `s`, `m`, `h`, `d`).
//!
//! ```
//! use secure_routes_cli::duration::parse;
//! assert_eq!(parse("90s").unwrap().as_secs(), 90);
//! assert_eq!(parse("250ms").unwrap().as_millis(), 250);
//! assert_eq!(parse("1h").unwrap().as_secs(), 3600);
//! assert!(parse("1y").is_err());
//! assert!(parse("").is_err());
//! ```

use std::time::Duration;

/// Parses `<n><unit>`; a bare number means seconds.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 10m, 1h, 2d"))?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?}: use ms, s, m, h or d"
            ));
        }
    };
    n.checked_mul(millis_per_unit)
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {s:?} must be positive and reasonable"))
}
