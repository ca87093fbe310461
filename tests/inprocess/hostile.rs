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
