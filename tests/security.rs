//! The local port against the web pages a user visits, over HTTP on the real server: DNS
//! rebinding (a foreign `Host`), cross-site writes (`Origin`, `Sec-Fetch-Site`, non-JSON bodies
//! that need no preflight), the admin token, and validation that never resets what was saved.

mod common;

use common::server::{chat, start, Server};
use serde_json::{json, Value};

fn port(s: &Server) -> u16 {
    s.base.rsplit(':').next().unwrap().parse().unwrap()
}

/// A request as a browser or a rebinding page would send it: raw headers, no credential unless
/// the test adds one.
fn raw(s: &Server, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new().request(method, format!("{}{path}", s.base))
}

async fn answer(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_rebinding_host_is_refused_and_loopback_names_are_not() {
    let s = start(&["--allowed-host", "lantern.test"]);
    let p = port(&s);
    let evil = format!("evil.example:{p}");
    let (status, body) = answer(
        raw(&s, reqwest::Method::GET, "/api/settings")
            .header("host", &evil)
            .bearer_auth(&s.admin),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "host_not_allowed");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("evil.example"));
    let (status, _) = answer(
        raw(&s, reqwest::Method::PUT, "/api/monitor/settings")
            .header("host", &evil)
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, 403);
    // Even the page and the health probe: a rebinding page must not read anything.
    for path in ["/", "/health", "/v1/models"] {
        let (status, _) = answer(raw(&s, reqwest::Method::GET, path).header("host", &evil)).await;
        assert_eq!(status, 403, "{path}");
    }
    for host in [
        format!("127.0.0.1:{p}"),
        format!("localhost:{p}"),
        format!("[::1]:{p}"),
        "localhost".to_string(),
        format!("lantern.test:{p}"),
    ] {
        let (status, body) = answer(
            raw(&s, reqwest::Method::GET, "/api/settings")
                .header("host", &host)
                .bearer_auth(&s.admin),
        )
        .await;
        assert_eq!(status, 200, "{host}: {body}");
    }
}

