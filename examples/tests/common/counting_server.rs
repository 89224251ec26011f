//! A test server shared by the CLI, `serve` and FFI tests (the FFI crate includes this file by
//! path: test helpers are not worth a crate of their own).

/// A listener on 127.0.0.1 that counts connections and answers each with HTTP 401, echoing
/// the request's Authorization header in its error body (as a careless proxy might), so a test
/// can prove both that a request never connected and that a key sent was never shown.
pub fn counting_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::Write;
    counting_server_answering(|s, auth| {
        let body = format!(r#"{{"error":{{"message":"rejected {auth}"}}}}"#);
        let _ = write!(
            s,
            "HTTP/1.1 401 X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    })
}

/// A listener on 127.0.0.1 that counts connections, reads each request whole and lets `answer`
/// write the response (it is given the request's Authorization line, empty if none).
pub fn counting_server_answering(
    answer: impl Fn(&mut std::net::TcpStream, &str) + Send + 'static,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let c = std::sync::Arc::clone(&count);
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            let mut auth = String::new();
            let mut body_len = 0;
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                let lower = line.to_ascii_lowercase();
                if lower.starts_with("authorization:") {
                    line.trim().clone_into(&mut auth);
                } else if let Some(n) = lower.strip_prefix("content-length:") {
                    body_len = n.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            // Read the request body before answering: closing a socket with unread bytes sends
            // a reset, and the client may then lose the answer (seen once in CI on a slow VM).
            let mut request_body = vec![0; body_len];
            let _ = std::io::Read::read_exact(&mut reader, &mut request_body);
            answer(&mut s, &auth);
        }
    });
    (url, count)
}
