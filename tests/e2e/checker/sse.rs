//! A raw-TCP event-stream reader, independent of the gateway's code: it writes the request
//! line and headers itself, decodes the chunked body and splits it into `event:` entries.
//! Every read is a single cancel-safe socket read into a buffer this struct owns, so a caller
//! may wrap any call in a timeout without losing bytes, and network failures are returned as
//! errors rather than panics: a gateway that is killed mid-stream is part of the test.

use std::io;
use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One `event:` entry of the stream (comments are skipped).
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: Value,
}

pub struct SseStream {
    stream: TcpStream,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Bytes read from the socket and not yet decoded.
    raw: Vec<u8>,
    /// Whether the body is chunked (otherwise it runs to the end of the connection).
    chunked: bool,
    /// Decoded body text not yet split into entries.
    text: String,
    /// The last chunk (or the end of the connection) was seen.
    ended: bool,
}

impl SseStream {
    /// Sends `GET target` with `headers` and reads the response head.
    pub async fn open(
        addr: SocketAddr,
        target: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<Self> {
        let mut stream = TcpStream::connect(addr).await?;
        let mut request =
            format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut sse = SseStream {
            stream,
            status: 0,
            headers: Vec::new(),
            raw: Vec::new(),
            chunked: false,
            text: String::new(),
            ended: false,
        };
        let head_end = loop {
            if let Some(end) = find(&sse.raw, b"\r\n\r\n") {
                break end;
            }
            if !sse.fill().await? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the response head",
                ));
            }
        };
        let head: Vec<u8> = sse.raw.drain(..head_end + 4).collect();
        let head = String::from_utf8_lossy(&head);
        let mut lines = head.lines();
        sse.status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                sse.headers
                    .push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        sse.chunked = sse
            .header("transfer-encoding")
            .is_some_and(|value| value.eq_ignore_ascii_case("chunked"));
        Ok(sse)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next `event:` entry; `None` at the end of the stream.
    pub async fn next_event(&mut self) -> io::Result<Option<SseEvent>> {
        loop {
            while let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                if let Some(event) = parse_block(block.trim_end_matches('\n'))? {
                    return Ok(Some(event));
                }
            }
            if self.ended {
                return Ok(None);
            }
            if !self.decode()? && !self.fill().await? {
                self.ended = true;
            }
        }
    }

    /// One socket read into `raw`; false at the end of the connection.
    async fn fill(&mut self) -> io::Result<bool> {
        let mut buffer = [0u8; 8192];
        let n = self.stream.read(&mut buffer).await?;
        self.raw.extend_from_slice(&buffer[..n]);
        Ok(n > 0)
    }

    /// Moves what is complete in `raw` into `text`; true if it made progress.
    fn decode(&mut self) -> io::Result<bool> {
        if !self.chunked {
            if self.raw.is_empty() {
                return Ok(false);
            }
            let bytes: Vec<u8> = std::mem::take(&mut self.raw);
            self.text.push_str(&utf8(&bytes)?);
            return Ok(true);
        }
        let mut progress = false;
        while let Some(line_end) = find(&self.raw, b"\r\n") {
            let size_text = utf8(&self.raw[..line_end])?;
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size {size_text:?}"),
                )
            })?;
            let total = line_end + 2 + size + 2;
            if self.raw.len() < total {
                break;
            }
            if &self.raw[total - 2..total] != b"\r\n" {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "chunk framing"));
            }
            let chunk = utf8(&self.raw[line_end + 2..line_end + 2 + size])?;
            self.text.push_str(&chunk);
            self.raw.drain(..total);
            progress = true;
            if size == 0 {
                self.ended = true;
                break;
            }
        }
        Ok(progress)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn utf8(bytes: &[u8]) -> io::Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// One entry; `None` for a comment. Data that is not JSON is an error: every entry the
/// gateway sends carries a protocol message.
fn parse_block(block: &str) -> io::Result<Option<SseEvent>> {
    if block.starts_with(':') || block.is_empty() {
        return Ok(None);
    }
    let (mut event, mut id, mut data) = (String::from("message"), None, String::new());
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = value.to_owned(),
            "id" => id = Some(value.to_owned()),
            "data" => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            "" | "retry" => {}
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected field {other:?} in {block:?}"),
                ))
            }
        }
    }
    let data = serde_json::from_str(&data).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{e} in event data {data:?}"),
        )
    })?;
    Ok(Some(SseEvent { event, id, data }))
}
