//! Protocol section 6 under `--auth jwt`: where tokens come from, what an unauthenticated
//! connection may do, the `topics` and `filters` claims, expiry and refresh, the three key
//! types, and the same rules on `/sse`. Tokens are signed here with the private keys in
//! `tests/fixtures/jwt/`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::support::*;

const SECRET: &str = "test-secret";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn claims(topics: &[&str]) -> Value {
    json!({"exp": now() + 600, "topics": topics})
}

async fn jwt_stack(extra: &[&str]) -> Stack {
    let mut args = vec!["--auth", "jwt", "--jwt-secret", SECRET];
    args.extend_from_slice(extra);
    start_stack(&args).await
}

async fn connect_with(
    gateway: &impl Endpoint,
    header: Option<&str>,
    query: Option<&str>,
) -> Client {
    let url = match query {
        Some(token) => format!("{}?token={token}", gateway.ws_url()),
        None => gateway.ws_url(),
    };
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = header {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    Client { ws }
}

#[tokio::test]
async fn without_a_token_only_auth_is_answered_then_topics_are_checked() {
    let (_tansu, gateway, producer, topic) = jwt_stack(&[]).await;
    let mut client = Client::connect(&gateway).await;
    client
        .send(json!({"action": "subscribe", "topic": "cdc.order", "id": 1}))
        .await;
    let refused = client.recv().await;
    assert_eq!(
        (refused["code"].as_str(), refused["id"].as_i64()),
        (Some("UNAUTHENTICATED"), Some(1))
    );
    client.send(json!({"action": "ping", "id": 2})).await;
    assert_eq!(client.recv().await["code"], "UNAUTHENTICATED");
    client.send(json!({"action": "auth", "id": 3})).await;
    assert_eq!(
        client.recv().await["code"],
        "INVALID_MESSAGE",
        "auth needs a token"
    );

    let token = hs256(claims(&["cdc.order", "cdc.customer.*"]));
    client
        .send(json!({"action": "auth", "token": token, "id": 4}))
        .await;
    let ack = client.recv().await;
    assert_eq!(
        (ack["type"].as_str(), ack["action"].as_str()),
        (Some("ack"), Some("auth"))
    );
    client.subscribe("cdc.order", json!({})).await;
    client.subscribe("cdc.customer.7", json!({})).await;
    for forbidden in ["cdc.invoice", "cdc.customer", "cdc.order.1"] {
        client
            .send(json!({"action": "subscribe", "topic": forbidden}))
            .await;
        let error = client.recv().await;
        assert_eq!(
            (error["code"].as_str(), error["topic"].as_str()),
            (Some("FORBIDDEN"), Some(forbidden))
        );
    }
    producer
        .update_order(
            &topic,
            "1",
            json!({"id": "1", "tenant": "acme", "status": "new"}),
        )
        .await;
    assert_eq!(client.data().await["payload"]["entity_id"], "1");
}

#[tokio::test]
async fn no_token_in_time_closes_with_4002_and_a_bad_one_with_4001() {
    let (_tansu, gateway, _producer, _topic) = jwt_stack(&["--auth-timeout", "1s"]).await;
    let mut silent = Client::connect(&gateway).await;
    assert_eq!(silent.closed().await.0, 4002);

    let mut forger = Client::connect(&gateway).await;
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &claims(&["cdc.*"]),
        &EncodingKey::from_secret(b"not the secret"),
    )
    .unwrap();
    forger
        .send(json!({"action": "auth", "token": forged}))
        .await;
    let (code, reason) = forger.closed().await;
    assert_eq!(code, 4001);
    assert!(reason.starts_with("invalid token"), "{reason}");

    let mut late = Client::connect(&gateway).await;
    let expired = hs256(json!({"exp": now() - 3600, "topics": ["cdc.*"]}));
    late.send(json!({"action": "auth", "token": expired})).await;
    assert_eq!(late.closed().await, (4001, "token expired".into()));

    let mut header = connect_with(&gateway, Some("garbage"), None).await;
    assert_eq!(header.closed().await.0, 4001, "a bad header token");
    assert_eq!(
        gateway
            .metric(r#"cdc_gateway_connections_closed_total{code="4001"}"#)
            .await,
        3.0
    );
}

#[tokio::test]
async fn header_and_query_tokens_and_claim_filters_confine_what_arrives() {
    let (_tansu, gateway, producer, topic) = jwt_stack(&[]).await;
    let acme_only = hs256(json!({"exp": now() + 600, "topics": ["cdc.order"],
                                 "filters": {"cdc.order": {"data.tenant": "acme"}}}));
    let mut confined = connect_with(&gateway, Some(&acme_only), None).await;
    confined
        .subscribe("cdc.order", json!({"data.status": "paid"}))
        .await;
    let mut by_query = connect_with(&gateway, None, Some(&hs256(claims(&["cdc.*"])))).await;
    by_query.subscribe("cdc.order", json!({})).await;

    producer
        .update_order(
            &topic,
            "1",
            json!({"id": "1", "tenant": "globex", "status": "paid"}),
        )
        .await;
    producer
        .update_order(
            &topic,
            "2",
            json!({"id": "2", "tenant": "acme", "status": "new"}),
        )
        .await;
    producer
        .update_order(
            &topic,
            "3",
            json!({"id": "3", "tenant": "acme", "status": "paid"}),
        )
        .await;
    let mut all = Vec::new();
    for _ in 0..3 {
        all.push(by_query.data().await["payload"]["entity_id"].clone());
    }
    assert_eq!(all, [json!("1"), json!("2"), json!("3")]);
    assert_eq!(
        confined.data().await["payload"]["entity_id"],
        "3",
        "the token's tenant filter AND the client's status filter"
    );
    confined.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_token_ends_with_its_connection_unless_a_fresh_one_replaces_it() {
    let (_tansu, gateway, _producer, _topic) = jwt_stack(&["--jwt-leeway", "0s"]).await;
    let short = hs256(json!({"exp": now() + 2, "topics": ["cdc.*"]}));
    let mut lapsing = connect_with(&gateway, Some(&short), None).await;
    lapsing.subscribe("cdc.order", json!({})).await;

    let mut renewing = connect_with(&gateway, Some(&short), None).await;
    renewing.subscribe("cdc.order", json!({})).await;
    renewing.subscribe("cdc.customer.1", json!({})).await;
    let narrower = hs256(json!({"exp": now() + 600, "topics": ["cdc.customer.*"]}));
    renewing
        .send(json!({"action": "auth", "token": narrower, "id": "renew"}))
        .await;
    assert_eq!(renewing.recv().await["action"], "auth");
    let revoked = renewing.recv().await;
    assert_eq!(
        (revoked["code"].as_str(), revoked["topic"].as_str()),
        (Some("FORBIDDEN"), Some("cdc.order")),
        "a subscription the fresh claims do not cover ends"
    );

    assert_eq!(lapsing.closed().await, (4001, "token expired".into()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    renewing
        .send(json!({"action": "ping", "id": "still"}))
        .await;
    assert_eq!(
        renewing.recv().await["type"],
        "pong",
        "the fresh token keeps it open"
    );
    assert_eq!(
        gateway.metric("cdc_gateway_subscriptions_active").await,
        1.0
    );
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_against_pem_public_keys() {
    for (algorithm, private, public) in [
        (Algorithm::RS256, "rs256-private.pem", "rs256-public.pem"),
        (Algorithm::ES256, "es256-private.pem", "es256-public.pem"),
    ] {
        let public = fixture(public);
        let (_tansu, gateway, _producer, _topic) =
            start_stack(&["--auth", "jwt", "--jwt-public-key", &public]).await;
        let pem = std::fs::read(fixture(private)).unwrap();
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            _ => EncodingKey::from_ec_pem(&pem),
        }
        .unwrap();
        let token = encode(&Header::new(algorithm), &claims(&["cdc.order"]), &key).unwrap();
        let mut client = connect_with(&gateway, Some(&token), None).await;
        client.subscribe("cdc.order", json!({})).await;

        let mut hmac = connect_with(&gateway, Some(&hs256(claims(&["cdc.*"]))), None).await;
        assert_eq!(
            hmac.closed().await.0,
            4001,
            "{algorithm:?}: an HS256 token is refused"
        );
    }
}

#[tokio::test]
async fn event_streams_need_a_token_that_covers_their_topics() {
    let (_tansu, gateway, _producer, _topic) = jwt_stack(&[]).await;
    let token = hs256(claims(&["cdc.order"]));
    for (target, status, code) in [
        ("/sse?topic=cdc.order".to_owned(), 401, "UNAUTHENTICATED"),
        (
            "/sse?topic=cdc.order&token=nope".to_owned(),
            401,
            "UNAUTHENTICATED",
        ),
        (
            format!("/sse?topic=cdc.invoice&token={token}"),
            403,
            "FORBIDDEN",
        ),
    ] {
        let (got, body) = http_get(gateway.addr(), &target).await.unwrap();
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{target}"
        );
    }
    // With the token in the header, the stream starts.
    let bearer = format!("Bearer {token}");
    let stream = SseClient::open(
        gateway.addr(),
        "/sse?topic=cdc.order",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(stream.status, 200);
}

/// The review's bypass: a claim filter keyed by the entity topic must also confine its row
/// topics, live and in snapshots, and a row that moves between tenants shows neither tenant
/// the other's image.
#[tokio::test]
async fn a_tenant_confined_token_sees_no_other_tenants_row_through_a_row_topic() {
    let (_tansu, gateway, producer, topic) = jwt_stack(&[]).await;
    let acme_only = hs256(json!({"exp": now() + 600, "topics": ["cdc.*"],
                                 "filters": {"cdc.order": {"data.tenant": "acme"}}}));
    let row = |tenant: &str, before: Value| {
        order("7", "update", json!({"id": "7", "tenant": tenant}), before)
    };
    let mut watcher = connect_with(&gateway, Some(&hs256(claims(&["cdc.*"]))), None).await;
    watcher.subscribe("cdc.order", json!({})).await;
    producer
        .send_json(&topic, None, &row("globex", Value::Null))
        .await;
    assert_eq!(watcher.data().await["payload"]["data"]["tenant"], "globex");

    let mut attacker = connect_with(&gateway, Some(&acme_only), None).await;
    attacker
        .send(json!({"action": "subscribe", "topic": "cdc.order.7", "snapshot": true}))
        .await;
    let ack = attacker.recv().await;
    assert_eq!(
        ack["snapshot"]["rows"], 0,
        "globex's row 7 is no snapshot row: {ack}"
    );
    assert_eq!(attacker.recv().await["type"], "synced");

    // Globex's row moves into acme: acme sees it, but not where it came from.
    producer
        .send_json(
            &topic,
            None,
            &row("acme", json!({"id": "7", "tenant": "globex"})),
        )
        .await;
    let arrived = attacker.data().await;
    assert_eq!(arrived["payload"]["data"]["tenant"], "acme");
    assert_eq!(arrived["payload"]["before"], Value::Null);
    // And back out: a leave event that does not say where it went.
    producer
        .send_json(
            &topic,
            None,
            &row("globex", json!({"id": "7", "tenant": "acme"})),
        )
        .await;
    let left = attacker.data().await;
    assert_eq!(
        (&left["leave"], &left["payload"]["data"]),
        (&json!(true), &Value::Null)
    );
    producer
        .send_json(
            &topic,
            None,
            &row("globex", json!({"id": "7", "tenant": "globex"})),
        )
        .await;
    for _ in 0..3 {
        watcher.data().await;
    }
    attacker.expect_silence(Duration::from_millis(300)).await;
}

/// A fresh token re-confines the subscriptions it still covers (protocol section 6).
#[tokio::test]
async fn a_fresh_tokens_claim_filters_confine_existing_subscriptions() {
    let (_tansu, gateway, producer, topic) = jwt_stack(&[]).await;
    let mut client = connect_with(&gateway, Some(&hs256(claims(&["cdc.*"]))), None).await;
    client.subscribe("cdc.order", json!({})).await;
    let change = |id: &str, tenant: &str| {
        order(
            id,
            "update",
            json!({"id": id, "tenant": tenant}),
            Value::Null,
        )
    };
    producer
        .send_json(&topic, None, &change("1", "globex"))
        .await;
    assert_eq!(client.data().await["payload"]["entity_id"], "1");

    let acme_only = hs256(json!({"exp": now() + 600, "topics": ["cdc.*"],
                                 "filters": {"cdc.order": {"data.tenant": "acme"}}}));
    client
        .send(json!({"action": "auth", "token": acme_only, "id": "narrow"}))
        .await;
    assert_eq!(client.recv().await["id"], "narrow");
    producer
        .send_json(&topic, None, &change("2", "globex"))
        .await;
    producer.send_json(&topic, None, &change("3", "acme")).await;
    assert_eq!(
        client.data().await["payload"]["entity_id"],
        "3",
        "globex's row 2 is filtered out by the fresh claims"
    );
}

/// The review's flood: connections that send thousands of requests without a token and never
/// read the replies are closed at the auth timeout all the same, and release their slots.
#[tokio::test]
async fn unauthenticated_flooders_that_never_read_do_not_outlive_the_auth_timeout() {
    use futures_util::SinkExt as _;
    use tokio_tungstenite::tungstenite::Message;
    let (_tansu, gateway, _producer, _topic) = jwt_stack(&["--auth-timeout", "1s"]).await;
    let mut flooders = Vec::new();
    for _ in 0..5 {
        let mut client = Client::connect_small_buffer(&gateway).await;
        flooders.push(tokio::spawn(async move {
            // Each request's error reply echoes its 60 KB action name: the replies fill the
            // socket buffers the client never drains.
            let action = "x".repeat(60_000);
            for n in 0..3000 {
                let request = json!({"action": action, "id": n}).to_string();
                if client.ws.send(Message::text(request)).await.is_err() {
                    break;
                }
            }
            // Never read; keep the socket open until the test ends.
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(client);
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let active = gateway.metric("cdc_gateway_connections_active").await;
        if active == 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{active} flooders still connected 15 s after a 1 s auth timeout"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for flooder in flooders {
        flooder.abort();
    }
}

/// Issue 20.1, as the adversary ran it: a token confined to acme subscribes with a filter on
/// `before.*`. Two rows move from globex into acme, one whose globex image had amount 5000,
/// one with 10. The client's own filter once read the hidden before-image, so only the first
/// arrived: bound by bound, another tenant's values could be read out. A client's filter sees
/// what the token may see, wherever a filter runs: live, resumed from history, snapshot, SSE.
#[tokio::test]
async fn a_confined_tokens_own_filter_cannot_read_a_before_image_its_claims_hide() {
    let (_tansu, gateway, producer, topic) = jwt_stack(&[]).await;
    let acme_only = hs256(json!({"exp": now() + 600, "topics": ["cdc.*"],
                                 "filters": {"cdc.order": {"data.tenant": "acme"}}}));
    let probe = json!({"before.amount": {"gt": 1000}});
    let absent = json!({"before.amount": {"exists": false}});
    let mut live = connect_with(&gateway, Some(&acme_only), None).await;
    let ack = live.subscribe("cdc.order", probe.clone()).await;
    let start = ack["position"].clone();
    let mut blind = connect_with(&gateway, Some(&acme_only), None).await;
    blind.subscribe("cdc.order", absent.clone()).await;
    let bearer = format!("Bearer {acme_only}");
    let encoded = |filter: &Value| {
        form_urlencoded::byte_serialize(filter.to_string().as_bytes()).collect::<String>()
    };
    let mut stream = SseClient::open(
        gateway.addr(),
        &format!("/sse?topic=cdc.order&filters={}", encoded(&probe)),
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.next_event(WAIT).await.unwrap().0, "ack");

    let moved = |id: &str, amount: u64| {
        order(
            id,
            "update",
            json!({"id": id, "tenant": "acme", "amount": 1}),
            json!({"id": id, "tenant": "globex", "amount": amount}),
        )
    };
    producer.send_json(&topic, None, &moved("1", 5000)).await;
    producer.send_json(&topic, None, &moved("2", 10)).await;
    // A row of acme's own whose before-image the token may see: the probe matches it.
    let sentinel = order(
        "3",
        "update",
        json!({"id": "3", "tenant": "acme", "amount": 1}),
        json!({"id": "3", "tenant": "acme", "amount": 5000}),
    );
    producer.send_json(&topic, None, &sentinel).await;

    let first = live.data().await;
    assert_eq!(
        first["payload"]["entity_id"], "3",
        "the probe matched a hidden before-image: {first}"
    );
    let (_, _, first) = stream.next_event(WAIT).await.unwrap();
    assert_eq!(first["payload"]["entity_id"], "3", "over SSE: {first}");
    // Both moved rows look alike to the token: before-images absent.
    for expected in ["1", "2"] {
        let message = blind.data().await;
        assert_eq!(message["payload"]["entity_id"], expected);
        assert_eq!(message["payload"]["before"], Value::Null);
    }
    // Resumed from before the moves, history is filtered the same way.
    let mut resumed = connect_with(&gateway, Some(&acme_only), None).await;
    resumed
        .send(
            json!({"action": "subscribe", "topic": "cdc.order", "filters": probe, "since": start}),
        )
        .await;
    let ack = resumed.recv().await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let replayed = resumed.data().await;
    assert_eq!(replayed["payload"]["entity_id"], "3", "{replayed}");
    // And a snapshot: the moved rows' before-images are not for this token's filter either.
    let mut snapshot = connect_with(&gateway, Some(&acme_only), None).await;
    snapshot
        .send(json!({"action": "subscribe", "topic": "cdc.order", "filters": probe, "snapshot": true}))
        .await;
    let ack = snapshot.recv().await;
    let rows = ack["snapshot"]["rows"].as_u64().unwrap();
    let mut ids = Vec::new();
    for _ in 0..rows {
        ids.push(snapshot.data().await["payload"]["entity_id"].clone());
    }
    assert!(
        !ids.contains(&json!("1")) && !ids.contains(&json!("2")),
        "snapshot rows selected by a hidden before-image: {ids:?}"
    );
}

/// A token signed with `private` (a fixture), naming `kid` in its header when given.
fn signed(algorithm: Algorithm, private: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = std::fs::read(fixture(private)).unwrap();
    let key = match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        _ => EncodingKey::from_ec_pem(&pem),
    }
    .unwrap();
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).unwrap()
}

/// A stand-in for an identity provider's JWKS endpoint on loopback: answers every GET with
/// the body set last, and counts the requests.
struct JwksServer {
    addr: std::net::SocketAddr,
    body: std::sync::Arc<std::sync::Mutex<String>>,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn serve(file: &str) -> Self {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = std::sync::Arc::new(std::sync::Mutex::new(
            std::fs::read_to_string(fixture(file)).unwrap(),
        ));
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (served, counted) = (body.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (served, counted) = (served.clone(), counted.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buffer[..n]),
                        }
                    }
                    assert!(
                        head.starts_with(b"GET /jwks HTTP/1.1\r\n"),
                        "{}",
                        String::from_utf8_lossy(&head)
                    );
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body = served.lock().unwrap().clone();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        Self {
            addr,
            body,
            requests,
            task,
        }
    }

    fn publish(&self, file: &str) {
        *self.body.lock().unwrap() = std::fs::read_to_string(fixture(file)).unwrap();
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Issue 22.4: keys rotate at the identity provider while clients stay connected. The
/// provider publishes a second key, then signs with it: the first token naming it makes the
/// gateway fetch the set again; connected clients are untouched and refresh onto the new key
/// with `auth`; a flood of made-up key ids costs the provider a fetch every few seconds at
/// most; once the old key is withdrawn, its tokens are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_through_the_jwks_url_with_clients_connected() {
    let idp = JwksServer::serve("jwks-rsa.json").await;
    let url = idp.url();
    let (_tansu, gateway, producer, topic) = start_stack(&[
        "--auth",
        "jwt",
        "--jwt-jwks-url",
        &url,
        "--jwt-jwks-refresh",
        "1h",
    ])
    .await;
    let old = |topics: &[&str]| {
        signed(
            Algorithm::RS256,
            "rs256-private.pem",
            Some("rsa-1"),
            &claims(topics),
        )
    };
    let new = |topics: &[&str]| {
        signed(
            Algorithm::ES256,
            "es256-private.pem",
            Some("ec-1"),
            &claims(topics),
        )
    };
    // The first fetch is made at start; a token may arrive before it ends.
    let mut early = connect_with(&gateway, Some(&old(&["cdc.order"])), None).await;
    early.subscribe("cdc.order", json!({})).await;
    assert_eq!(gateway.metric("cdc_gateway_jwks_keys").await, 1.0);

    let mut refused = connect_with(&gateway, Some(&new(&["cdc.order"])), None).await;
    assert_eq!(refused.closed().await.0, 4001, "a key not published yet");
    // The provider publishes the new key beside the old one. The next token naming it is let
    // in as soon as the last fetch is 5 s old (cdc_gateway's MIN_REFETCH).
    idp.publish("jwks-both.json");
    tokio::time::sleep(Duration::from_millis(5_200)).await;
    let mut rotated = connect_with(&gateway, Some(&new(&["cdc.order"])), None).await;
    rotated.subscribe("cdc.order", json!({})).await;
    assert_eq!(gateway.metric("cdc_gateway_jwks_keys").await, 2.0);
    producer
        .update_order(&topic, "1", json!({"id": "1", "status": "paid"}))
        .await;
    assert_eq!(
        early.data().await["payload"]["entity_id"],
        "1",
        "the old key's client stays"
    );
    assert_eq!(rotated.data().await["payload"]["entity_id"], "1");
    // The old key's client refreshes onto the new key.
    early
        .send(json!({"action": "auth", "token": new(&["cdc.order"]), "id": "refresh"}))
        .await;
    let ack = early.recv().await;
    assert_eq!(
        (ack["type"].as_str(), ack["id"].as_str()),
        (Some("ack"), Some("refresh")),
        "{ack}"
    );

    // Made-up key ids, many at once: at most one more fetch for all of them.
    let before = idp.requests();
    let mut floods = Vec::new();
    for n in 0..20 {
        let token = signed(
            Algorithm::RS256,
            "rs256-private.pem",
            Some(&format!("made-up-{n}")),
            &claims(&["cdc.order"]),
        );
        floods.push(connect_with(&gateway, Some(&token), None).await);
    }
    for mut flood in floods {
        assert_eq!(flood.closed().await.0, 4001);
    }
    assert!(
        idp.requests() - before <= 1,
        "{} fetches for 20 unknown ids",
        idp.requests() - before
    );

    // The provider withdraws the old key; the next unknown id (after 5 s) fetches the set.
    idp.publish("jwks-ec.json");
    tokio::time::sleep(Duration::from_millis(5_200)).await;
    let probe = signed(
        Algorithm::ES256,
        "es256-private.pem",
        Some("ec-2"),
        &claims(&["cdc.order"]),
    );
    assert_eq!(
        connect_with(&gateway, Some(&probe), None)
            .await
            .closed()
            .await
            .0,
        4001
    );
    let mut withdrawn = connect_with(&gateway, Some(&old(&["cdc.order"])), None).await;
    assert_eq!(
        withdrawn.closed().await.0,
        4001,
        "the withdrawn key no longer verifies"
    );
    assert_eq!(gateway.metric("cdc_gateway_jwks_keys").await, 1.0);
    let mut still = connect_with(&gateway, Some(&new(&["cdc.order"])), None).await;
    still.subscribe("cdc.order", json!({})).await;
}

/// Several static keys (`--jwt-public-key KID=PATH`, repeated): a token is checked against the
/// key its `kid` names, one without a `kid` against every key of its algorithm, and a key is
/// never used with another algorithm than its own.
#[tokio::test]
async fn static_keys_are_selected_by_kid() {
    let rsa = format!("old={}", fixture("rs256-public.pem"));
    let ec = format!("new={}", fixture("es256-public.pem"));
    let (_tansu, gateway, _producer, _topic) = start_stack(&[
        "--auth",
        "jwt",
        "--jwt-public-key",
        &rsa,
        "--jwt-public-key",
        &ec,
    ])
    .await;
    for (token, accepted, case) in [
        (
            signed(
                Algorithm::RS256,
                "rs256-private.pem",
                Some("old"),
                &claims(&["cdc.*"]),
            ),
            true,
            "kid old, RS256",
        ),
        (
            signed(
                Algorithm::ES256,
                "es256-private.pem",
                Some("new"),
                &claims(&["cdc.*"]),
            ),
            true,
            "kid new, ES256",
        ),
        (
            signed(
                Algorithm::RS256,
                "rs256-private.pem",
                None,
                &claims(&["cdc.*"]),
            ),
            true,
            "no kid: every RS256 key",
        ),
        (
            signed(
                Algorithm::RS256,
                "rs256-private.pem",
                Some("new"),
                &claims(&["cdc.*"]),
            ),
            false,
            "kid new names an ES256 key",
        ),
        (
            signed(
                Algorithm::ES256,
                "es256-private.pem",
                Some("gone"),
                &claims(&["cdc.*"]),
            ),
            false,
            "unknown kid",
        ),
        (
            hs256(claims(&["cdc.*"])),
            false,
            "HS256 with public keys configured",
        ),
    ] {
        let mut client = connect_with(&gateway, Some(&token), None).await;
        if accepted {
            client.subscribe("cdc.order", json!({})).await;
        } else {
            assert_eq!(client.closed().await.0, 4001, "{case}");
        }
    }
}
