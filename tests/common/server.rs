//! A real `lantern serve` on a loopback port for the HTTP tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

pub struct Server {
    pub child: Child,
    pub base: String,
    /// Holds the server's own database unless the test gave one (`--db`).
    pub data: Option<tempfile::TempDir>,
    /// The admin token the server keeps in its data directory (what the UI's cookie holds).
    pub admin: String,
}

impl Server {
    /// An HTTP client that sends the admin token, as the UI and local tools do.
    pub fn client(&self) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", self.admin).parse().unwrap(),
        );
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap()
    }

    /// The client for `path`: the admin API's calls carry the admin token, the OpenAI API's go
    /// as any SDK's would (no credential, so the session is the one the request names).
    pub fn client_for(&self, path: &str) -> reqwest::Client {
        if path.starts_with("/api") {
            self.client()
        } else {
            reqwest::Client::new()
        }
    }

    /// `GET path` (with the admin token for the admin API).
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client_for(path)
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `lantern serve` on port 0 with the installed default model, in a data directory of its own
/// (its models are the installed ones, linked; its settings and database are fresh unless
/// `extra` names a database with `--db`); ready once it prints its address.
pub fn start(extra: &[&str]) -> Server {
    let (child, data) = spawn(extra, &[]);
    // `--home DIR` wins over LANTERN_HOME.
    let home = extra
        .iter()
        .position(|a| *a == "--home")
        .and_then(|i| extra.get(i + 1))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| data.path().to_path_buf());
    started(child, &home, Some(data))
}

/// A fresh data directory with each installed model linked into its own `models` directory:
/// what a test installs (pulls, imports) stays in the temporary one.
pub fn data_dir() -> tempfile::TempDir {
    let models = super::model_path("smollm2");
    let models = models.parent().unwrap().parent().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir(data.path().join("models")).unwrap();
    for entry in std::fs::read_dir(models).unwrap().flatten() {
        std::os::unix::fs::symlink(
            entry.path(),
            data.path().join("models").join(entry.file_name()),
        )
        .unwrap();
    }
    data
}

/// `lantern serve` in a fresh data directory, with `env` set; not yet waited for.
pub fn spawn(extra: &[&str], env: &[(&str, &str)]) -> (Child, tempfile::TempDir) {
    let data = data_dir();
    let child = spawn_in(data.path(), extra, env);
    (child, data)
}

/// `lantern serve` with `home` as its data directory.
pub fn spawn_in(home: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Child {
    spawn_with_log(home, extra, env, Stdio::null())
}

/// As `spawn_in`, its log (stderr) going to `log`.
pub fn spawn_with_log(
    home: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
    log: impl Into<Stdio>,
) -> Child {
    let model: &[&str] = if extra.iter().any(|a| a.ends_with(".gguf")) {
        &[]
    } else {
        &["smollm2"]
    };
    Command::new(env!("CARGO_BIN_EXE_lantern"))
        .arg("serve")
        .args(model)
        .args(["--port", "0"])
        .args(extra)
        .env("LANTERN_HOME", home)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// The server that `child` (serving the data directory `home`) became, once it prints its
/// address.
pub fn started(
    mut child: Child,
    home: &std::path::Path,
    data: Option<tempfile::TempDir>,
) -> Server {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .trim_end_matches("/v1")
        .to_string();
    let admin = lantern::server::admin_token::AdminToken::read(home)
        .expect("the server made its admin token before listening");
    Server {
        child,
        base,
        data,
        admin,
    }
}

pub fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({"model": "smollm2", "messages": [{"role": "user", "content": content}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

pub async fn post(s: &Server, path: &str, body: &Value) -> (u16, Value) {
    let r = s
        .client_for(path)
        .post(format!("{}{path}", s.base))
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// `GET path`, its JSON body.
pub async fn get_json(s: &Server, path: &str) -> Value {
    s.get(path).await.json().await.unwrap()
}

/// `DELETE path`, its JSON body.
pub async fn delete_json(s: &Server, path: &str) -> Value {
    s.client_for(path)
        .delete(format!("{}{path}", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The `data:` payloads of an SSE response, `[DONE]` included.
pub async fn stream(s: &Server, path: &str, body: &Value) -> Vec<String> {
    let text = s
        .client_for(path)
        .post(format!("{}{path}", s.base))
        .json(body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(String::from)
        .collect()
}

/// The engine is free again: a short request completes.
pub async fn assert_serves(s: &Server) {
    let (status, body) = post(
        s,
        "/v1/chat/completions",
        &chat("Hi", json!({"max_tokens": 2})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// `GET /api/engine`.
pub async fn engine(s: &Server) -> Value {
    s.get("/api/engine").await.json().await.unwrap()
}

/// The engine figures of one loaded model (None: not loaded).
pub async fn engine_of(s: &Server, model: &str) -> Option<Value> {
    engine(s).await["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == model)
        .map(|m| m["engine"].clone())
}

/// Poll `/api/engine` until `done` holds for `model`'s figures (Some) or its absence (None).
/// Not a timing assertion: the deadline is generous and only bounds a hang.
pub async fn wait_for_engine(
    s: &Server,
    model: &str,
    what: &str,
    done: impl Fn(Option<&Value>) -> bool,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let e = engine_of(s, model).await;
        if done(e.as_ref()) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: engine status {e:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Poll `/api/jobs/{id}` until the job leaves `running` (bounded: only guards against a hang).
pub async fn wait_job(s: &Server, id: u64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let job = get_json(s, &format!("/api/jobs/{id}")).await;
        if job["state"] != "running" {
            return job;
        }
        assert!(std::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
