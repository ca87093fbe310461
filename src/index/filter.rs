//! Subscription filters (protocol section 4), compiled once at subscribe time into paths and
//! typed conditions, so matching an event walks a few fields and never re-reads the JSON the
//! client sent. Matching reads the normalized event directly: no serialization per check.

use std::cmp::Ordering;
use std::collections::HashSet;

use serde_json::{Map, Number, Value};

use crate::event::{ChangeEvent, Row};
use crate::position::Position;

/// How large a filter may be (`--max-filter-clauses`, `--max-filter-values`,
/// `--max-filter-depth`): every clause is evaluated on the consumer task for every event of
/// the topic, so a client may not make that cost unbounded. Large `in` / `nin` lists are
/// hashed, so their cost per event does not grow with their length; their memory does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most keys in one filter object.
    pub clauses: usize,
    /// Most values in one `in` / `nin` list or array value.
    pub values: usize,
    /// Most segments in one key (`data.a.b.c` has four).
    pub depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            clauses: 32,
            values: 1024,
            depth: 8,
        }
    }
}

/// Lists longer than this are looked up in a hash set instead of scanned.
const HASHED_FROM: usize = 16;

/// A compiled filter: every clause must hold. The empty filter matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    clauses: Vec<Clause>,
    /// Clauses of a token's `filters` claim (row-level security): they must hold as well, and
    /// an image of the row they reject is never shown (protocol section 7.1).
    claims: Vec<Clause>,
    /// A resumed subscription's position: events at or below it, per partition, were seen.
    floor: Option<Position>,
}

#[derive(Debug, Clone, PartialEq)]
struct Clause {
    path: Path,
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
struct Path {
    root: Root,
    rest: Vec<String>,
}

/// The top-level fields a filter key may start with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Root {
    Operation,
    EntityType,
    EntityId,
    Timestamp,
    Data,
    Before,
    /// `data` when it is not null, else `before`.
    Row,
}

#[derive(Debug, Clone, PartialEq)]
enum Condition {
    Eq(Value),
    Ne(Value),
    Gt(Value),
    Gte(Value),
    Lt(Value),
    Lte(Value),
    In(Options),
    Nin(Options),
    Exists(bool),
}

/// The values of an `in` / `nin` list: scanned when short, looked up when long.
#[derive(Debug, Clone)]
struct Options {
    list: Vec<Value>,
    keyed: Option<Keyed>,
}

/// A long list's values by hashing equality: strings by text, the other scalars by [`Key`].
#[derive(Debug, Clone, Default)]
struct Keyed {
    strings: HashSet<Box<str>>,
    scalars: HashSet<Key>,
    /// Some number has no key: numbers are also compared with the list.
    unkeyed: bool,
}

/// A scalar other than a string by which [`equal`] equality is hashing equality: bools,
/// null, integral numbers within 2^53 (an int and the float with its value are one key) and
/// fractional floats. A number beyond 2^53 has none: it compares by [`compare_numbers`] only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Null,
    Bool(bool),
    Int(i64),
    Fraction(u64),
}

/// 2^53: every integer up to it is exact as an f64.
const EXACT: f64 = 9_007_199_254_740_992.0;

fn number_key(number: &Number) -> Option<Key> {
    if let Some(int) = number.as_i64() {
        return (int.unsigned_abs() <= EXACT as u64).then_some(Key::Int(int));
    }
    if number.as_u64().is_some() {
        return None;
    }
    let float = number.as_f64()?;
    if float.fract() == 0.0 {
        (float.abs() <= EXACT).then_some(Key::Int(float as i64))
    } else {
        Some(Key::Fraction(float.to_bits()))
    }
}

impl Options {
    fn new(list: Vec<Value>) -> Self {
        let keyed = (list.len() > HASHED_FROM).then(|| {
            let mut keyed = Keyed::default();
            for value in &list {
                match value {
                    Value::String(text) => {
                        keyed.strings.insert(text.as_str().into());
                    }
                    Value::Null => {
                        keyed.scalars.insert(Key::Null);
                    }
                    Value::Bool(flag) => {
                        keyed.scalars.insert(Key::Bool(*flag));
                    }
                    Value::Number(number) => match number_key(number) {
                        Some(key) => {
                            keyed.scalars.insert(key);
                        }
                        None => keyed.unkeyed = true,
                    },
                    // Refused at compile time.
                    Value::Array(_) | Value::Object(_) => {}
                }
            }
            keyed
        });
        Self { list, keyed }
    }

