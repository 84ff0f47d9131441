//! `lantern pull` against a Hugging Face stand-in on 127.0.0.1 that speaks the few requests
//! hf-hub makes (a ranged GET for metadata, then a ranged GET for the bytes).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;

use lantern::library::pull::{pull, sha256_file, PullError, PullRequest};

/// Serves `body` at any path; returns the endpoint URL. The thread ends with the test process.
fn fake_hub(body: Vec<u8>) -> String {
    fake_hub_paced(body, std::time::Duration::ZERO)
}

/// [`fake_hub`], sending 64 KiB at a time with `pause` between (a slow link).
fn fake_hub_paced(body: Vec<u8>, pause: std::time::Duration) -> String {
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
                for chunk in body[start..=end].chunks(64 << 10) {
                    if out.write_all(chunk).is_err() {
                        return;
                    }
                    std::thread::sleep(pause);
                }
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

#[tokio::test]
async fn the_api_pulls_with_progress_cancels_and_explains_failures() {
    use common::server::{post, spawn, started, wait_job};
    use serde_json::json;
    let body: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 249) as u8).collect();
    let endpoint = fake_hub_paced(body.clone(), std::time::Duration::from_millis(10));
    let (child, home) = spawn(&[], &[("LANTERN_HF_ENDPOINT", endpoint.as_str())]);
    let s = started(child, home.path(), None);

    // Bad requests are refused at once, with the reason.
    let (status, err) = post(&s, "/api/models/pull", &json!({"model": "nosuchmodel"})).await;
    assert_eq!(status, 400, "{err}");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not a known model name"));

    // Cancelled part way: nothing is installed.
    let want = json!({"model": "someone/Slow-GGUF", "file": "slow.gguf", "name": "slow"});
    let (status, started_job) = post(&s, "/api/models/pull", &want).await;
    assert_eq!(status, 202, "{started_job}");
    let id = started_job["job"].as_u64().unwrap();
    loop {
        let job = common::server::get_json(&s, &format!("/api/jobs/{id}")).await;
        if job["progress"].as_f64().unwrap() > 0.0 {
            assert!(
                job["message"].as_str().unwrap().contains("MiB of 8.0 MiB"),
                "{job}"
            );
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    common::server::delete_json(&s, &format!("/api/jobs/{id}")).await;
    assert_eq!(wait_job(&s, id).await["state"], "cancelled");
    assert!(!home.path().join("models/slow").exists());

    // A whole pull: installed, and listed as a model (the bytes are not a GGUF, so it shows
    // with its error rather than as servable).
    let (status, started_job) = post(&s, "/api/models/pull", &want).await;
    assert_eq!(status, 202);
    let job = wait_job(&s, started_job["job"].as_u64().unwrap()).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["result"]["model"], "slow");
    let installed = std::fs::read(home.path().join("models/slow/slow.gguf")).unwrap();
    assert_eq!(installed, body);
}

#[tokio::test]
async fn the_api_says_where_an_unreachable_hub_is() {
    use common::server::{post, spawn, started, wait_job};
    use serde_json::json;
    let (child, home) = spawn(&[], &[("LANTERN_HF_ENDPOINT", "http://127.0.0.1:9")]);
    let s = started(child, home.path(), None);
    let (status, started_job) = post(
        &s,
        "/api/models/pull",
        &json!({"model": "smollm2", "name": "again"}),
    )
    .await;
    assert_eq!(status, 202, "{started_job}");
    let job = wait_job(&s, started_job["job"].as_u64().unwrap()).await;
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains("127.0.0.1:9") && error.contains("models/fetch smollm2"),
        "{error}"
    );
    assert!(!home.path().join("models/again").exists());
}
