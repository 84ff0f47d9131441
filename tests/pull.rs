//! `lantern pull` against a Hugging Face stand-in on 127.0.0.1 that speaks the few requests
//! hf-hub makes (a ranged GET for metadata, then a ranged GET for the bytes).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;

use lantern::library::pull::{pull, sha256_file, PullError, PullRequest};

/// Serves `body` at any path; returns the endpoint URL. The thread ends with the test process.
fn fake_hub(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let body = Arc::new(body);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let body = body.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut range = None;
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    let lower = line.to_ascii_lowercase();
                    if let Some(r) = lower.strip_prefix("range: bytes=") {
                        let (a, b) = r.trim().split_once('-').unwrap();
                        let end = b.parse::<usize>().unwrap_or(body.len() - 1);
                        range = Some((a.parse::<usize>().unwrap(), end.min(body.len() - 1)));
                    }
                    line.clear();
                }
                let (start, end) = range.unwrap_or((0, body.len() - 1));
                let mut out = stream;
                let head = format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{}\r\n\
                     ETag: \"abc123\"\r\nX-Repo-Commit: 0123456789abcdef\r\nConnection: close\r\n\r\n",
                    end + 1 - start,
                    body.len()
                );
                let _ = out.write_all(head.as_bytes());
                let _ = out.write_all(&body[start..=end]);
            });
        }
    });
    url
}

fn request(target: &str, file: Option<&str>, endpoint: &str) -> PullRequest {
    PullRequest {
        target: target.into(),
        file: file.map(String::from),
        name: None,
        endpoint: endpoint.into(),
        show_progress: false,
    }
}

#[test]
fn pulls_a_file_into_the_library() {
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let endpoint = fake_hub(body.clone());
    let home = tempfile::tempdir().unwrap();
    let path = pull(
        home.path(),
        &request("someone/Tiny-Model-GGUF", Some("tiny.Q4_0.gguf"), &endpoint),
    )
    .unwrap();
    assert_eq!(path, home.path().join("models/tiny-model/tiny.Q4_0.gguf"));
    assert_eq!(std::fs::read(&path).unwrap(), body);

    // A second pull finds the file in the download cache and installs it again unchanged.
    let again = pull(
        home.path(),
        &request("someone/Tiny-Model-GGUF", Some("tiny.Q4_0.gguf"), &endpoint),
    )
    .unwrap();
    assert_eq!(sha256_file(&again).unwrap(), sha256_file(&path).unwrap());
}

#[test]
fn a_file_that_fails_its_checksum_is_not_installed() {
    let endpoint = fake_hub(b"not the model you are looking for".to_vec());
    let home = tempfile::tempdir().unwrap();
    let err = pull(home.path(), &request("smollm2", None, &endpoint)).unwrap_err();
    assert!(matches!(err, PullError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("b179c9523d0e"), "{err}");
    assert!(!home.path().join("models/smollm2").exists());
}
