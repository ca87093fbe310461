use serde_json::{json, Value};

use super::*;
use crate::event::{Operation, Row, SourcePosition};

fn event(operation: Operation, data: Value, before: Value) -> ChangeEvent {
    let row = |v: Value| {
        if v.is_null() {
            None
        } else {
            Some(Row::from(v))
        }
    };
    ChangeEvent {
        entity_type: "order".into(),
        entity_id: Some("42".into()),
        operation,
        data: row(data),
        before: row(before),
        timestamp: "2026-11-22T10:00:00Z".into(),
        position: SourcePosition::new("cdc.events", 0, 1),
        kafka_timestamp_ms: None,
        source_lsn: None,
    }
}

fn update() -> ChangeEvent {
    event(
        Operation::Update,
        json!({"status": "shipped", "amount": 150, "price": 9.5, "region": "eu", "tenant": "acme",
               "customer": {"country": "NZ"}, "note": null, "code": "10"}),
        json!({"status": "new", "amount": 150}),
    )
}

fn delete() -> ChangeEvent {
    event(
        Operation::Delete,
        Value::Null,
        json!({"status": "shipped", "tenant": "acme", "amount": 5}),
    )
}

fn matches(filter: Value, event: &ChangeEvent) -> bool {
    Filter::compile(Some(&filter))
        .unwrap_or_else(|e| panic!("{filter}: {e}"))
        .matches(event)
}

#[test]
fn no_filter_matches_everything() {
    assert!(Filter::compile(None).unwrap().matches(&update()));
    assert!(Filter::compile(Some(&Value::Null))
        .unwrap()
        .matches(&delete()));
    assert!(matches(json!({}), &update()));
}

#[test]
fn scalars_mean_equal() {
    assert!(matches(json!({"data.status": "shipped"}), &update()));
    assert!(!matches(json!({"data.status": "new"}), &update()));
    assert!(matches(
        json!({"operation": "update", "entity_id": "42", "entity_type": "order"}),
        &update()
    ));
    assert!(
        matches(json!({"data.amount": 150.0}), &update()),
        "numbers compare as numbers"
    );
    assert!(
        !matches(json!({"data.code": 10}), &update()),
        "mixed types never match"
    );
    assert!(matches(json!({"data.note": null}), &update()));
    assert!(
        !matches(json!({"data.missing": null}), &update()),
        "missing is not null"
    );
    assert!(matches(json!({"data.customer.country": "NZ"}), &update()));
}

#[test]
fn arrays_mean_one_of() {
    assert!(matches(
        json!({"operation": ["insert", "update"]}),
        &update()
    ));
    assert!(!matches(
        json!({"operation": ["insert", "update"]}),
        &delete()
    ));
    assert!(!matches(json!({"operation": []}), &update()));
}

#[test]
fn comparison_operators() {
    let e = update();
    assert!(matches(json!({"data.amount": {"gte": 100}}), &e));
    assert!(matches(json!({"data.amount": {"gt": 149, "lt": 151}}), &e));
    assert!(!matches(json!({"data.amount": {"gt": 150}}), &e));
    assert!(matches(
        json!({"data.amount": {"lte": 150, "gte": 150}}),
        &e
    ));
    assert!(matches(json!({"data.price": {"lt": 10}}), &e));
    assert!(
        matches(json!({"data.status": {"gt": "new"}}), &e),
        "strings compare lexicographically"
    );
    assert!(matches(json!({"timestamp": {"gte": "2026-01-01"}}), &e));
    assert!(
        !matches(json!({"data.code": {"gt": 5}}), &e),
        "string field vs number bound"
    );
    assert!(
        !matches(json!({"data.amount": {"lt": "z"}}), &e),
        "number field vs string bound"
    );
    assert!(matches(
        json!({"data.status": {"eq": "shipped", "ne": "new"}}),
        &e
    ));
}

#[test]
fn set_operators() {
    let e = update();
    assert!(matches(json!({"data.region": {"in": ["eu", "us"]}}), &e));
    assert!(!matches(json!({"data.region": {"nin": ["eu", "us"]}}), &e));
    assert!(matches(json!({"data.region": {"nin": ["apac"]}}), &e));
    assert!(matches(json!({"data.amount": {"in": [1, 150]}}), &e));
}

