//! A fast reader for the few fields of a data message the clients check: `type`,
//! `partition`, `offset`, and `seq`, `run` and `sent_us` of the event. The clients used to
//! parse every message with serde_json, which took 60% of the load generator's CPU
//! (BENCHMARKS.md) on the same two cores as the gateway it measures. This reader looks each key
//! up with a precompiled SIMD search (`memchr::memmem`) and reads the integer after it. It does
//! not follow the JSON structure, so it answers only when it cannot be misled: no escape
//! sequence anywhere, `"type":"data"` present, and each key present at most once in the whole
//! text (the bench's events hold no other field of these names). Otherwise it answers `None`
//! and the caller parses the message with serde_json; the caller also cross-checks a sample of
//! the fast answers against serde_json and counts any disagreement as an error.

use std::sync::LazyLock;

use memchr::memmem::Finder;

/// The fields of a data message the tally needs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DataFields {
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub seq: Option<u64>,
    pub run: Option<u32>,
    pub sent_us: Option<u64>,
}

/// The quoted names the reader looks for.
const KEYS: [&str; 6] = [
    r#""type""#,
    r#""partition""#,
    r#""offset""#,
    r#""seq""#,
    r#""run""#,
    r#""sent_us""#,
];

/// Compiled once: building a SIMD finder per message would cost more than the search.
static FINDERS: LazyLock<Vec<Finder<'static>>> = LazyLock::new(|| {
    KEYS.iter()
        .map(|key| Finder::new(key).into_owned())
        .collect()
});

/// Reads `text` if it is a data message with each watched name at most once; `None` otherwise.
pub fn data_message(text: &str) -> Option<DataFields> {
    let bytes = text.as_bytes();
    // A cheap guard against a truncated or run-together message; the full check of the JSON
    // grammar is the sampled serde_json cross-check.
    let balanced =
        memchr::memchr_iter(b'{', bytes).count() == memchr::memchr_iter(b'}', bytes).count();
    if !bytes.starts_with(b"{")
        || !bytes.ends_with(b"}")
        || !balanced
        || memchr::memchr(b'\\', bytes).is_some()
    {
        return None;
    }
    let [kind, partition, offset, seq, run, sent_us] = &FINDERS[..] else {
        unreachable!("six keys");
    };
    let after_kind = once(kind, bytes)?;
    if !bytes[after_kind..].starts_with(br#":"data""#) {
        return None;
    }
    Some(DataFields {
        partition: number(partition, bytes)?,
        offset: number(offset, bytes)?,
        seq: number(seq, bytes)?,
        run: number(run, bytes)?,
        sent_us: number(sent_us, bytes)?,
    })
}

