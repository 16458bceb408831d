//! Human durations for flags: a positive integer and a unit (`s`, `m`, `h`, `d`).
//!
//! ```
//! use secure_routes_cli::duration::parse;
//! assert_eq!(parse("90s").unwrap().as_secs(), 90);
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
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("invalid duration unit in {s:?}: use s, m, h or d")),
    };
    n.checked_mul(mult)
        .filter(|&secs| secs > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration {s:?} must be positive and reasonable"))
}
