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