    fn contains(&self, field: Field<'_>) -> bool {
        let Some(keyed) = &self.keyed else {
            return self.list.iter().any(|option| equal(field, option));
        };
        match field {
            Field::Missing => false,
            Field::Null | Field::Json(Value::Null) => keyed.scalars.contains(&Key::Null),
            Field::Text(text) => keyed.strings.contains(text),
            Field::Json(Value::String(text)) => keyed.strings.contains(text.as_str()),
            Field::Json(Value::Bool(flag)) => keyed.scalars.contains(&Key::Bool(*flag)),
            Field::Json(Value::Number(number)) => {
                let found = number_key(number).is_some_and(|key| keyed.scalars.contains(&key));
                // A number near a huge option may still compare equal to it as floats.
                found
                    || ((keyed.unkeyed || number_key(number).is_none())
                        && self.list.iter().any(|option| equal(field, option)))
            }
            // Arrays and objects equal no option.
            Field::Json(_) => false,
        }
    }
}

impl PartialEq for Options {
    fn eq(&self, other: &Self) -> bool {
        self.list == other.list
    }
}

/// Why a filter was refused; the text goes to the client with `INVALID_FILTER`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(String);

/// What a message must not show of a row ([`Filter::redaction`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redaction {
    None,
    /// `before` is sent as `null`.
    Before,
    /// `data` is sent as `null`.
    Data,
}

/// Which state of the row a filter reads: as the event leaves it, or as it was before.
#[derive(Clone, Copy)]
enum View {
    Current,
    /// As the event leaves it, with the before-image the token's claims reject taken away:
    /// what the holder's own clauses read then, since a message would show it as absent.
    CurrentHidingBefore,
    Before,
}