#[test]
fn exists_operator() {
    let e = update();
    assert!(
        matches(json!({"data.note": {"exists": true}}), &e),
        "null is present"
    );
    assert!(matches(json!({"data.nope": {"exists": false}}), &e));
    assert!(!matches(json!({"data.nope": {"exists": true}}), &e));
    assert!(!matches(json!({"data.status": {"exists": false}}), &e));
}

#[test]
fn missing_fields_satisfy_only_exists_false_ne_and_nin() {
    let e = update();
    for (filter, expected) in [
        (json!({"data.nope": "x"}), false),
        (json!({"data.nope": {"eq": "x"}}), false),
        (json!({"data.nope": {"ne": "x"}}), true),
        (json!({"data.nope": {"gt": 1}}), false),
        (json!({"data.nope": {"gte": 1}}), false),
        (json!({"data.nope": {"lt": 1}}), false),
        (json!({"data.nope": {"lte": 1}}), false),
        (json!({"data.nope": {"in": ["x"]}}), false),
        (json!({"data.nope": {"nin": ["x"]}}), true),
        (json!({"data.nope": {"exists": false}}), true),
        (json!({"data.status.deeper": "x"}), false),
        (json!({"before.region": {"ne": "eu"}}), true),
    ] {
        assert_eq!(matches(filter.clone(), &e), expected, "{filter}");
    }
}

#[test]
fn ne_and_nin_hold_for_other_types() {
    assert!(matches(json!({"data.code": {"ne": 10}}), &update()));
    assert!(matches(json!({"data.code": {"nin": [10]}}), &update()));
}

#[test]
fn row_reads_data_or_before() {
    let tenant = json!({"row.tenant": "acme"});
    assert!(matches(tenant.clone(), &update()));
    assert!(
        matches(tenant, &delete()),
        "a delete matches on its before image"
    );
    assert!(
        !matches(json!({"data.tenant": "acme"}), &delete()),
        "data is null on a delete"
    );
    assert!(matches(json!({"row.amount": {"lt": 10}}), &delete()));
    assert!(matches(
        json!({"before.status": {"ne": "cancelled"}}),
        &update()
    ));
}

#[test]
fn every_entry_must_hold() {
    let f = json!({"data.status": "shipped", "data.amount": {"gte": 100}});
    assert!(matches(f.clone(), &update()));
    assert!(!matches(f, &delete()));
}

#[test]
fn invalid_filters_are_refused() {
    for bad in [
        json!("status=shipped"),
        json!([1]),
        json!({"data.amount": {"between": [1, 2]}}),
        json!({"data.amount": {}}),
        json!({"data.amount": {"gt": true}}),
        json!({"data.amount": {"gt": [1]}}),
        json!({"data.amount": {"in": 5}}),
        json!({"data.amount": {"nin": [[1]]}}),
        json!({"data.amount": {"exists": "yes"}}),
        json!({"data.amount": {"eq": {"a": 1}}}),
        json!({"data.tags": [{"a": 1}]}),
        json!({"status": "shipped"}),
        json!({"data..status": "shipped"}),
        json!({"operation.x": "insert"}),
    ] {
        assert!(
            Filter::compile(Some(&bad)).is_err(),
            "{bad} should be refused"
        );
    }
}