#[tokio::test]
async fn a_server_on_ipv6_loopback_answers_its_own_name() {
    let s = start(&["--host", "::1"]);
    assert!(s.base.starts_with("http://[::1]:"), "{}", s.base);
    let (status, body) =
        answer(raw(&s, reqwest::Method::GET, "/api/engine").bearer_auth(&s.admin)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) =
        answer(raw(&s, reqwest::Method::GET, "/health").header("host", "evil.example")).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn off_loopback_with_keys_the_keys_protect_it() {
    let s = start(&["--host", "0.0.0.0", "--api-key", "sk-lan"]);
    let p = port(&s);
    let lan = format!("lantern.lan:{p}");
    let (status, _) =
        answer(raw(&s, reqwest::Method::GET, "/v1/models").header("host", &lan)).await;
    assert_eq!(status, 401, "no key");
    let (status, body) = answer(
        raw(&s, reqwest::Method::GET, "/v1/models")
            .header("host", &lan)
            .bearer_auth("sk-lan"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn cross_site_writes_and_bodies_without_a_preflight_are_refused() {
    let s = start(&["--cors-origin", "http://localhost:5173"]);
    let p = port(&s);
    let body = chat("Hi", json!({"max_tokens": 2})).to_string();
    let post = |path: &str| raw(&s, reqwest::Method::POST, path);

    // A CORS "simple request": text/plain, no preflight. Refused whatever the origin.
    let (status, err) = answer(
        post("/v1/chat/completions")
            .header("content-type", "text/plain")
            .body(body.clone()),
    )
    .await;
    assert_eq!(status, 415, "{err}");
    assert_eq!(err["error"]["code"], "unsupported_media_type");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    let (status, _) = answer(
        post("/v1/chat/completions")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone()),
    )
    .await;
    assert_eq!(status, 415);

    // A foreign origin: refused even with a JSON body, on generation and on the admin API.
    for path in ["/v1/chat/completions", "/api/models/import"] {
        let (status, err) = answer(
            post(path)
                .header("origin", "http://evil.example")
                .header("content-type", "text/plain")
                .body(r#"{"path": "/etc/passwd", "name": "x"}"#),
        )
        .await;
        assert_eq!(status, 403, "{path}: {err}");
        assert_eq!(err["error"]["code"], "cross_site_request");
    }
    let (status, _) = answer(
        post("/v1/chat/completions")
            .header("origin", "http://evil.example")
            .header("content-type", "application/json")
            .body(body.clone()),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = answer(
        raw(&s, reqwest::Method::DELETE, "/api/cache/responses")
            .header("origin", "null")
            .bearer_auth(&s.admin),
    )
    .await;
    assert_eq!(status, 403, "an opaque origin");
    // A browser that sends no Origin but says the request is cross-site.
    let (status, _) = answer(
        post("/v1/chat/completions")
            .header("sec-fetch-site", "cross-site")
            .header("content-type", "application/json")
            .body(body.clone()),
    )
    .await;
    assert_eq!(status, 403);

    // The UI's own origin, a configured one and the desktop app's: accepted.
    for origin in [
        format!("http://127.0.0.1:{p}"),
        "http://localhost:5173".to_string(),
        "tauri://localhost".to_string(),
    ] {
        let (status, answer_body) = answer(
            post("/v1/chat/completions")
                .header("origin", &origin)
                .header("sec-fetch-site", "same-origin")
                .header("content-type", "application/json")
                .body(body.clone()),
        )
        .await;
        assert_eq!(status, 200, "{origin}: {answer_body}");
    }
    // An SDK or curl: no Origin, a JSON body.
    let (status, _) =
        answer(post("/v1/chat/completions").json(&chat("Hi", json!({"max_tokens": 2})))).await;
    assert_eq!(status, 200);
    // Reads stay open to any origin's preflight-free GET: CORS keeps their answers from it.
    let (status, _) =
        answer(raw(&s, reqwest::Method::GET, "/v1/models").header("origin", "http://evil.example"))
            .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_admin_api_needs_the_token_its_cookie_or_a_key() {
    let s = start(&[]);
    let p = port(&s);
    // A stored prompt (an experiment's), readable only with the token.
    let secret = "The launch code is 0451.";
    let spec = json!({"name": "private", "variants": [{"name": "a", "model": "smollm2"},
                                   {"name": "b", "model": "smollm2", "temperature": 0.5}],
                      "prompts": [secret], "max_tokens": 2});
    let (status, _) =
        answer(raw(&s, reqwest::Method::POST, "/api/lab/experiments").json(&spec)).await;
    assert_eq!(status, 401);
    let (status, created) = answer(
        raw(&s, reqwest::Method::POST, "/api/lab/experiments")
            .bearer_auth(&s.admin)
            .json(&spec),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    for path in [
        "/api/lab/experiments/private",
        "/api/lab/experiments",
        "/api/sessions",
        "/api/settings",
        "/api/usage",
        "/api/jobs",
    ] {
        let r = raw(&s, reqwest::Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let text = r.text().await.unwrap();
        assert!(!text.contains("0451"), "{path}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], "admin_token_required", "{path}");
        let (status, _) = answer(raw(&s, reqwest::Method::GET, path).bearer_auth("wrong")).await;
        assert_eq!(status, 401, "{path}");
    }
    let (status, read) =
        answer(raw(&s, reqwest::Method::GET, "/api/lab/experiments/private").bearer_auth(&s.admin))
            .await;
    assert_eq!(status, 200);
    assert!(read.to_string().contains("0451"), "{read}");

    // The page load from a loopback Host hands the browser the token as an HttpOnly cookie.
    let page = raw(&s, reqwest::Method::GET, "/").send().await.unwrap();
    let cookie = page.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with(&format!("lantern_admin_{p}={}", s.admin)),
        "{cookie}"
    );
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let (status, _) = answer(
        raw(&s, reqwest::Method::GET, "/api/lab/experiments/private").header("cookie", &pair),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = answer(
        raw(&s, reqwest::Method::GET, "/api/sessions")
            .header("cookie", format!("lantern_admin_{p}=0000")),
    )
    .await;
    assert_eq!(status, 401);
    // The OpenAI API stays open on loopback without keys.
    let (status, _) = answer(raw(&s, reqwest::Method::GET, "/v1/models")).await;
    assert_eq!(status, 200);
    let token_file = s.data.as_ref().unwrap().path().join("admin-token");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn api_keys_also_grant_the_admin_api() {
    let s = start(&["--api-key", "sk-admin"]);
    let (status, _) = answer(raw(&s, reqwest::Method::GET, "/api/settings")).await;
    assert_eq!(status, 401);
    let (status, _) =
        answer(raw(&s, reqwest::Method::GET, "/api/settings").bearer_auth("sk-admin")).await;
    assert_eq!(status, 200);
    // The token passes where a key is asked for too (the UI holds it).
    let (status, _) =
        answer(raw(&s, reqwest::Method::GET, "/v1/models").bearer_auth(&s.admin)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn validation_names_the_field_and_never_resets_what_was_saved() {
    let s = start(&[]);
    let admin = |m: reqwest::Method, path: &str| raw(&s, m, path).bearer_auth(&s.admin);

    // A user message without content: a 400 naming it, at once (it used to generate to the end
    // of the context).
    let (status, err) = answer(raw(&s, reqwest::Method::POST, "/v1/chat/completions").json(
        &json!({
            "model": "smollm2",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user"}],
        }),
    ))
    .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], "messages[1].content");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("messages[1].content"));

    // Monitor settings: an empty PUT keeps what was set.
    let (_, before) = answer(admin(reqwest::Method::GET, "/api/monitor/settings")).await;
    let mut changed = before.clone();
    changed["default_daily_tokens"] = json!(12345);
    let (status, after) =
        answer(admin(reqwest::Method::PUT, "/api/monitor/settings").json(&changed)).await;
    assert_eq!(status, 200, "{after}");
    let (status, kept) =
        answer(admin(reqwest::Method::PUT, "/api/monitor/settings").json(&json!({}))).await;
    assert_eq!(status, 200, "{kept}");
    assert_eq!(kept, after);
    assert_eq!(kept["default_daily_tokens"], 12345);

    // Server settings: a PUT of one field keeps the others, in the file too.
    let (status, body) =
        answer(admin(reqwest::Method::PUT, "/api/settings").json(&json!({"keep_alive": "1h"})))
            .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        answer(admin(reqwest::Method::PUT, "/api/settings").json(&json!({"rate_limit_rpm": 100})))
            .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["settings"]["keep_alive"], "1h");
    assert_eq!(body["settings"]["rate_limit_rpm"], 100);
    let file =
        std::fs::read_to_string(s.data.as_ref().unwrap().path().join("settings.toml")).unwrap();
    assert!(
        file.contains("keep_alive = \"1h\"") && file.contains("rate_limit_rpm = 100"),
        "{file}"
    );
    let (status, err) =
        answer(admin(reqwest::Method::PUT, "/api/settings").json(&json!([1]))).await;
    assert_eq!(status, 400, "{err}");

    // A budget body without its field is refused, not read as "back to the default".
    let (status, _) = answer(
        admin(reqwest::Method::PUT, "/api/sessions/kept/budget")
            .json(&json!({"daily_tokens": 500})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, err) =
        answer(admin(reqwest::Method::PUT, "/api/sessions/kept/budget").json(&json!({}))).await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("daily_tokens"),
        "{err}"
    );
    let (_, budget) = answer(admin(reqwest::Method::GET, "/api/sessions/kept/budget")).await;
    assert_eq!(budget["budget"]["daily_tokens"], 500, "{budget}");
}
