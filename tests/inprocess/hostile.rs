//! Clients that attack the port rather than use it: each case is what an adversarial review
//! tried, with the bound that must end it.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::*;

/// Slowloris: sockets that trickle a request head one byte at a time, and sockets that open
/// and send nothing, are closed at the header-read timeout.
#[tokio::test]
async fn sockets_that_trickle_or_idle_are_closed_at_the_header_read_timeout() {
    let (_broker, gateway, _producer, _topic) = start_stack(&["--header-read-timeout", "1s"]).await;
    let mut tricklers = Vec::new();
    for n in 0..10 {
        let mut socket = TcpStream::connect(gateway.addr()).await.unwrap();
        tricklers.push(tokio::spawn(async move {
            let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            let started = tokio::time::Instant::now();
            let mut sent = 0;
            let mut buf = [0u8; 256];
            loop {
                // The idle ones send nothing at all.
                if n % 2 == 0 {
                    let byte = head.get(sent).copied().unwrap_or(b'a');
                    if socket.write_all(&[byte]).await.is_err() {
                        return started.elapsed();
                    }
                    sent += 1;
                }
                match tokio::time::timeout(Duration::from_millis(300), socket.read(&mut buf)).await
                {
                    // Closed (or answered with an error and closed).
                    Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                    Ok(Ok(_)) => {}
                    Err(_) => {}
                }
                if started.elapsed() > Duration::from_secs(20) {
                    return started.elapsed();
                }
            }
        }));
    }
    for trickler in tricklers {
        let held = trickler.await.unwrap();
        assert!(
            held < Duration::from_secs(5),
            "a slow socket was held {held:?} with a 1 s header-read timeout"
        );
    }
    // The port still serves.
    assert_eq!(http_get(gateway.addr(), "/healthz").await.unwrap().0, 200);
}

/// Sockets without a token have a pool of their own, smaller than the connection limit: they
/// cannot take the places of clients that authenticate. One that authenticates frees its
/// place in that pool.
#[tokio::test]
async fn connections_waiting_for_a_token_have_their_own_cap() {
    let (_broker, gateway, _producer, _topic) = start_stack(&[
        "--auth",
        "jwt",
        "--jwt-secret",
        "s",
        "--max-pending-auth",
        "2",
    ])
    .await;
    let mut first = Client::connect(&gateway).await;
    let _second = Client::connect(&gateway).await;
    let mut third = Client::connect(&gateway).await;
    assert_eq!(
        third.closed().await,
        (1008, "too many connections waiting for a token".to_string())
    );
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"exp": 4_000_000_000u64, "topics": ["cdc.*"]}),
        &jsonwebtoken::EncodingKey::from_secret(b"s"),
    )
    .unwrap();
    first
        .send(serde_json::json!({"action": "auth", "token": token, "id": 1}))
        .await;
    assert_eq!(first.recv().await["type"], "ack");
    let mut fourth = Client::connect(&gateway).await;
    fourth
        .send(serde_json::json!({"action": "ping", "id": 2}))
        .await;
    assert_eq!(
        fourth.recv().await["code"],
        "UNAUTHENTICATED",
        "admitted: the authenticated client's place in the pool is free"
    );
    assert_eq!(
        gateway
            .metric(r#"cdc_gateway_connections_refused_total{reason="too_many_pending_auth"}"#)
            .await,
        1.0
    );
}

/// With --max-connections-per-ip, one address cannot take more connections, on either
/// transport; a closed one gives its place back.
#[tokio::test]
async fn one_address_gets_at_most_its_share_of_connections() {
    let (_broker, gateway, _producer, _topic) =
        start_stack(&["--max-connections-per-ip", "2"]).await;
    let first = Client::connect(&gateway).await;
    let _second = Client::connect(&gateway).await;
    let mut third = Client::connect(&gateway).await;
    assert_eq!(
        third.closed().await,
        (1008, "too many connections from this address".to_string())
    );
    let refused = SseClient::open(gateway.addr(), "/sse?topic=cdc.order", &[]).await;
    assert_eq!(refused.status, 429);
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    while gateway.metric("cdc_gateway_connections_active").await > 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed connection never went"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut again = Client::connect(&gateway).await;
    again
        .send(serde_json::json!({"action": "ping", "id": 1}))
        .await;
    assert_eq!(again.recv().await["type"], "pong", "its place came back");
}