#[test]
fn filters_are_bounded_in_keys_list_lengths_and_depth() {
    use super::Limits;
    let Limits {
        clauses: max_clauses,
        values: max_values,
        depth: max_depth,
    } = Limits::default();
    let keys = |n: usize| Value::Object((0..n).map(|i| (format!("data.f{i}"), json!(1))).collect());
    assert!(Filter::compile(Some(&keys(max_clauses))).is_ok());
    assert!(Filter::compile(Some(&keys(max_clauses + 1))).is_err());
    let list = |n: usize| json!({"data.id": {"nin": (0..n).collect::<Vec<_>>()}});
    assert!(Filter::compile(Some(&list(max_values))).is_ok());
    let refused = Filter::compile(Some(&list(32_000))).unwrap_err();
    assert!(refused.to_string().contains("at most"), "{refused}");
    // The flags tighten (or loosen) each bound.
    let tight = Limits {
        clauses: 2,
        values: 3,
        depth: 2,
    };
    assert!(Filter::compile_within(Some(&keys(2)), &tight).is_ok());
    assert!(Filter::compile_within(Some(&keys(3)), &tight).is_err());
    assert!(Filter::compile_within(Some(&list(4)), &tight).is_err());
    assert!(Filter::compile_within(Some(&json!({"data.a.b": 1})), &tight).is_err());
    let loose = Limits {
        values: 40_000,
        ..Limits::default()
    };
    assert!(Filter::compile_within(Some(&list(32_000)), &loose).is_ok());
    let path = |n: usize| {
        let key = std::iter::once("data")
            .chain(std::iter::repeat_n("a", n - 1))
            .collect::<Vec<_>>()
            .join(".");
        json!({ key: 1 })
    };
    assert!(Filter::compile(Some(&path(max_depth))).is_ok());
    assert!(Filter::compile(Some(&path(max_depth + 1))).is_err());
}

/// A long list is hashed; its answers are the scanned list's for every kind of field value,
/// numbers as ints and floats, beyond 2^53 and fractional included.
#[test]
fn hashed_lists_agree_with_scanning() {
    use super::{equal, Options};
    let big = 1u64 << 60;
    let mut list: Vec<Value> = (0..20).map(Value::from).collect();
    list.extend([
        json!("eu"),
        json!(true),
        Value::Null,
        json!(2.5),
        json!(100.0),
        json!(big),
        json!(9_007_199_254_740_993u64),
        json!(-7),
    ]);
    let options = Options::new(list.clone());
    assert!(options.keyed.is_some(), "a long list is hashed");
    let fields: Vec<Value> = vec![
        json!(3),
        json!(3.0),
        json!(20),
        json!(100),
        json!(100.0),
        json!(2.5),
        json!(2.25),
        json!(big),
        json!(big as f64),
        json!(big + 1),
        json!(9_007_199_254_740_992u64),
        json!(9_007_199_254_740_992.0),
        json!(-7.0),
        json!(-0.0),
        json!("eu"),
        json!("us"),
        json!(true),
        json!(false),
        Value::Null,
        json!([1]),
        json!({"a": 1}),
    ];
    for field in &fields {
        let as_field = super::Field::Json(field);
        let scanned = list.iter().any(|option| equal(as_field, option));
        assert_eq!(options.contains(as_field), scanned, "{field}");
    }
    assert!(options.contains(super::Field::Text("eu")));
    assert!(!options.contains(super::Field::Text("us")));
    assert!(options.contains(super::Field::Null));
    assert!(!options.contains(super::Field::Missing));
}

/// The compiled filter against a plain evaluator of protocol section 4, written from the text
/// and reading the serialized payload, on random rows and random filters.
mod reference {
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    use super::*;

