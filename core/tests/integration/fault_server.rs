//! A real HTTP server on 127.0.0.1 that answers each connection with the next scripted
//! behaviour: the faults a remote tier meets in the wild.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
pub enum Behavior {
    /// A proper stream of these text pieces, then usage (if given), then [DONE].
    Stream {
        pieces: Vec<&'static str>,
        usage: Option<(u32, u32)>,
    },
    /// An HTTP error status with an OpenAI-shaped body and optional Retry-After.
    Status(u16, Option<u32>),
    /// One good chunk, then a chunk that is not JSON.
    Malformed,
    /// One good chunk, then half an event, then the connection closes.
    CutMidEvent,
    /// One good chunk, then silence for this long, watching for the client to hang up: a
    /// hang-up within that time counts in `FaultServer::closed`.
    Stall(Duration),
    /// Accept, read the request, then close without answering.
    Hangup,
    /// Wait this long before sending the response headers.
    SlowHeaders(Duration),
    /// A non-streaming JSON answer (or this raw body, if not JSON).
    Json(&'static str),
    /// This status, with the request's Authorization header echoed in the error body (as a
    /// careless proxy might).
    EchoAuth(u16),
    /// A 200 whose body is not JSON and echoes the Authorization header.
    EchoAuthGarbage,
    /// An SSE stream of these raw event payloads (JSON text), then [DONE].
    Events(Vec<String>),
    /// Answers "Hello" as a stream with a Content-Length and keeps the connection open for
    /// the next request, up to this many requests.
    KeepAlive(usize),
}

pub struct FaultServer {
    pub url: String,
    pub connections: Arc<AtomicUsize>,
    pub bodies: Arc<Mutex<Vec<String>>>,
    /// Connections the client closed while the server was stalling.
    pub closed: Arc<AtomicUsize>,
}

fn chunk(content: &str, finish: Option<&str>) -> String {
    let v = serde_json::json!({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]});
    format!("data: {v}\n\n")
}

fn read_request(stream: &mut TcpStream) -> String {
    read_request_head(stream).1
}

/// The request's Authorization header (if any) and its body.
fn read_request_head(stream: &mut TcpStream) -> (String, String) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut len = 0;
    let mut auth = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return (auth, String::new());
        }
        if line.to_ascii_lowercase().starts_with("authorization:") {
            auth = line.trim().to_owned();
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; len];
    let _ = reader.read_exact(&mut body);
    (auth, String::from_utf8_lossy(&body).into_owned())
}

fn serve(mut s: TcpStream, b: &Behavior, closed: &AtomicUsize, auth: &str) {
    let sse_head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
    match b {
        Behavior::Stream { pieces, usage } => {
            let _ = s.write_all(sse_head.as_bytes());
            for (i, p) in pieces.iter().enumerate() {
                let finish = (i + 1 == pieces.len()).then_some("stop");
                let _ = s.write_all(chunk(p, finish).as_bytes());
                let _ = s.flush();
                std::thread::sleep(Duration::from_millis(5));
            }
            if let Some((p, c)) = usage {
                let u = serde_json::json!({"id": "x", "object": "chat.completion.chunk", "choices": [],
                    "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}});
                let _ = s.write_all(format!("data: {u}\n\n").as_bytes());
            }
            let _ = s.write_all(b"data: [DONE]\n\n");
        }
        Behavior::Status(code, retry_after) => {
            let body = r#"{"error":{"message":"scripted failure","type":"server_error"}}"#;
            let ra = retry_after
                .map(|s| format!("Retry-After: {s}\r\n"))
                .unwrap_or_default();
            let _ = write!(s, "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\n{ra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
        Behavior::Malformed => {
            let _ = s.write_all(sse_head.as_bytes());
            let _ = s.write_all(chunk("Hello", None).as_bytes());
            let _ = s.write_all(b"data: {\"choices\": [ this is not json\n\n");
        }
        Behavior::CutMidEvent => {
            let _ = s.write_all(sse_head.as_bytes());
            let _ = s.write_all(chunk("Hello", None).as_bytes());
            let _ = s.write_all(b"data: {\"choices\": [{\"delta\": {\"cont");
        }
        Behavior::Stall(d) => {
            let _ = s.write_all(sse_head.as_bytes());
            let _ = s.write_all(chunk("Hello", None).as_bytes());
            let _ = s.flush();
            let until = std::time::Instant::now() + *d;
            let mut buf = [0u8; 256];
            while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
                let _ = s.set_read_timeout(Some(left.max(Duration::from_millis(1))));
                match s.read(&mut buf) {
                    Ok(0) => {
                        closed.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    Ok(_) => continue,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue
                    }
                    Err(_) => {
                        closed.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
            }
        }
        Behavior::Events(events) => {
            let _ = s.write_all(sse_head.as_bytes());
            for e in events {
                let _ = s.write_all(format!("data: {e}\n\n").as_bytes());
                let _ = s.flush();
            }
            let _ = s.write_all(b"data: [DONE]\n\n");
        }
        Behavior::EchoAuth(code) => {
            let body = serde_json::json!({"error": {"message": format!("bad credentials: {auth}"), "type": "auth"}}).to_string();
            let _ = write!(s, "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
        Behavior::EchoAuthGarbage => {
            let body = format!("<html>{auth}</html>");
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
        Behavior::Hangup => {}
        Behavior::KeepAlive(n) => {
            for i in 0..*n {
                if i > 0 && read_request(&mut s).is_empty() {
                    break;
                }
                let body = format!("{}data: [DONE]\n\n", chunk("Hello", Some("stop")));
                let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                let _ = s.flush();
            }
        }
        Behavior::Json(body) => {
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
        Behavior::SlowHeaders(d) => {
            std::thread::sleep(*d);
            let _ = s.write_all(sse_head.as_bytes());
        }
    }
}

impl FaultServer {
    /// Connection i gets `script[i]`, or the last entry once the script runs out.
    pub fn start(script: Vec<Behavior>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(AtomicUsize::new(0));
        let (c, bs, cl) = (
            Arc::clone(&connections),
            Arc::clone(&bodies),
            Arc::clone(&closed),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let i = c.fetch_add(1, Ordering::SeqCst);
                let b = script[i.min(script.len() - 1)].clone();
                let (bs, cl, b) = (Arc::clone(&bs), Arc::clone(&cl), b);
                std::thread::spawn(move || {
                    let (auth, body) = read_request_head(&mut s);
                    bs.lock().unwrap().push(body);
                    serve(s, &b, &cl, &auth);
                });
            }
        });
        Self {
            url,
            connections,
            bodies,
            closed,
        }
    }

    /// Waits (polling, up to `limit`) until the client has closed `n` stalled connections.
    pub fn wait_closed(&self, n: usize, limit: Duration) -> usize {
        let end = std::time::Instant::now() + limit;
        while self.closed.load(Ordering::SeqCst) < n && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.closed.load(Ordering::SeqCst)
    }

    pub fn count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}