/// With --tls-cert and --tls-key the port speaks TLS: a WebSocket client connects with
/// wss:// and subscribes, and a plain-text client gets nothing.
#[tokio::test]
async fn tls_on_the_port_serves_wss() {
    use std::sync::Arc;
    let fixture = |name: &str| format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"));
    let (cert, key) = (fixture("cert.pem"), fixture("key.pem"));
    let broker = MockBroker::start();
    let topic = unique("tls");
    broker.create_topic(&topic, 1);
    let gateway = Gateway::spawn(
        &broker.brokers(),
        &topic,
        &["--tls-cert", &cert, "--tls-key", &key],
    );
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject as _;
    for certificate in rustls_pki_types::CertificateDer::pem_file_iter(&cert).unwrap() {
        roots.add(certificate.unwrap()).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut client = loop {
        if let Ok(tcp) = TcpStream::connect(gateway.addr()).await {
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let tls = connector.connect(name, tcp).await.expect("TLS handshake");
            let url = format!("wss://localhost:{}/ws", gateway.addr().port());
            if let Ok((ws, _)) = tokio_tungstenite::client_async(url, tls).await {
                break ws;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no wss:// connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let subscribe = serde_json::json!({"action": "subscribe", "topic": "cdc.order"});
    client
        .send(Message::text(subscribe.to_string()))
        .await
        .unwrap();
    let ack = loop {
        match tokio::time::timeout(WAIT, client.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) => {
                break serde_json::from_str::<serde_json::Value>(&text).unwrap()
            }
            Some(Ok(_)) => continue,
            other => panic!("no ack over wss://: {other:?}"),
        }
    };
    assert_eq!(
        (&ack["type"], &ack["action"]),
        (&serde_json::json!("ack"), &serde_json::json!("subscribe"))
    );

    let mut plain = TcpStream::connect(gateway.addr()).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "plain HTTP is not served on a TLS port"
    );
}

/// Hostile frames, each answered as the protocol says, while the connection's own
/// subscription goes on receiving: binary frames, JSON nested past any sane depth, text that
/// is not UTF-8, and a subscribe flood past the subscription limit and the rate limit.
#[tokio::test]
async fn hostile_frames_get_their_answer_and_the_subscription_goes_on() {
    use futures_util::SinkExt as _;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::Message;
    let (_broker, gateway, producer, topic) = start_stack(&[
        "--max-subscriptions",
        "10",
        "--client-rate-limit",
        "1000",
        "--client-rate-burst",
        "1000",
    ])
    .await;
    let mut client = Client::connect(&gateway).await;
    client.subscribe("cdc.order", serde_json::json!({})).await;
    client
        .send_raw(Message::binary(vec![0u8, 159, 146, 150]))
        .await;
    expect_error(&mut client, "INVALID_MESSAGE").await;
    let deep = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
    client.send_raw(Message::text(deep)).await;
    expect_error(&mut client, "INVALID_MESSAGE").await;
    // Text that is not UTF-8 fails that connection (RFC 6455 8.1), and only that one.
    let mut other = Client::connect(&gateway).await;
    let not_utf8 = Frame::message(
        vec![0xC3u8, 0x28, 0xA0, 0xA1],
        OpCode::Data(Data::Text),
        true,
    );
    other.ws.send(Message::Frame(not_utf8)).await.unwrap();
    assert_eq!(
        other.closed().await,
        (1007, "text is not valid UTF-8".to_string())
    );
    for n in 0..200 {
        let subscribe =
            serde_json::json!({"action": "subscribe", "topic": format!("cdc.t{n}"), "id": n});
        client.send(subscribe).await;
    }
    let (mut acks, mut refused) = (0, 0);
    for _ in 0..200 {
        let reply = client.recv().await;
        match (reply["type"].as_str(), reply["code"].as_str()) {
            (Some("ack"), _) => acks += 1,
            (Some("error"), Some("TOO_MANY_SUBSCRIPTIONS")) => refused += 1,
            other => panic!("unexpected {other:?}: {reply}"),
        }
    }
    assert_eq!(
        (acks, refused),
        (9, 191),
        "10 subscriptions at most, cdc.order included"
    );
    producer
        .send_json(
            &topic,
            None,
            &order(
                "1",
                "insert",
                serde_json::json!({"id": 1}),
                serde_json::Value::Null,
            ),
        )
        .await;
    let data = client.data().await;
    assert_eq!(
        (
            data["topic"].as_str(),
            data["payload"]["entity_id"].as_str()
        ),
        (Some("cdc.order"), Some("1")),
        "the first subscription is untouched"
    );
}

async fn expect_error(client: &mut Client, code: &str) {
    let reply = client.recv().await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some(code)),
        "{reply}"
    );
}
