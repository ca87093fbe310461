//! Protocol section 10, presence, with two replicas on one tansu broker: they share their
//! counts through the compacted `<group-id>-presence` topic (created by the first replica),
//! a watcher sees joins and leaves on the other replica, coalesced to at most one message a
//! second, a token sees presence only of topics it may read, and a replica killed with
//! SIGKILL ages out within seconds.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::support::*;

const SECRET: &str = "presence-secret";

fn token(sub: &str, topics: &[&str]) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": sub, "exp": exp, "topics": topics}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn connect_as(gateway: &Gateway, sub: &str, topics: &[&str]) -> Client {
    let mut client = Client::connect(gateway).await;
    client
        .send(json!({"action": "auth", "token": token(sub, topics)}))
        .await;
    assert_eq!(client.recv().await["type"], "ack");
    client
}

/// The next presence message, skipping anything else; with its arrival time.
async fn next_presence(client: &mut Client, within: Duration) -> (Instant, Value) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = client
            .recv_within(left)
            .await
            .expect("a presence message in time");
        if message["type"] == "presence" {
            return (Instant::now(), message);
        }
    }
}

/// Presence messages until one satisfies `done`.
async fn until_presence(
    client: &mut Client,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Vec<(Instant, Value)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{what}: never came; saw {seen:?}");
        let (at, message) = next_presence(client, left).await;
        let finished = done(&message);
        seen.push((at, message));
        if finished {
            return seen;
        }
    }
}

fn users(message: &Value) -> Vec<&str> {
    message["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn presence_is_shared_by_replicas_and_ages_out_a_killed_one() {
    let tansu = Tansu::start();
    let topic = unique("presence-src");
    tansu.create_topic(&topic, 1).await;
    let group = unique("presence-group");
    let flags = [
        "--group-id",
        group.as_str(),
        "--auth",
        "jwt",
        "--jwt-secret",
        SECRET,
        "--presence-interval",
        "1s",
    ];
    let a = Gateway::start(&tansu.brokers(), &topic, &flags).await;
    let mut b = Gateway::start(&tansu.brokers(), &topic, &flags).await;

    let mut alice = connect_as(&a, "alice", &["cdc.order"]).await;
    alice
        .send(json!({"action": "subscribe", "topic": "cdc.order", "presence": true}))
        .await;
    let mut bob = connect_as(&b, "bob", &["cdc.order"]).await;
    bob.subscribe("cdc.order", json!({})).await;
    let seen = until_presence(&mut alice, "bob on the other replica", |m| {
        m["subscribers"] == 2 && users(m) == ["alice", "bob"]
    })
    .await;
    let last = &seen.last().unwrap().1;
    assert!(
        seen.iter()
            .any(|(_, m)| m["joins"].as_array().unwrap().iter().any(|u| u == "bob")),
        "bob's join is said: {seen:?}"
    );
    assert_eq!(last["topic"], "cdc.order");
    for pair in seen.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 >= Duration::from_millis(900),
            "coalesced to at most one message a second: {seen:?}"
        );
    }

    // Asked, on either replica: each hears the other within seconds (the other's document
    // reaches it through the presence topic), so B is asked until it has heard A.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut asked = 0;
    let answer = loop {
        asked += 1;
        bob.send(json!({"action": "presence", "topic": "cdc.order", "id": asked}))
            .await;
        let answer = loop {
            let message = bob.recv().await;
            if message["type"] == "presence" {
                break message;
            }
        };
        assert_eq!(answer["id"], asked, "the answer carries its request's id");
        if answer["subscribers"] == 2 || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        (&answer["subscribers"], users(&answer)),
        (&json!(2), vec!["alice", "bob"]),
        "replica B never heard replica A's presence"
    );
    // A token sees presence only for topics it may read.
    let mut carol = connect_as(&b, "carol", &["cdc.customer"]).await;
    carol
        .send(json!({"action": "presence", "topic": "cdc.order", "id": 2}))
        .await;
    let refused = carol.recv().await;
    assert_eq!(
        (&refused["type"], &refused["code"]),
        (&json!("error"), &json!("FORBIDDEN")),
        "{refused}"
    );

    // Bob leaves: said as a leave.
    bob.send(json!({"action": "unsubscribe", "topic": "cdc.order"}))
        .await;
    let seen = until_presence(&mut alice, "bob's leave", |m| m["subscribers"] == 1).await;
    let last = &seen.last().unwrap().1;
    assert_eq!(
        (users(last), &last["leaves"]),
        (vec!["alice"], &json!(["bob"]))
    );

    // Bob again, then his replica is killed: it stops reporting and ages out.
    bob.subscribe("cdc.order", json!({})).await;
    until_presence(&mut alice, "bob back", |m| m["subscribers"] == 2).await;
    b.signal("KILL");
    b.wait_exit(Duration::from_secs(10));
    let killed = Instant::now();
    until_presence(&mut alice, "the killed replica's bob aged out", |m| {
        m["subscribers"] == 1 && users(m) == ["alice"]
    })
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "aged out after {:?}",
        killed.elapsed()
    );
    assert_eq!(a.metric("cdc_gateway_presence_replicas").await, 1.0);
}
