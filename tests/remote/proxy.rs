//! A fault proxy on loopback in front of a second `lantern serve`: it passes connections
//! through, drops them, answers 500, or stalls, as the test sets it; a change of mode cuts the
//! connections it was passing, so a pooled connection cannot carry on past it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Close each connection at once.
    Drop,
    /// Answer every request `500 Internal Server Error`.
    Fail,
    /// Read the request and never answer.
    Stall,
    /// Every request on a connection of its own (`connection: close` added), every `n`th
    /// answered 500: a remote that fails a share of its requests.
    Flaky(usize),
}

pub struct Proxy {
    pub url: String,
    mode: watch::Sender<Mode>,
    /// Requests (POSTs: not the health checks' GETs) that reached it, in any mode.
    pub posts: Arc<AtomicUsize>,
    /// The first bytes of each request passed through (headers included).
    pub heads: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// Change mode; the connections it was passing are cut, and the client is given a moment
    /// to see them closed (so its next request opens a new one under the new mode).
    pub async fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    pub fn accepted(&self) -> usize {
        self.posts.load(Ordering::SeqCst)
    }
}

pub async fn start(upstream: &str) -> Proxy {
    let upstream = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let (mode, watcher) = watch::channel(Mode::Pass);
    let posts = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (count, seen) = (posts.clone(), heads.clone());
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let mut changed = watcher.clone();
            let now = *changed.borrow_and_update();
            let upstream = upstream.clone();
            let (seen, count) = (seen.clone(), count.clone());
            tokio::spawn(async move {
                let mut first = [0u8; 5];
                let is_post = matches!(client.peek(&mut first).await, Ok(5) if &first == b"POST ");
                // Passed connections count each request they carry; the others count here.
                let nth = match (now, is_post) {
                    (Mode::Pass, _) | (_, false) => 0,
                    _ => count.fetch_add(1, Ordering::SeqCst) + 1,
                };
                match now {
                    Mode::Pass => pass(client, &upstream, &mut changed, &seen, &count).await,
                    Mode::Flaky(_) if !is_post => once(client, &upstream).await,
                    Mode::Drop => drop(client),
                    Mode::Fail => fail(client).await,
                    Mode::Stall => stall(client).await,
                    Mode::Flaky(n) if nth % n == 0 => fail(client).await,
                    Mode::Flaky(_) => once(client, &upstream).await,
                }
            });
        }
    });
    Proxy {
        url,
        mode,
        posts,
        heads,
    }
}

async fn pass(
    mut client: TcpStream,
    upstream: &str,
    changed: &mut watch::Receiver<Mode>,
    seen: &Mutex<Vec<String>>,
    posts: &AtomicUsize,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let upward = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let text = String::from_utf8_lossy(&buf[..n]);
            if text.starts_with("POST ") || text.starts_with("GET ") {
                seen.lock().unwrap().push(text.chars().take(2048).collect());
            }
            if text.starts_with("POST ") {
                posts.fetch_add(1, Ordering::SeqCst);
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let downward = tokio::io::copy(&mut sr, &mut cw);
    tokio::select! {
        _ = upward => {}
        _ = downward => {}
        _ = changed.changed() => {}
    }
}

/// One request passed with `connection: close`, so the next comes on a new connection.
async fn once(mut client: TcpStream, upstream: &str) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let mut buf = vec![0u8; 64 * 1024];
    let Ok(n) = client.read(&mut buf).await else {
        return;
    };
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let Some(end) = text.find("\r\n\r\n") else {
        return;
    };
    let head = format!("{}\r\nconnection: close", &text[..end]);
    let mut out = head.into_bytes();
    out.extend_from_slice(&buf[end..n]);
    if server.write_all(&out).await.is_err() {
        return;
    }
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let _ = tokio::join!(
        tokio::io::copy(&mut cr, &mut sw),
        tokio::io::copy(&mut sr, &mut cw)
    );
}

async fn fail(mut client: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let _ = client.read(&mut buf).await;
    let body = r#"{"error":{"message":"injected fault","type":"server_error"}}"#;
    let answer = format!(
        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(answer.as_bytes()).await;
}

async fn stall(mut client: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let _ = client.read(&mut buf).await;
    tokio::time::sleep(std::time::Duration::from_secs(120)).await;
}
