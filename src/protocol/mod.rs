//! The wire format, below every module that speaks it (fan-out, WebSocket, SSE, HTTP, metrics):
//! parsing client requests into typed values, the error and close codes as enum values, and
//! the builders of every server message. Nothing here touches a socket.

pub mod close;
pub mod data;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::position::Position;

/// Error codes of error replies, and of the JSON bodies of refused HTTP requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidMessage,
    UnknownAction,
    InvalidTopic,
    InvalidFilter,
    Forbidden,
    TooManySubscriptions,
    RateLimited,
    /// A subscribe whose snapshot rows or missed events would take the connection's unread
    /// backlog past `--max-backlog-rows` (an extension).
    BacklogFull,
    NotSubscribed,
    Unauthenticated,
    /// HTTP only: the gateway is draining (503).
    ShuttingDown,
    /// HTTP only: no such endpoint (404).
    NotFound,
    /// HTTP only: a method other than GET (405).
    MethodNotAllowed,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::InvalidMessage,
        ErrorCode::UnknownAction,
        ErrorCode::InvalidTopic,
        ErrorCode::InvalidFilter,
        ErrorCode::Forbidden,
        ErrorCode::TooManySubscriptions,
        ErrorCode::RateLimited,
        ErrorCode::BacklogFull,
        ErrorCode::NotSubscribed,
        ErrorCode::Unauthenticated,
        ErrorCode::ShuttingDown,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidMessage => "INVALID_MESSAGE",
            ErrorCode::UnknownAction => "UNKNOWN_ACTION",
            ErrorCode::InvalidTopic => "INVALID_TOPIC",
            ErrorCode::InvalidFilter => "INVALID_FILTER",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::TooManySubscriptions => "TOO_MANY_SUBSCRIPTIONS",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::BacklogFull => "BACKLOG_FULL",
            ErrorCode::NotSubscribed => "NOT_SUBSCRIBED",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

/// A client request, after the envelope checks.
#[derive(Debug, PartialEq)]
pub enum Request {
    /// `token` is required under `--auth jwt` (the session checks that).
    Auth {
        token: Option<String>,
    },
    Subscribe {
        topic: String,
        filters: Option<Value>,
        /// The position to resume from, as sent: resolved against the partitions the
        /// gateway reads by the session ([`crate::position::Resolver`]).
        since: Option<Value>,
        snapshot: bool,
        /// Asks for `presence` messages while subscribed (an extension).
        presence: bool,
    },
    /// Who watches a topic, over every replica (an extension).
    Presence {
        topic: String,
    },
    Unsubscribe {
        topic: String,
    },
    Ping {
        timestamp: Option<Value>,
    },
    Pong,
}

/// A request that cannot be executed, with the `id` to echo when one was readable.
#[derive(Debug, PartialEq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
    pub id: Option<Value>,
}

/// Parses one text message. On success returns the request and its `id`.
pub fn parse(text: &[u8]) -> Result<(Request, Option<Value>), Rejection> {
    let invalid = |message: &str, id: Option<Value>| Rejection {
        code: ErrorCode::InvalidMessage,
        message: message.into(),
        id,
    };
    let value: Value =
        serde_json::from_slice(text).map_err(|e| invalid(&format!("not JSON: {e}"), None))?;
    let Value::Object(mut object) = value else {
        return Err(invalid("a message is a JSON object", None));
    };
    let id = match object.remove("id") {
        None | Some(Value::Null) => None,
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id),
        Some(_) => return Err(invalid("`id` must be a string or a number", None)),
    };
    let action = match object.remove("action") {
        Some(Value::String(action)) => action,
        Some(_) => return Err(invalid("`action` must be a string", id)),
        None => return Err(invalid("missing field `action`", id)),
    };
    let request = match action.as_str() {
        "auth" => match object.remove("token") {
            None | Some(Value::Null) => Request::Auth { token: None },
            Some(Value::String(token)) => Request::Auth { token: Some(token) },
            Some(_) => return Err(invalid("`token` must be a string", id)),
        },
        "subscribe" => {
            let topic = match take_topic(&mut object) {
                Ok(topic) => topic,
                Err(message) => return Err(invalid(message, id)),
            };
            let since = match object.remove("since") {
                None | Some(Value::Null) => None,
                Some(since @ Value::Object(_)) => Some(since),
                Some(_) => {
                    return Err(invalid(
                        "`since` maps \"<source topic>:<partition>\" to offsets",
                        id,
                    ))
                }
            };
            let snapshot = match object.remove("snapshot") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(flag)) => flag,
                Some(_) => return Err(invalid("`snapshot` must be true or false", id)),
            };
            let presence = match object.remove("presence") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(flag)) => flag,
                Some(_) => return Err(invalid("`presence` must be true or false", id)),
            };
            Request::Subscribe {
                topic,
                filters: object.remove("filters"),
                since,
                snapshot,
                presence,
            }
        }
        "presence" => match take_topic(&mut object) {
            Ok(topic) => Request::Presence { topic },
            Err(message) => return Err(invalid(message, id)),
        },
        "unsubscribe" => match take_topic(&mut object) {
            Ok(topic) => Request::Unsubscribe { topic },
            Err(message) => return Err(invalid(message, id)),
        },
        "ping" => Request::Ping {
            timestamp: object.remove("timestamp"),
        },
        "pong" => Request::Pong,
        other => {
            return Err(Rejection {
                code: ErrorCode::UnknownAction,
                message: format!(
                    "unknown action `{other}` (auth, subscribe, unsubscribe, presence, ping, pong)"
                ),
                id,
            })
        }
    };
    Ok((request, id))
}

