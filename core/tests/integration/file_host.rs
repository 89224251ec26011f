//! A misbehaving file host on 127.0.0.1 for the model manager's tests: connection i gets
//! `script[i]` (the last entry once the script runs out). It records each request's `Range`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
pub enum Host {
    /// Serves the file, honouring `Range` (206 with `Content-Range`).
    Good,
    /// Honours `Range`, promises the rest, but closes after byte `usize` of the file.
    CutAt(usize),
    /// Ignores `Range`: always 200 with the whole file.
    IgnoresRange,
    /// Answers a ranged request with 206 and a `Content-Range` from byte 0.
    WrongContentRange,
    /// Serves the file with one byte flipped at this offset.
    Corrupt(usize),
    /// This status, no body.
    Status(u16),
    /// Honours `Range`, sending about this many bytes per second.
    Slow(usize),
    /// 503 with `Retry-After: 0`, no body: a host that is down, and says to come back now.
    Unavailable,
    /// Honours `Range`, sends this many bytes, then nothing, holding the connection open.
    Stall(usize),
}

pub struct FileHost {
    pub url: String,
    pub connections: Arc<AtomicUsize>,
    pub ranges: Arc<Mutex<Vec<Option<String>>>>,
    /// Body bytes written to clients, over all connections.
    pub sent: Arc<AtomicU64>,
}

fn read_range(s: &TcpStream) -> Option<String> {
    let mut reader = BufReader::new(s.try_clone().ok()?);
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 || line == "\r\n" {
            return range;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range:") {
            range = Some(v.trim().to_owned());
        }
    }
}

fn start_of(range: Option<&str>) -> Option<usize> {
    range?
        .strip_prefix("bytes=")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

fn serve(mut s: TcpStream, b: &Host, file: &[u8], range: Option<&str>, sent: &AtomicU64) {
    let n = file.len();
    let send = |s: &mut TcpStream, head: String, body: &[u8]| {
        let _ = s.write_all(head.as_bytes());
        for chunk in body.chunks(16 * 1024) {
            if s.write_all(chunk).is_err() {
                return;
            }
            sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
    };
    let partial = |start: usize| {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{n}\r\nConnection: close\r\n\r\n",
            n - start,
            n - 1
        )
    };
    let whole = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n");
    let start = start_of(range).filter(|&st| st < n);
    match b {
        Host::Good => match start {
            Some(st) => send(&mut s, partial(st), &file[st..]),
            None => send(&mut s, whole, file),
        },
        Host::CutAt(k) => {
            let st = start.unwrap_or(0);
            let head = if start.is_some() { partial(st) } else { whole };
            send(&mut s, head, &file[st..(*k).max(st)]);
        }
        Host::IgnoresRange => send(&mut s, whole, file),
        Host::WrongContentRange => {
            if start.is_some() {
                let head = format!("HTTP/1.1 206 Partial Content\r\nContent-Length: {n}\r\nContent-Range: bytes 0-{}/{n}\r\nConnection: close\r\n\r\n", n - 1);
                send(&mut s, head, file);
            } else {
                send(&mut s, whole, file);
            }
        }
        Host::Corrupt(i) => {
            let mut bad = file.to_vec();
            bad[*i] ^= 0x5a;
            send(&mut s, whole, &bad);
        }
        Host::Status(code) => {
            let _ = write!(
                s,
                "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
        Host::Unavailable => {
            let _ = write!(
                s,
                "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
        Host::Stall(k) => {
            let st = start.unwrap_or(0);
            let head = if start.is_some() { partial(st) } else { whole };
            send(&mut s, head, &file[st..(st + k).min(n)]);
            // Hold the connection open, sending nothing, until the client goes away.
            let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
            let mut sink = [0u8; 64];
            let _ = std::io::Read::read(&mut s, &mut sink);
        }
        Host::Slow(rate) => {
            let st = start.unwrap_or(0);
            let head = if start.is_some() { partial(st) } else { whole };
            let _ = s.write_all(head.as_bytes());
            let step = (rate / 20).max(1);
            for chunk in file[st..].chunks(step) {
                if s.write_all(chunk).is_err() {
                    return;
                }
                sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl FileHost {
    pub fn start(file: Arc<Vec<u8>>, script: Vec<Host>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/model.gguf", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(AtomicU64::new(0));
        let (c, r, se) = (
            Arc::clone(&connections),
            Arc::clone(&ranges),
            Arc::clone(&sent),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(s) = stream else { continue };
                let i = c.fetch_add(1, Ordering::SeqCst);
                let b = script[i.min(script.len() - 1)].clone();
                let (file, r, se) = (Arc::clone(&file), Arc::clone(&r), Arc::clone(&se));
                std::thread::spawn(move || {
                    let range = read_range(&s);
                    r.lock().unwrap().push(range.clone());
                    serve(s, &b, &file, range.as_deref(), &se);
                });
            }
        });
        Self {
            url,
            connections,
            ranges,
            sent,
        }
    }

    pub fn count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A URL on which nothing listens.
pub fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/model.gguf", l.local_addr().unwrap());
    drop(l);
    url
}
