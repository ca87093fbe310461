//! Wall-clock times as they appear on the wire: RFC 3339 in UTC with milliseconds.
//! One place, so every message formats time the same way.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Formats epoch milliseconds; `None` when the value is outside the representable range.
pub fn rfc3339_from_millis(millis: i64) -> Option<String> {
    let nanos = i128::from(millis) * 1_000_000;
    let at = OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
    format(at)
}

/// Whether `text` is a valid RFC 3339 date-time.
pub fn is_rfc3339(text: &str) -> bool {
    OffsetDateTime::parse(text, &Rfc3339).is_ok()
}

/// The current time, for the `timestamp` the gateway stamps on what it sends. Formatting
/// costs more than the rest of building a data message, so each thread keeps the text of the
/// current millisecond and reuses it.
pub fn now_rfc3339() -> String {
    thread_local! {
        static CACHE: std::cell::RefCell<(i128, String)> = const { std::cell::RefCell::new((i128::MIN, String::new())) };
    }
    let now = OffsetDateTime::now_utc();
    let millis = now.unix_timestamp_nanos() / 1_000_000;
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != millis {
            *cache = (millis, format(now).unwrap_or_default());
        }
        cache.1.clone()
    })
}

/// The current time in epoch milliseconds.
pub fn now_millis() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn format(at: OffsetDateTime) -> Option<String> {
    let at = at
        .replace_nanosecond(at.millisecond() as u32 * 1_000_000)
        .ok()?;
    at.format(&Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_format_as_utc_rfc3339() {
        assert_eq!(
            rfc3339_from_millis(1_763_805_600_000).unwrap(),
            "2025-11-22T10:00:00Z"
        );
        assert_eq!(
            rfc3339_from_millis(1_763_805_600_123).unwrap(),
            "2025-11-22T10:00:00.123Z"
        );
        assert!(rfc3339_from_millis(i64::MAX).is_none());
        assert!(is_rfc3339(&now_rfc3339()));
        assert!(is_rfc3339("2026-11-22T10:00:00+01:00"));
        assert!(!is_rfc3339("yesterday"));
    }
}
