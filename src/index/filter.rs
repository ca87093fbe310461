//! Subscription filters (protocol section 4), compiled once at subscribe time into paths and
//! typed conditions, so matching an event walks a few fields and never re-reads the JSON the
//! client sent. Matching reads the normalized event directly: no serialization per check.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

use crate::event::{ChangeEvent, Row};
use crate::position::Position;

/// Most keys in one filter object: every clause is evaluated on the consumer task for every
/// event of the topic, so a client may not make that cost unbounded.
pub const MAX_CLAUSES: usize = 32;
/// Most values in one `in` / `nin` list or array value.
pub const MAX_VALUES: usize = 256;
/// Most segments in one key (`data.a.b.c` has four).
pub const MAX_DEPTH: usize = 8;

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
    In(Vec<Value>),
    Nin(Vec<Value>),
    Exists(bool),
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
    /// Compiles the `filters` object of a subscribe request (`None` or `null`: no filter).
    pub fn compile(spec: Option<&Value>) -> Result<Self, FilterError> {
        let object = match spec {
            None | Some(Value::Null) => return Ok(Filter::default()),
            Some(Value::Object(object)) => object,
            Some(_) => return Err(FilterError("`filters` must be an object".into())),
        };
        if object.len() > MAX_CLAUSES {
            return Err(FilterError(format!(
                "{} keys: a filter has at most {MAX_CLAUSES}",
                object.len()
            )));
        }
        let clauses = object
            .iter()
            .map(|(key, value)| {
                Ok(Clause {
                    path: Path::parse(key)?,
                    conditions: conditions_of(key, value)?,
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
        self.clauses.iter().chain(&self.claims).all(|clause| {
            let field = clause.path.resolve(event, view);
            clause
                .conditions
                .iter()
                .all(|condition| condition.holds(field))
        })
    }
}

impl Path {
    fn parse(key: &str) -> Result<Self, FilterError> {
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
        if rest.len() + 1 > MAX_DEPTH {
            return Err(FilterError(format!(
                "`{key}` has {} segments, at most {MAX_DEPTH}",
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

fn conditions_of(key: &str, value: &Value) -> Result<Vec<Condition>, FilterError> {
    match value {
        Value::Array(options) => Ok(vec![Condition::In(scalars(key, "array", options)?)]),
        Value::Object(operators) => operators_of(key, operators),
        scalar => Ok(vec![Condition::Eq(scalar.clone())]),
    }
}

fn operators_of(key: &str, operators: &Map<String, Value>) -> Result<Vec<Condition>, FilterError> {
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
                Value::Array(options) => scalars(key, op, options),
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

fn scalars(key: &str, what: &str, options: &[Value]) -> Result<Vec<Value>, FilterError> {
    if options.len() > MAX_VALUES {
        return Err(FilterError(format!(
            "`{key}`: `{what}` has {} values, at most {MAX_VALUES}",
            options.len()
        )));
    }
    if options.iter().any(|v| v.is_array() || v.is_object()) {
        return Err(FilterError(format!(
            "`{key}`: the values of `{what}` must be strings, numbers, bools or null"
        )));
    }
    Ok(options.to_vec())
}

impl Condition {
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
            Condition::In(options) => options.iter().any(|option| equal(field, option)),
            Condition::Nin(options) => !options.iter().any(|option| equal(field, option)),
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