/// A field of the event as a filter sees it: borrowed, never copied.
#[derive(Clone, Copy)]
enum Field<'a> {
    Missing,
    Json(&'a Value),
    Text(&'a str),
    Null,
}

impl Filter {
    /// Compiles the `filters` object of a subscribe request (`None` or `null`: no filter)
    /// within the default [`Limits`].
    pub fn compile(spec: Option<&Value>) -> Result<Self, FilterError> {
        Self::compile_within(spec, &Limits::default())
    }

    /// Compiles the `filters` object of a subscribe request within `limits`.
    pub fn compile_within(spec: Option<&Value>, limits: &Limits) -> Result<Self, FilterError> {
        let object = match spec {
            None | Some(Value::Null) => return Ok(Filter::default()),
            Some(Value::Object(object)) => object,
            Some(_) => return Err(FilterError("`filters` must be an object".into())),
        };
        if object.len() > limits.clauses {
            return Err(FilterError(format!(
                "{} keys: a filter has at most {}",
                object.len(),
                limits.clauses
            )));
        }
        let clauses = object
            .iter()
            .map(|(key, value)| {
                Ok(Clause {
                    path: Path::parse(key, limits.depth)?,
                    conditions: conditions_of(key, value, limits.values)?,
                })
            })
            .collect::<Result<_, FilterError>>()?;
        Ok(Filter {
            clauses,
            claims: Vec::new(),
            floor: None,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty() && self.claims.is_empty() && self.floor.is_none()
    }

    /// Also refuses the events at or below `floor` on its partitions: a client that resumed
    /// from there (protocol 7.2) already has them, even when this replica is behind it.
    pub fn above(mut self, floor: Position) -> Filter {
        self.floor = Some(floor);
        self
    }

    /// Clauses (one per key of the filter objects it was built from), claims included.
    pub fn len(&self) -> usize {
        self.clauses.len() + self.claims.len()
    }

    /// Also requires what a token's `filters` claim requires: row-level security that
    /// confines the client's own filter.
    pub fn confined_by(mut self, claim: &Filter) -> Filter {
        self.claims
            .extend(claim.clauses.iter().chain(&claim.claims).cloned());
        self
    }

    /// The client's own filter (and resume floor), without a token's claims: what a fresh
    /// token's claims confine anew.
    pub fn without_claims(&self) -> Filter {
        Filter {
            claims: Vec::new(),
            ..self.clone()
        }
    }

    /// What the row may be shown as in a message that passes this filter: its `before`
    /// image is hidden when the claims reject it (a row that moved into the holder's
    /// tenant must not reveal where it came from), and on a leave event its new `data` is
    /// hidden when the claims reject that (the row moved out of the holder's tenant).
    pub fn redaction(&self, event: &ChangeEvent, leave: bool) -> Redaction {
        if self.claims.is_empty() {
            return Redaction::None;
        }
        let holds = |view| {
            self.claims.iter().all(|clause| {
                let field = clause.path.resolve(event, view);
                clause.conditions.iter().all(|c| c.holds(field))
            })
        };
        if leave && !holds(View::Current) {
            Redaction::Data
        } else if !leave && event.before.is_some() && !holds(View::Before) {
            Redaction::Before
        } else {
            Redaction::None
        }
    }

    pub fn matches(&self, event: &ChangeEvent) -> bool {
        self.matches_as(event, View::Current)
    }

    /// What a row's stored text must contain for this filter to match it ([`Needles`]).
    pub fn needles(&self) -> Needles {
        let sets = self
            .clauses
            .iter()
            .chain(&self.claims)
            .filter(|clause| matches!(clause.path.root, Root::Data | Root::Before | Root::Row))
            .filter_map(|clause| clause.conditions.iter().find_map(Condition::plain_strings))
            .map(|strings| {
                strings
                    .iter()
                    .map(|s| {
                        memchr::memmem::Finder::new(format!("\"{s}\"").as_bytes()).into_owned()
                    })
                    .collect()
            })
            .collect();
        Needles { sets }
    }

    /// The top-level fields of the row images (`data`, `before`) that this filter reads, or
    /// `None` when a clause reads an image whole: judging a stored row needs only those
    /// ([`crate::event::Row::projected`]).
    pub fn row_fields(&self) -> Option<Vec<String>> {
        let mut fields: Vec<String> = Vec::new();
        for clause in self.clauses.iter().chain(&self.claims) {
            if !matches!(clause.path.root, Root::Data | Root::Before | Root::Row) {
                continue;
            }
            let first = clause.path.rest.first()?;
            if !fields.contains(first) {
                fields.push(first.clone());
            }
        }
        Some(fields)
    }

    /// Whether the row as it was before an update matched: with [`Filter::matches`] false,
    /// the update moved the row out of the subscription (a leave event, protocol section 3.3).
    /// Only updates with a `before` image can leave.
    pub fn matched_before(&self, event: &ChangeEvent) -> bool {
        event.operation == crate::event::Operation::Update
            && event.before.is_some()
            && self.matches_as(event, View::Before)
    }

    fn matches_as(&self, event: &ChangeEvent, view: View) -> bool {
        let at = event.position;
        if let Some(floor) = &self.floor {
            if floor.get(&at.key()).is_some_and(|o| at.offset <= *o) {
                return false;
            }
        }
        let holds = |clause: &Clause, view| {
            let field = clause.path.resolve(event, view);
            clause
                .conditions
                .iter()
                .all(|condition| condition.holds(field))
        };
        // Without claims (no token filter) the client's clauses are all there is: the
        // per-subscriber path of an unconfined fan-out stays as short as it was.
        if self.claims.is_empty() {
            return self.clauses.iter().all(|clause| holds(clause, view));
        }
        if !self.claims.iter().all(|clause| holds(clause, view)) {
            return false;
        }
        // A client's own clauses see only what the token may see: a before-image its claims
        // reject is absent for them, as it is in the message (issue 20.1: otherwise a filter
        // on `before.*` reads another tenant's values one bound at a time).
        let own = match view {
            View::Current
                if event.before.is_some()
                    && self.clauses.iter().any(|c| c.path.reads_before())
                    && !self.claims.iter().all(|clause| holds(clause, View::Before)) =>
            {
                View::CurrentHidingBefore
            }
            view => view,
        };
        self.clauses.iter().all(|clause| holds(clause, own))
    }
}

impl Path {
    fn parse(key: &str, max_depth: usize) -> Result<Self, FilterError> {
        let mut parts = key.split('.');
        let root = match parts.next().unwrap_or_default() {
            "operation" => Root::Operation,
            "entity_type" => Root::EntityType,
            "entity_id" => Root::EntityId,
            "timestamp" => Root::Timestamp,
            "data" => Root::Data,
            "before" => Root::Before,
            "row" => Root::Row,
            other => {
                return Err(FilterError(format!(
                    "unknown field `{other}` in `{key}`: keys start with operation, entity_type, entity_id, timestamp, data, before or row"
                )))
            }
        };
        let rest: Vec<String> = parts.map(str::to_owned).collect();
        if rest.len() + 1 > max_depth {
            return Err(FilterError(format!(
                "`{key}` has {} segments, at most {max_depth}",
                rest.len() + 1
            )));
        }
        if rest.iter().any(String::is_empty) {
            return Err(FilterError(format!("`{key}` has an empty path segment")));
        }
        let scalar_root = matches!(
            root,
            Root::Operation | Root::EntityType | Root::EntityId | Root::Timestamp
        );
        if scalar_root && !rest.is_empty() {
            return Err(FilterError(format!(
                "`{key}`: {} has no sub-fields",
                key.split('.').next().unwrap_or_default()
            )));
        }
        Ok(Path { root, rest })
    }

    /// Whether the path can read the before-image in a message's view of the row.
    fn reads_before(&self) -> bool {
        matches!(self.root, Root::Before | Root::Row)
    }

    fn resolve<'a>(&self, event: &'a ChangeEvent, view: View) -> Field<'a> {
        let start = match (self.root, view) {
            (Root::Operation, _) => return Field::Text(event.operation.as_str()),
            (Root::EntityType, _) => return Field::Text(&event.entity_type),
            (Root::EntityId, _) => {
                return event.entity_id.as_deref().map_or(Field::Null, Field::Text)
            }
            (Root::Timestamp, _) => return Field::Text(&event.timestamp),
            (Root::Data, View::Current) => event.data.as_ref().map(Row::value),
            (Root::Before, View::Current) => event.before.as_ref().map(Row::value),
            (Root::Row, View::Current) => event.row(),
            (Root::Data, View::CurrentHidingBefore) => event.data.as_ref().map(Row::value),
            (Root::Before, View::CurrentHidingBefore) => None,
            (Root::Row, View::CurrentHidingBefore) => event
                .data
                .as_ref()
                .filter(|d| d.text() != "null")
                .map(Row::value),
            // The row as it was: its image before the change; what came before that is unknown.
            (Root::Data | Root::Row, View::Before) => event.before.as_ref().map(Row::value),
            (Root::Before, View::Before) => return Field::Missing,
        };
        let Some(mut value) = start else {
            return if self.rest.is_empty() {
                Field::Null
            } else {
                Field::Missing
            };
        };
        for segment in &self.rest {
            match value.get(segment.as_str()) {
                Some(next) => value = next,
                None => return Field::Missing,
            }
        }
        Field::Json(value)
    }
}

/// A table scan's first, cheap test: the JSON string tokens a row's text must contain for a
/// filter to match it, one of each set (a clause comparing a row field with strings: `eq`
/// or an `in` list of them). A row without them is passed over unparsed; a row with them is
/// still judged by [`Filter::matches`]. Only strings of printable ASCII other than `"`, `\`
/// and `/` are used (the only other way JSON may write them is `\uXXXX`, and a text with
/// that escape is always judged in full), so a row that matches always contains them.
#[derive(Debug, Default)]
pub struct Needles {
    sets: Vec<Vec<memchr::memmem::Finder<'static>>>,
}

impl Needles {
    /// False only when `text` cannot hold a row the filter matches.
    pub fn may_match(&self, text: &[u8]) -> bool {
        if self.sets.is_empty() || memchr::memmem::find(text, b"\\u").is_some() {
            return true;
        }
        self.sets
            .iter()
            .all(|set| set.iter().any(|finder| finder.find(text).is_some()))
    }
}

fn conditions_of(key: &str, value: &Value, max: usize) -> Result<Vec<Condition>, FilterError> {
    match value {
        Value::Array(options) => Ok(vec![Condition::In(scalars(key, "array", options, max)?)]),
        Value::Object(operators) => operators_of(key, operators, max),
        scalar => Ok(vec![Condition::Eq(scalar.clone())]),
    }
}

fn operators_of(
    key: &str,
    operators: &Map<String, Value>,
    max: usize,
) -> Result<Vec<Condition>, FilterError> {
    if operators.is_empty() {
        return Err(FilterError(format!(
            "`{key}`: an operator object needs at least one operator"
        )));
    }
    operators
        .iter()
        .map(|(op, operand)| {
            let scalar = || match operand {
                Value::Array(_) | Value::Object(_) => {
                    Err(FilterError(format!("`{key}`: `{op}` takes a string, number, bool or null")))
                }
                scalar => Ok(scalar.clone()),
            };
            let ordered = || match operand {
                Value::Number(_) | Value::String(_) => Ok(operand.clone()),
                _ => Err(FilterError(format!("`{key}`: `{op}` takes a number or a string"))),
            };
            let list = || match operand {
                Value::Array(options) => scalars(key, op, options, max),
                _ => Err(FilterError(format!("`{key}`: `{op}` takes an array"))),
            };
            Ok(match op.as_str() {
                "eq" => Condition::Eq(scalar()?),
                "ne" => Condition::Ne(scalar()?),
                "gt" => Condition::Gt(ordered()?),
                "gte" => Condition::Gte(ordered()?),
                "lt" => Condition::Lt(ordered()?),
                "lte" => Condition::Lte(ordered()?),
                "in" => Condition::In(list()?),
                "nin" => Condition::Nin(list()?),
                "exists" => match operand {
                    Value::Bool(flag) => Condition::Exists(*flag),
                    _ => return Err(FilterError(format!("`{key}`: `exists` takes true or false"))),
                },
                other => {
                    return Err(FilterError(format!(
                        "`{key}`: unknown operator `{other}` (eq, ne, gt, gte, lt, lte, in, nin, exists)"
                    )))
                }
            })
        })
        .collect()
}

fn scalars(key: &str, what: &str, options: &[Value], max: usize) -> Result<Options, FilterError> {
    if options.len() > max {
        return Err(FilterError(format!(
            "`{key}`: `{what}` has {} values, at most {max}",
            options.len()
        )));
    }
    if options.iter().any(|v| v.is_array() || v.is_object()) {
        return Err(FilterError(format!(
            "`{key}`: the values of `{what}` must be strings, numbers, bools or null"
        )));
    }
    Ok(Options::new(options.to_vec()))
}

impl Condition {
    /// The strings a field must equal one of for the condition to hold, when they are all
    /// plain (see [`Needles`]).
    fn plain_strings(&self) -> Option<Vec<&str>> {
        fn plain(value: &Value) -> Option<&str> {
            match value {
                Value::String(s)
                    if s.bytes().all(|b| {
                        (0x20..0x7f).contains(&b) && !matches!(b, b'"' | b'\\' | b'/')
                    }) =>
                {
                    Some(s.as_str())
                }
                _ => None,
            }
        }
        match self {
            Condition::Eq(value) => plain(value).map(|s| vec![s]),
            Condition::In(options) if !options.list.is_empty() => {
                options.list.iter().map(plain).collect()
            }
            _ => None,
        }
    }

    fn holds(&self, field: Field<'_>) -> bool {
        if let Field::Missing = field {
            return matches!(
                self,
                Condition::Exists(false) | Condition::Ne(_) | Condition::Nin(_)
            );
        }
        match self {
            Condition::Eq(expected) => equal(field, expected),
            Condition::Ne(expected) => !equal(field, expected),
            Condition::Gt(bound) => compare(field, bound) == Some(Ordering::Greater),
            Condition::Gte(bound) => matches!(
                compare(field, bound),
                Some(Ordering::Greater | Ordering::Equal)
            ),
            Condition::Lt(bound) => compare(field, bound) == Some(Ordering::Less),
            Condition::Lte(bound) => matches!(
                compare(field, bound),
                Some(Ordering::Less | Ordering::Equal)
            ),
            Condition::In(options) => options.contains(field),
            Condition::Nin(options) => !options.contains(field),
            Condition::Exists(expected) => *expected,
        }
    }
}

/// Equality of a field and a scalar of the filter; values of different types are never equal.
fn equal(field: Field<'_>, expected: &Value) -> bool {
    match (field, expected) {
        (Field::Missing, _) => false,
        (Field::Null, Value::Null) => true,
        (Field::Null, _) => false,
        (Field::Text(text), Value::String(s)) => text == s,
        (Field::Text(_), _) => false,
        (Field::Json(Value::Number(a)), Value::Number(b)) => {
            compare_numbers(a, b) == Some(Ordering::Equal)
        }
        (Field::Json(actual), expected) => !actual.is_number() && actual == expected,
    }
}

/// Order of a field and a bound of the same type (numbers or strings); `None` otherwise.
fn compare(field: Field<'_>, bound: &Value) -> Option<Ordering> {
    match (field, bound) {
        (Field::Text(text), Value::String(s)) => Some(text.cmp(s.as_str())),
        (Field::Json(Value::String(a)), Value::String(b)) => Some(a.cmp(b)),
        (Field::Json(Value::Number(a)), Value::Number(b)) => compare_numbers(a, b),
        _ => None,
    }
}

fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    let int = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (int(a), int(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

#[cfg(test)]
mod tests;
