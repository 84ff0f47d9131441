//! The server's saved settings over HTTP: `/api/settings` validates, saves `settings.toml`, applies
//! what a running server can at once, and the next start reads the file.

mod common;

use common::server::{chat, get_json, spawn_in, started, Server};
use serde_json::{json, Value};

/// `PUT /api/settings` with the admin token (None), an API key, or no credential at all ("").
async fn put(s: &Server, body: &Value, key: Option<&str>) -> (u16, Value) {
    let client = match key {
        None => s.client(),
        Some(_) => reqwest::Client::new(),
    };
    let mut r = client.put(format!("{}/api/settings", s.base)).json(body);
    if let Some(k) = key.filter(|k| !k.is_empty()) {
        r = r.bearer_auth(k);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn chat_status(s: &Server, key: Option<&str>) -> u16 {
    let mut r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&chat("Hi", json!({"max_tokens": 1})));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    r.send().await.unwrap().status().as_u16()
}

async fn preflight_allows(s: &Server, origin: &str) -> bool {
    let r = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/chat/completions", s.base),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    r.headers().get("access-control-allow-origin").is_some()
}

#[tokio::test]
async fn settings_are_validated_saved_applied_and_read_at_the_next_start() {
    let home = common::server::data_dir();
    let s = started(spawn_in(home.path(), &[], &[]), home.path(), None);
    let first = get_json(&s, "/api/settings").await;
    assert_eq!(first["settings"], first["defaults"], "{first}");
    assert_eq!(
        format!("http://{}", first["running"]["address"].as_str().unwrap()),
        s.base
    );
    let pinned = first["pinned_by_flags"].as_array().unwrap();
    assert!(pinned.contains(&json!("port")) && pinned.contains(&json!("model")));
    assert!(!preflight_allows(&s, "http://app.test:3000").await);

    // A bad value: 400 naming the field, and nothing is written.
    let mut bad = first["settings"].clone();
    bad["max_seqs"] = json!(0);
    let (status, body) = put(&s, &bad, None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "max_seqs");
    assert!(!home.path().join("settings.toml").exists());
    bad["max_seqs"] = json!(8);
    bad["keep_alive"] = json!("later");
    let (status, body) = put(&s, &bad, None).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "keep_alive", "{body}");

    bad["keep_alive"] = json!("5m");
    bad["draft"] = json!("not-installed");
    let (status, body) = put(&s, &bad, None).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "draft", "{body}");
    assert!(!home.path().join("settings.toml").exists());

    let mut open = first["settings"].clone();
    open["host"] = json!("0.0.0.0");
    let (status, body) = put(&s, &open, None).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "api_keys", "{body}");

    // Saved and applied: CORS, rate limit and keep-alive at once; the cache size waits.
    let mut new = first["settings"].clone();
    new["cors_origins"] = json!(["http://app.test:3000"]);
    new["rate_limit_rpm"] = json!(2);
    new["keep_alive"] = json!("-1");
    new["max_seqs"] = json!(4);
    new["response_cache_mib"] = json!(0);
    new["compression"] = json!({"method": "normalize", "ratio": 1.0});
    let (status, body) = put(&s, &new, None).await;
    assert_eq!(status, 200, "{body}");
    for field in ["cors_origins", "rate_limit_rpm", "keep_alive", "max_seqs"] {
        assert!(
            body["applied"].as_array().unwrap().contains(&json!(field)),
            "{field}: {body}"
        );
    }
    assert_eq!(body["restart_needed"], json!(["response_cache_mib"]));
    assert_eq!(body["settings"]["keep_alive"], "-1");
    let file = std::fs::read_to_string(home.path().join("settings.toml")).unwrap();
    assert!(file.contains("keep_alive = \"-1\""), "{file}");
    assert!(preflight_allows(&s, "http://app.test:3000").await);
    let engine = get_json(&s, "/api/engine").await;
    assert_eq!(engine["keep_alive_seconds"], -1.0, "{engine}");
    let compression = get_json(&s, "/api/sessions/someone/compression").await;
    assert_eq!(compression["compression"]["method"], "normalize");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(chat_status(&s, None).await);
    }
    assert_eq!(statuses, vec![200, 200, 429]);

    // Keys apply at once too: without one, 401; with it, the settings can be changed back.
    let mut keyed = new.clone();
    keyed["rate_limit_rpm"] = json!(0);
    keyed["api_keys"] = json!(["sk-set-in-ui"]);
    let (status, body) = put(&s, &keyed, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(chat_status(&s, None).await, 401);
    assert_eq!(chat_status(&s, Some("sk-set-in-ui")).await, 200);
    keyed["api_keys"] = json!([]);
    let (status, _) = put(&s, &keyed, Some("")).await;
    assert_eq!(status, 401);
    let (status, body) = put(&s, &keyed, Some("sk-set-in-ui")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(chat_status(&s, None).await, 200);
    drop(s);

    // The next start reads the file: nothing waits for a restart any more.
    let s = started(spawn_in(home.path(), &[], &[]), home.path(), None);
    let again = get_json(&s, "/api/settings").await;
    assert_eq!(again["settings"], keyed, "{again}");
    assert_eq!(again["restart_needed"], json!([]));
    assert!(preflight_allows(&s, "http://app.test:3000").await);
    let cache = get_json(&s, "/api/cache").await;
    assert_eq!(cache["responses"]["max_bytes"], 0, "{cache}");
}

#[test]
fn a_broken_settings_file_stops_the_start_with_its_name_and_is_kept() {
    let home = common::server::data_dir();
    let path = home.path().join("settings.toml");
    std::fs::write(&path, "max_seqs = \"many\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lantern"))
        .args(["serve", "--port", "0"])
        .env("LANTERN_HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("settings.toml") && err.contains("max_seqs"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "max_seqs = \"many\"\n"
    );
}