    /// `None`: the path is missing.
    fn resolve<'a>(payload: &'a Value, key: &str) -> Option<&'a Value> {
        let mut parts = key.split('.');
        let root = parts.next().unwrap();
        let rest: Vec<&str> = parts.collect();
        let start = match root {
            "row" if !payload["data"].is_null() => &payload["data"],
            "row" => &payload["before"],
            other => &payload[other],
        };
        if start.is_null() && !rest.is_empty() {
            return None;
        }
        rest.iter()
            .try_fold(start, |value, segment| value.get(*segment))
    }

    fn number(v: &Value) -> Option<f64> {
        v.as_f64()
    }

    fn equal(actual: &Value, expected: &Value) -> bool {
        match (number(actual), number(expected)) {
            (Some(a), Some(b)) => a == b,
            _ => actual == expected && !actual.is_number(),
        }
    }

    fn order(actual: &Value, bound: &Value) -> Option<std::cmp::Ordering> {
        match (actual, bound) {
            (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
            _ => number(actual)?.partial_cmp(&number(bound)?),
        }
    }

    fn holds(field: Option<&Value>, op: &str, operand: &Value) -> bool {
        let Some(field) = field else {
            return matches!(
                (op, operand),
                ("exists", Value::Bool(false)) | ("ne", _) | ("nin", _)
            );
        };
        let any = |options: &Value| options.as_array().unwrap().iter().any(|o| equal(field, o));
        use std::cmp::Ordering::*;
        match op {
            "eq" => equal(field, operand),
            "ne" => !equal(field, operand),
            "gt" => order(field, operand) == Some(Greater),
            "gte" => matches!(order(field, operand), Some(Greater | Equal)),
            "lt" => order(field, operand) == Some(Less),
            "lte" => matches!(order(field, operand), Some(Less | Equal)),
            "in" => any(operand),
            "nin" => !any(operand),
            "exists" => operand.as_bool().unwrap(),
            other => unreachable!("{other}"),
        }
    }

    fn reference(filter: &Map<String, Value>, payload: &Value) -> bool {
        filter.iter().all(|(key, spec)| {
            let field = resolve(payload, key);
            match spec {
                Value::Array(_) => holds(field, "in", spec),
                Value::Object(ops) => ops.iter().all(|(op, operand)| holds(field, op, operand)),
                scalar => holds(field, "eq", scalar),
            }
        })
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            (-2i64..3).prop_map(Value::from),
            (-2i64..3).prop_map(|n| Value::from(n as f64)),
            prop::sample::select(vec!["a", "b", "new"]).prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            Just(Value::Null),
        ]
    }

    fn row() -> impl Strategy<Value = Value> {
        (
            prop::option::of(scalar()),
            prop::option::of(scalar()),
            any::<bool>(),
        )
            .prop_map(|(a, c, null_row)| {
                if null_row {
                    return Value::Null;
                }
                let mut row = Map::new();
                if let Some(a) = a {
                    row.insert("a".into(), a);
                }
                if let Some(c) = c {
                    row.insert("b".into(), json!({ "c": c }));
                }
                Value::Object(row)
            })
    }

    fn condition() -> impl Strategy<Value = Value> {
        // Short lists are scanned, long ones (over 16 values) hashed: both are checked.
        let list = || {
            prop_oneof![
                prop::collection::vec(scalar(), 0..3),
                prop::collection::vec(scalar(), 17..24),
            ]
            .prop_map(Value::Array)
        };
        let ordered = prop_oneof![
            (-2i64..3).prop_map(Value::from),
            prop::sample::select(vec!["a", "b"]).prop_map(Value::from)
        ];
        prop_oneof![
            scalar(),
            list(),
            (prop::sample::select(vec!["eq", "ne"]), scalar()).prop_map(|(op, v)| json!({ op: v })),
            (
                prop::sample::select(vec!["gt", "gte", "lt", "lte"]),
                ordered
            )
                .prop_map(|(op, v)| json!({ op: v })),
            (prop::sample::select(vec!["in", "nin"]), list()).prop_map(|(op, v)| json!({ op: v })),
            any::<bool>().prop_map(|b| json!({ "exists": b })),
        ]
    }

    fn filter() -> impl Strategy<Value = Map<String, Value>> {
        let keys = prop::sample::select(vec![
            "data.a",
            "data.b.c",
            "row.a",
            "row.b.c",
            "before.a",
            "data",
            "operation",
        ]);
        prop::collection::btree_map(keys, condition(), 0..3)
            .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn the_compiled_filter_agrees_with_the_reference(
            spec in filter(),
            data in row(),
            before in row(),
            operation in prop::sample::select(vec![Operation::Insert, Operation::Update, Operation::Delete]),
        ) {
            let event = event(operation, data, before);
            let payload: Value = serde_json::from_slice(&event.payload_json()).unwrap();
            let compiled = Filter::compile(Some(&Value::Object(spec.clone()))).unwrap();
            prop_assert_eq!(
                compiled.matches(&event),
                reference(&spec, &payload),
                "filter {} on payload {}", Value::Object(spec.clone()), payload
            );
        }
    }
}