fn take_topic(object: &mut Map<String, Value>) -> Result<String, &'static str> {
    match object.remove("topic") {
        Some(Value::String(topic)) => Ok(topic),
        Some(_) => Err("`topic` must be a string"),
        None => Err("missing field `topic`"),
    }
}

/// Builds server replies. Each returns the serialized text of one message.
pub mod reply {
    use super::*;

    fn with_id(mut object: Map<String, Value>, id: Option<&Value>) -> Vec<u8> {
        if let Some(id) = id {
            object.insert("id".into(), id.clone());
        }
        serde_json::to_vec(&Value::Object(object)).expect("a JSON value always serializes")
    }

    fn object(pairs: &[(&str, Value)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect()
    }

    pub fn ack(action: &str, topic: Option<&str>, id: Option<&Value>) -> Vec<u8> {
        let mut fields = object(&[("type", "ack".into()), ("action", action.into())]);
        if let Some(topic) = topic {
            fields.insert("topic".into(), topic.into());
        }
        with_id(fields, id)
    }

    /// The subscribe ack: the dispatched position, and the resume/snapshot outcome when asked.
    pub fn subscribed(
        topic: &str,
        position: &Position,
        recovered: Option<bool>,
        snapshot: Option<(usize, bool)>,
        id: Option<&Value>,
    ) -> Vec<u8> {
        let mut fields = object(&[
            ("type", "ack".into()),
            ("action", "subscribe".into()),
            ("topic", topic.into()),
            ("position", crate::position::to_json(position)),
        ]);
        if let Some(recovered) = recovered {
            fields.insert("recovered".into(), recovered.into());
        }
        if let Some((rows, complete)) = snapshot {
            fields.insert(
                "snapshot".into(),
                serde_json::json!({"rows": rows, "complete": complete}),
            );
        }
        with_id(fields, id)
    }

    pub fn error(
        code: ErrorCode,
        message: &str,
        topic: Option<&str>,
        id: Option<&Value>,
    ) -> Vec<u8> {
        let mut fields = object(&[
            ("type", "error".into()),
            ("code", code.as_str().into()),
            ("message", message.into()),
        ]);
        if let Some(topic) = topic {
            fields.insert("topic".into(), topic.into());
        }
        with_id(fields, id)
    }

    /// After a subscription's snapshot rows: everything after it is live.
    pub fn synced(topic: &str) -> Vec<u8> {
        with_id(
            object(&[("type", "synced".into()), ("topic", topic.into())]),
            None,
        )
    }

    /// An extension (not in the contract): records of one source partition, offsets `from`
    /// to `to`, were skipped unread (the broker no longer had them), so a subscription to
    /// `topic` may have missed events. The client drops what it derived and reloads, as after
    /// `recovered: false`.
    pub fn reset(topic: &str, source: &str, partition: i32, from: i64, to: i64) -> Vec<u8> {
        with_id(
            object(&[
                ("type", "reset".into()),
                ("topic", topic.into()),
                ("reason", "records_lost".into()),
                ("source", source.into()),
                ("partition", partition.into()),
                ("from", from.into()),
                ("to", to.into()),
            ]),
            None,
        )
    }

    pub fn pong(timestamp: Value, id: Option<&Value>) -> Vec<u8> {
        with_id(
            object(&[("type", "pong".into()), ("timestamp", timestamp)]),
            id,
        )
    }

    pub fn ping(timestamp_ms: i64) -> Vec<u8> {
        with_id(
            object(&[("type", "ping".into()), ("timestamp", timestamp_ms.into())]),
            None,
        )
    }
}

/// A JSON HTTP response: the `{"code": …, "message": …}` bodies of refusals, and the
/// small endpoints.
pub fn json_response(
    status: hyper::StatusCode,
    body: &serde_json::Value,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    hyper::Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_value(v: Value) -> Result<(Request, Option<Value>), Rejection> {
        parse(&serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn requests_parse() {
        let (req, id) = parse_value(json!({"action": "subscribe", "topic": "cdc.order", "id": 7,
            "filters": {"operation": "insert"}, "since": {"0": 12}, "snapshot": true}))
        .unwrap();
        assert_eq!(id, Some(json!(7)));
        assert_eq!(
            req,
            Request::Subscribe {
                topic: "cdc.order".into(),
                filters: Some(json!({"operation": "insert"})),
                since: Some(json!({"0": 12})),
                snapshot: true,
                presence: false,
            }
        );
        assert_eq!(
            parse_value(json!({"action": "presence", "topic": "cdc.order"}))
                .unwrap()
                .0,
            Request::Presence {
                topic: "cdc.order".into()
            }
        );
        assert_eq!(
            parse_value(json!({"action": "unsubscribe", "topic": "t", "id": "x"}))
                .unwrap()
                .1,
            Some(json!("x"))
        );
        assert_eq!(
            parse_value(json!({"action": "ping", "timestamp": 5}))
                .unwrap()
                .0,
            Request::Ping {
                timestamp: Some(json!(5))
            }
        );
        assert_eq!(
            parse_value(json!({"action": "pong"})).unwrap().0,
            Request::Pong
        );
    }

    #[test]
    fn bad_requests_are_rejected_with_codes() {
        let code = |v: &[u8]| parse(v).unwrap_err().code;
        assert_eq!(code(b"not json"), ErrorCode::InvalidMessage);
        assert_eq!(code(b"[1]"), ErrorCode::InvalidMessage);
        assert_eq!(
            code(br#"{"topic": "cdc.order"}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code(br#"{"action": "subscribe"}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code(br#"{"action": "subscribe", "topic": 5}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code(br#"{"action": "subscribe", "topic": "t", "since": [1]}"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(code(br#"{"action": "dance"}"#), ErrorCode::UnknownAction);
        assert_eq!(
            parse(br#"{"action": "dance", "id": 3}"#).unwrap_err().id,
            Some(json!(3))
        );
        assert_eq!(
            code(br#"{"action": "ping", "id": [1]}"#),
            ErrorCode::InvalidMessage
        );
    }

    #[test]
    fn replies_echo_the_id() {
        let v: Value = serde_json::from_slice(&reply::error(
            ErrorCode::InvalidTopic,
            "bad",
            Some("x"),
            Some(&json!(7)),
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({"type": "error", "code": "INVALID_TOPIC", "message": "bad", "topic": "x", "id": 7})
        );
        let v: Value = serde_json::from_slice(&reply::subscribed(
            "cdc.order",
            &Position::from([(crate::position::Partition::new("t", 0), 5)]),
            None,
            None,
            None,
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({"type": "ack", "action": "subscribe", "topic": "cdc.order", "position": {"t:0": 5}})
        );
        let v: Value = serde_json::from_slice(&reply::synced("cdc.order")).unwrap();
        assert_eq!(v, json!({"type": "synced", "topic": "cdc.order"}));
        let v: Value =
            serde_json::from_slice(&reply::reset("cdc.order", "shop.orders", 2, 200, 2103))
                .unwrap();
        assert_eq!(
            v,
            json!({"type": "reset", "topic": "cdc.order", "reason": "records_lost",
                   "source": "shop.orders", "partition": 2, "from": 200, "to": 2103})
        );
    }
}