/// The one name a snapshot row is read for.
static ENTITY_ID: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(r#""entity_id""#).into_owned());

/// Reads the row id of a snapshot row, a data message that ends with `"snapshot":true` (the
/// gateway writes that flag last) and holds one `"entity_id":"<digits>"`; `None` for anything
/// else, or when unsure (an escape sequence, a repeated name), as [`data_message`] does.
/// Churn connections read a thousand rows each, a thousand connections a second: this keeps
/// serde_json off that path, except for the sampled cross-check.
pub fn snapshot_row(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let balanced =
        memchr::memchr_iter(b'{', bytes).count() == memchr::memchr_iter(b'}', bytes).count();
    if !bytes.starts_with(br#"{"type":"data","#)
        || !bytes.ends_with(br#","snapshot":true}"#)
        || !balanced
        || memchr::memchr(b'\\', bytes).is_some()
    {
        return None;
    }
    let end = once(&ENTITY_ID, bytes)?;
    let digits = bytes[end..].strip_prefix(br#":""#)?;
    let len = digits.iter().position(|b| !b.is_ascii_digit())?;
    if len == 0 || digits[len] != b'"' {
        return None;
    }
    std::str::from_utf8(&digits[..len]).ok()?.parse().ok()
}

/// Where the one occurrence of `finder`'s needle ends; `None` when it is missing or repeated.
fn once(finder: &Finder<'_>, bytes: &[u8]) -> Option<usize> {
    let at = finder.find(bytes)?;
    let end = at + finder.needle().len();
    finder.find(&bytes[end..]).is_none().then_some(end)
}

/// The integer value of the one key named by `finder`: `Some(None)` when the name appears
/// nowhere, `None` (decline) when it is repeated, or is not a key with an integer of type `T`.
fn number<T: std::str::FromStr>(finder: &Finder<'_>, bytes: &[u8]) -> Option<Option<T>> {
    let Some(at) = finder.find(bytes) else {
        return Some(None);
    };
    let name_end = at + finder.needle().len();
    if finder.find(&bytes[name_end..]).is_some() {
        return None;
    }
    let start = name_end + usize::from(bytes.get(name_end) == Some(&b':'));
    if start == name_end {
        return None;
    }
    let len = bytes[start..]
        .iter()
        .position(|b| !matches!(b, b'-' | b'0'..=b'9'))?;
    let value = std::str::from_utf8(&bytes[start..start + len])
        .ok()?
        .parse()
        .ok()?;
    matches!(bytes[start + len], b',' | b'}').then_some(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// What serde_json makes of the same text, for comparison.
    fn reference(text: &str) -> Option<DataFields> {
        let v: Value = serde_json::from_str(text).ok()?;
        if v["type"] != "data" {
            return None;
        }
        let data = &v["payload"]["data"];
        Some(DataFields {
            partition: v["partition"].as_i64().map(|p| p as i32),
            offset: v["offset"].as_i64(),
            seq: data["seq"].as_u64(),
            run: data["run"].as_u64().map(|r| r as u32),
            sent_us: data["sent_us"].as_u64(),
        })
    }

    #[test]
    fn agrees_with_serde_json_where_it_answers() {
        let cases = [
            // The gateway's shape.
            r#"{"type":"data","topic":"cdc.order","payload":{"entity_type":"order","entity_id":"7","operation":"update","data":{"id":7,"seq":12,"run":3,"sent_us":1700000000123456,"bucket":12,"region":"eu","status":"paid","amount":12},"before":null,"timestamp":"2026-11-23T10:00:00Z"},"partition":0,"offset":1234,"timestamp":"2026-11-23T10:00:00.001Z"}"#,
            // Another field order.
            r#"{"offset":9,"partition":2,"payload":{"data":{"sent_us":5,"run":1,"seq":4,"list":[1,"x"]}},"type":"data"}"#,
            // Fields missing.
            r#"{"type":"data","payload":{"data":null},"partition":1,"offset":2}"#,
            r#"{"type":"data","payload":{"data":{"run":1}}}"#,
        ];
        for text in cases {
            let fast = data_message(text);
            assert!(fast.is_some(), "answers {text}");
            assert_eq!(fast, reference(text), "{text}");
        }
        assert_eq!(
            data_message(cases[1]).unwrap(),
            DataFields {
                partition: Some(2),
                offset: Some(9),
                seq: Some(4),
                run: Some(1),
                sent_us: Some(5),
            }
        );
    }

    #[test]
    fn reads_snapshot_rows() {
        let row = r#"{"type":"data","topic":"cdc.order","payload":{"entity_type":"order","entity_id":"42","operation":"update","data":{"id":42,"seq":7,"run":0},"before":null,"timestamp":"2026-11-23T10:00:00Z"},"source":"cdc.events","partition":0,"offset":9,"timestamp":"2026-11-23T10:00:00.001Z","snapshot":true}"#;
        assert_eq!(snapshot_row(row), Some(42));
        let live = row.replace(r#","snapshot":true}"#, "}");
        assert_eq!(snapshot_row(&live), None);
        for declined in [
            row.replace(r#""entity_id":"42""#, r#""entity_id":"4\"2""#),
            row.replace(r#""entity_id":"42""#, r#""entity_id":"x42""#),
            row.replace(r#""entity_id":"42""#, r#""entity_id":42"#),
            row.replace(r#""entity_id":"42""#, r#""entity_id":"""#),
            row.replace(r#""id":42"#, r#""entity_id":"1""#),
            row.replace(r#"{"type":"data""#, r#"{"type":"ack""#),
            row[..row.len() - 1].to_owned(),
        ] {
            assert_eq!(snapshot_row(&declined), None, "{declined}");
        }
    }

    #[test]
    fn declines_what_it_is_not_sure_of() {
        for text in [
            // Escapes, repeated names (even where serde_json would tell them apart), names
            // not followed by a colon (whitespace), odd types, other messages, unbalanced text.
            r#"{"type":"data","payload":{"data":{"seq":1,"note":"a \"quoted\" word"}}}"#,
            r#"{"type":"data","partition":1,"partition":2}"#,
            r#"{"type":"data","payload":{"before":{"seq":1},"data":{"seq":2}}}"#,
            r#"{"type":"data","payload":{"data":{"status":"seq"}}}"#,
            r#"{"type":"data","type":"ack"}"#,
            r#"{"type" : "data"}"#,
            r#"{"type":"data","offset" : 3}"#,
            r#"{"type":"data","offset":"12"}"#,
            r#"{"type":"data","payload":{"data":{"seq":-1}}}"#,
            r#"{"type":"data","payload":{"data":{"seq":1.5}}}"#,
            r#"{"type":"data","payload":{"data":{"seq":true}}}"#,
            r#"{"type":"ack","action":"subscribe"}"#,
            r#"{"type":"data","payload":{"data":{"seq":1}}"#,
            r#"{"type":"data","payload":{"data":{"seq":1}}}}"#,
            "",
        ] {
            assert_eq!(data_message(text), None, "{text}");
        }
    }
}