/// The scan's first test never passes over a row the filter matches: checked on rows and
/// filters that match, by eq and `in`, on data, before and row, with claims, and on a row
/// whose text writes the compared value with a `\u` escape (judged in full).
#[test]
fn needles_never_rule_out_a_matching_row() {
    let text = |event: &ChangeEvent| {
        format!(
            "{}|{}",
            event.data.as_ref().map_or("null", Row::text),
            event.before.as_ref().map_or("null", Row::text)
        )
    };
    let escaped = {
        let raw: Box<serde_json::value::RawValue> =
            serde_json::value::RawValue::from_string(r#"{"tenant":"\u0061cme"}"#.into()).unwrap();
        let mut e = update();
        e.data = Some(Row::from_raw(&raw));
        e
    };
    let events = [update(), delete(), escaped];
    let filters = [
        json!({"data.status": "shipped"}),
        json!({"data.tenant": ["globex", "acme"]}),
        json!({"row.tenant": "acme"}),
        json!({"before.status": "new", "data.region": "eu"}),
        json!({"data.customer.country": "NZ"}),
        json!({"data.code": "10"}),
        json!({"data.tenant": "acme"}),
    ];
    let mut matched = 0;
    for event in &events {
        for f in &filters {
            let filter = Filter::compile(Some(f)).unwrap();
            let confined = Filter::default()
                .confined_by(&Filter::compile(Some(&json!({"row.tenant": "acme"}))).unwrap());
            for filter in [filter.clone(), filter.confined_by(&confined)] {
                if filter.matches(event) {
                    matched += 1;
                    assert!(
                        filter.needles().may_match(text(event).as_bytes()),
                        "{f} matches {} but its needles rule it out",
                        text(event)
                    );
                }
            }
        }
    }
    assert!(matched >= 10, "the cases match ({matched})");
    // And rows without the strings are ruled out: what makes the scan fast.
    let needles = Filter::compile(Some(&json!({"data.tenant": ["globex", "initech"]})))
        .unwrap()
        .needles();
    assert!(!needles.may_match(text(&update()).as_bytes()));
    assert!(needles.may_match(br#"{"tenant":"initech"}"#));
    let none = Filter::compile(Some(&json!({"data.amount": {"gt": 5}}))).unwrap();
    assert!(
        none.needles().may_match(b"{}"),
        "a filter without strings rules nothing out"
    );
}

#[test]
fn rows_projected_to_the_fields_read_are_judged_as_whole_rows() {
    let events = [
        update(),
        delete(),
        event(
            Operation::Insert,
            json!({"status": "new", "amount": 7, "tenant": "beta", "customer": {"country": "DE"}}),
            Value::Null,
        ),
        event(
            Operation::Update,
            json!({"amount": 7}),
            json!({"tenant": "acme"}),
        ),
    ];
    let filters = [
        json!({"data.status": "shipped"}),
        json!({"row.tenant": "acme"}),
        json!({"data.customer.country": {"in": ["NZ", "DE"]}}),
        json!({"before.amount": {"gte": 100}, "operation": "update"}),
        json!({"data.note": {"exists": true}}),
        json!({"data.absent": {"ne": 1}}),
        json!({"row.amount": {"lt": 10}, "entity_id": "42"}),
    ];
    let claim = Filter::compile(Some(&json!({"row.tenant": "acme"}))).unwrap();
    for spec in filters {
        let own = Filter::compile(Some(&spec)).unwrap();
        for filter in [own.clone(), own.confined_by(&claim)] {
            let fields = filter.row_fields().expect("every clause names a field");
            for event in &events {
                let project = |row: &Option<Row>| {
                    row.as_ref().map(|row| {
                        let raw: Box<serde_json::value::RawValue> =
                            serde_json::from_str(row.text()).unwrap();
                        Row::projected(&raw, &fields)
                    })
                };
                let projected = ChangeEvent {
                    data: project(&event.data),
                    before: project(&event.before),
                    ..event.clone()
                };
                assert_eq!(
                    filter.matches(&projected),
                    filter.matches(event),
                    "{spec} on {event:?} projected to {fields:?}"
                );
            }
        }
    }
    assert_eq!(
        Filter::compile(Some(&json!({"data": {"exists": true}})))
            .unwrap()
            .row_fields(),
        None
    );
    assert_eq!(
        Filter::compile(Some(&json!({"operation": "insert"})))
            .unwrap()
            .row_fields(),
        Some(Vec::new())
    );
}
