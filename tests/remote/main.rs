//! Remote backends, fallback chains and circuit breakers against real servers on loopback: a
//! second `lantern serve` stands in for the remote engine (vLLM, llama-server), behind a fault
//! proxy written here (`proxy`) that drops connections, answers 500 or stalls. Canary releases
//! (`canary`) and `model: "auto"` (`auto`) route on the same path.

mod auto;
mod canary;
#[path = "../common/mod.rs"]
mod common;
mod proxy;

use std::time::{Duration, Instant};

use common::server::{data_dir, get_json, spawn_with_log, start, started, Server};
use proxy::{Mode, Proxy};
use serde_json::{json, Value};

const SECRET: &str = "sk-remote-test-4a1f9c";

/// The remote (`lantern serve` on smollm2), the fault proxy before it, and the front server
/// whose settings name it as backend `edge` and the chain `main`: edge first, local second.
async fn servers() -> (Server, Proxy, Server) {
    servers_with(60.0).await
}

/// As `servers`, with the backend's timeout (connection, status and first chunk) in seconds.
async fn servers_with(timeout: f64) -> (Server, Proxy, Server) {
    let remote = start(&[]);
    let proxy = proxy::start(&remote.base).await;
    let home = data_dir();
    let settings = format!(
        r#"
[[backends]]
name = "edge"
url = "{}"
models = ["smollm2", "all-minilm"]
timeout = {timeout}
health_interval = 1

[[chains]]
name = "main"
targets = ["edge/smollm2", "smollm2"]

[breaker]
failures = 2
cooldown = 1.5
"#,
        proxy.url,
    );
    std::fs::write(home.path().join("settings.toml"), settings).unwrap();
    // Its whole log, at debug level (the HTTP client's too), for the key check.
    let log = std::fs::File::create(home.path().join("server.log")).unwrap();
    let child = spawn_with_log(home.path(), &[], &[("LANTERN_LOG", "debug")], log);
    let path = home.path().to_path_buf();
    let front = started(child, &path, Some(home));
    (remote, proxy, front)
}

fn body(model: &str, content: &str, extra: Value) -> Value {
    let mut b = json!({"model": model, "temperature": 0, "max_tokens": 24,
                       "messages": [{"role": "user", "content": content}]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

/// `POST /v1/chat/completions`: status, the served-by header, the body.
async fn ask(s: &Server, body: &Value) -> (u16, Option<String>, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.base))
        .header("cache-control", "no-cache")
        .json(body)
        .send()
        .await
        .unwrap();
    let served = r
        .headers()
        .get("x-lantern-served-by")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), served, r.json().await.unwrap())
}

/// A streamed answer: its content deltas in order, its usage, and whether it ended in [DONE].
async fn streamed(base: &str, body: &Value) -> (Vec<String>, Value, bool) {
    let mut b = body.clone();
    b["stream"] = json!(true);
    b["stream_options"] = json!({"include_usage": true});
    let text = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .header("cache-control", "no-cache")
        .json(&b)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (mut deltas, mut usage, mut done) = (Vec::new(), Value::Null, false);
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            deltas.push(t.to_string());
        }
        if v["usage"].is_object() {
            usage = v["usage"].clone();
        }
    }
    (deltas, usage, done)
}

/// A counter of `/metrics` with these labels (0 when absent).
async fn metric(s: &Server, name: &str, labels: &str) -> f64 {
    let text = s.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{{labels}}}")))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn a_remote_model_streams_through_unchanged_with_its_key_kept_secret() {
    let (remote, proxy, front) = servers().await;
    // The key is given through the API, kept 0600 in the data directory, never shown.
    let added = common::server::post(
        &front,
        "/api/backends",
        &json!({"name": "edge", "url": proxy.url, "models": ["smollm2", "all-minilm"], "timeout": 60.0,
                "health_interval": 1, "api_key": SECRET}),
    )
    .await;
    assert_eq!(added.0, 200, "{}", added.1);
    assert_eq!(added.1["has_key"], true);
    let models = get_json(&front, "/v1/models").await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"edge/smollm2") && ids.contains(&"main"),
        "{ids:?}"
    );

    let prompt = "Name three colours of the rainbow.";
    let (direct, direct_usage, done) =
        streamed(&remote.base, &body("smollm2", prompt, json!({}))).await;
    assert!(done && !direct.is_empty());
    let (through, usage, done) =
        streamed(&front.base, &body("edge/smollm2", prompt, json!({}))).await;
    assert!(done);
    assert_eq!(
        through.concat(),
        direct.concat(),
        "the text passes through byte for byte"
    );
    assert_eq!(through, direct, "chunk by chunk as the remote sent it");
    assert_eq!(usage["prompt_tokens"], direct_usage["prompt_tokens"]);
    assert_eq!(
        usage["completion_tokens"],
        direct_usage["completion_tokens"]
    );

    // Whole answers, several choices, and a forced tool call read by the remote engine.
    let (status, served, answer) =
        ask(&front, &body("edge/smollm2", prompt, json!({"n": 2}))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(served.as_deref(), Some("edge/smollm2"));
    assert_eq!(answer["choices"].as_array().unwrap().len(), 2);
    assert_eq!(answer["choices"][0]["message"]["content"], direct.concat());
    let tool = json!({"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}});
    let forced = json!({"tools": [tool], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}});
    let (status, _, answer) = ask(&front, &body("edge/smollm2", "Weather in Paris?", forced)).await;
    assert_eq!(status, 200, "{answer}");
    let call = &answer["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], "get_weather", "{answer}");
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string(), "{args}");
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");

    // Log-probabilities come through named by the remote's tokens.
    let with_lp = json!({"logprobs": true, "top_logprobs": 2, "max_tokens": 6});
    let (_, _, here) = ask(&front, &body("edge/smollm2", prompt, with_lp.clone())).await;
    let (_, _, there) = ask(&remote, &body("smollm2", prompt, with_lp)).await;
    assert_eq!(
        here["choices"][0]["logprobs"]["content"], there["choices"][0]["logprobs"]["content"],
        "{here}"
    );
    // Anthropic's and Ollama's APIs reach the remote model too.
    let messages = reqwest::Client::new()
        .post(format!("{}/v1/messages", front.base))
        .json(
            &json!({"model": "edge/smollm2", "max_tokens": 24, "temperature": 0,
                      "messages": [{"role": "user", "content": prompt}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(messages.headers()["x-lantern-served-by"], "edge/smollm2");
    let messages: Value = messages.json().await.unwrap();
    assert_eq!(
        messages["content"][0]["text"],
        direct.concat(),
        "{messages}"
    );
    let ollama = |base: String, model: &'static str| async move {
        reqwest::Client::new()
            .post(format!("{base}/api/chat"))
            .json(&json!({"model": model, "stream": false,
                          "options": {"temperature": 0, "num_predict": 24},
                          "messages": [{"role": "user", "content": prompt}]}))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    // Ollama's own defaults (a repeat penalty) go with the request to the remote.
    let through = ollama(front.base.clone(), "edge/smollm2").await;
    let there = ollama(remote.base.clone(), "smollm2").await;
    assert_eq!(
        through["message"]["content"], there["message"]["content"],
        "{through}"
    );

    // A greedy answer is kept by the response cache: the second never reaches the remote.
    let cached = body("edge/smollm2", "Name a fruit.", json!({"max_tokens": 6}));
    let post_cached = || async {
        reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", front.base))
            .json(&cached)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let fresh = post_cached().await;
    let asked = proxy.accepted();
    let again = post_cached().await;
    assert_eq!(again["usage"]["response_cached"], true, "{again}");
    assert_eq!(
        again["choices"][0]["message"],
        fresh["choices"][0]["message"]
    );
    assert_eq!(
        proxy.accepted(),
        asked,
        "the cache answered, not the remote"
    );

    // A session's daily budget counts what the remote generated, and stops the session.
    let budget = front
        .client()
        .put(format!("{}/api/sessions/capped/budget", front.base))
        .json(&json!({"daily_tokens": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(budget.status(), 200);
    let capped = |n: u32| {
        let b = body(
            "edge/smollm2",
            &format!("Count to {n}."),
            json!({"max_tokens": 24}),
        );
        reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", front.base))
            .header("x-session-id", "capped")
            .header("cache-control", "no-cache")
            .json(&b)
            .send()
    };
    let first = capped(5).await.unwrap();
    assert_eq!(first.status(), 200);
    let left: u64 = first.headers()["x-lantern-budget-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(left, 30);
    let used = first.json::<Value>().await.unwrap()["usage"]["total_tokens"]
        .as_u64()
        .unwrap();
    assert!(used > 30, "{used}");
    assert_eq!(
        capped(6).await.unwrap().status(),
        429,
        "the remote's tokens spent the budget"
    );

    // The remote's own refusal of a bad request reaches the client as a 400 with its message.
    let (status, _, answer) = ask(
        &front,
        &body("edge/smollm2", prompt, json!({"temperature": 5})),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    // The front's own checks stay: a Lark grammar has no remote field.
    let (status, _, answer) = ask(
        &front,
        &body("edge/smollm2", prompt, json!({"grammar": "start: \"a\""})),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("remote"),
        "{answer}"
    );

    // The key went to the remote and nowhere else.
    assert!(proxy
        .heads
        .lock()
        .unwrap()
        .iter()
        .any(|h| h.contains(&format!("Bearer {SECRET}"))));
    for path in [
        "/api/backends",
        "/api/settings",
        "/v1/models",
        "/metrics",
        "/api/engine",
        "/api/usage",
    ] {
        let text = front.get(path).await.text().await.unwrap();
        assert!(!text.contains(SECRET), "{path} shows the key");
    }
    let home = front.data.as_ref().unwrap().path();
    let settings = std::fs::read_to_string(home.join("settings.toml")).unwrap();
    assert!(!settings.contains(SECRET) && settings.contains("edge"));
    let log = std::fs::read_to_string(home.join("server.log")).unwrap();
    assert!(log.contains("request finished"), "the log was written");
    assert!(!log.contains(SECRET), "the log shows the key");
    let keys = std::fs::read_to_string(home.join("backend-keys.json")).unwrap();
    assert!(keys.contains(SECRET));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(home.join("backend-keys.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Health is checked at its interval; the request log names the remote model.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let listed = get_json(&front, "/api/backends").await;
    let edge = &listed["backends"][0];
    assert_eq!(edge["health"]["up"], true, "{listed}");
    assert!(edge["health"]["models"]
        .as_array()
        .unwrap()
        .contains(&json!("smollm2")));
    assert!(edge.get("api_key").is_none());
    let requests = metric(
        &front,
        "lantern_requests_total",
        "api=\"chat\",model=\"edge/smollm2\",outcome=\"ok\",status=\"200\"",
    )
    .await;
    assert!(requests >= 3.0, "{requests}");
}

#[tokio::test]
async fn a_chain_falls_back_past_drops_failures_and_stalls_and_its_breaker_opens_and_closes() {
    let (_remote, proxy, front) = servers_with(8.0).await;
    let prompt = "Say hello.";
    let (status, served, _) = ask(&front, &body("main", prompt, json!({}))).await;
    assert_eq!((status, served.as_deref()), (200, Some("edge/smollm2")));

    for (mode, label) in [(Mode::Drop, "drop"), (Mode::Fail, "500")] {
        proxy.set(mode).await;
        let began = Instant::now();
        let (status, served, answer) = ask(&front, &body("main", prompt, json!({}))).await;
        assert_eq!(status, 200, "{label}: {answer}");
        assert_eq!(served.as_deref(), Some("smollm2"), "{label}");
        // At once: a refused connection or a 500 is not waited out like a stall.
        assert!(
            began.elapsed() < Duration::from_secs(6),
            "{label}: {:?}",
            began.elapsed()
        );
    }
    let fallbacks = metric(
        &front,
        "lantern_fallbacks_total",
        "chain=\"main\",target=\"smollm2\"",
    )
    .await;
    assert_eq!(fallbacks, 2.0);
    // Two failures in a row opened edge's circuit: the chain no longer tries it.
    let circuits = get_json(&front, "/api/backends").await["backends"][0]["circuits"].clone();
    assert_eq!(circuits["edge/smollm2"], "open", "{circuits}");
    let tried = proxy.accepted();
    let (status, served, _) = ask(&front, &body("main", prompt, json!({}))).await;
    assert_eq!((status, served.as_deref()), (200, Some("smollm2")));
    assert_eq!(proxy.accepted(), tried, "an open circuit is not tried");
    assert_eq!(
        metric(
            &front,
            "lantern_circuit_opens_total",
            "target=\"edge/smollm2\""
        )
        .await,
        1.0
    );
    // A remote model asked for by name answers 503 at once while its circuit is open.
    let (status, _, answer) = ask(&front, &body("edge/smollm2", prompt, json!({}))).await;
    assert_eq!(status, 503, "{answer}");

    // Past the cooldown one probe goes through; the remote is well again, so it closes.
    proxy.set(Mode::Pass).await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (status, served, _) = ask(&front, &body("main", prompt, json!({}))).await;
    assert_eq!((status, served.as_deref()), (200, Some("edge/smollm2")));
    let circuits = get_json(&front, "/api/backends").await["backends"][0]["circuits"].clone();
    assert_eq!(circuits["edge/smollm2"], "closed", "{circuits}");

    // A stalled remote is given up on at its timeout (8 s) and the next link answers.
    proxy.set(Mode::Stall).await;
    let began = Instant::now();
    let (status, served, answer) = ask(&front, &body("main", prompt, json!({}))).await;
    assert_eq!(
        (status, served.as_deref()),
        (200, Some("smollm2")),
        "{answer}"
    );
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(7900) && took < Duration::from_secs(20),
        "{took:?}"
    );
    // With the remote stopped outright, the chain still answers.
    proxy.set(Mode::Pass).await;
    drop(_remote);
    let (status, served, _) = ask(&front, &body("main", prompt, json!({}))).await;
    assert_eq!((status, served.as_deref()), (200, Some("smollm2")));
}

#[tokio::test]
async fn thirty_two_concurrent_streams_through_a_remote_lose_nothing_and_count_exactly() {
    let (remote, _proxy, front) = servers().await;
    let before = metric(
        &remote,
        "lantern_generated_tokens_total",
        "model=\"smollm2\"",
    )
    .await;
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let base = front.base.clone();
            let body = body(
                "edge/smollm2",
                &format!("Count to {}.", i % 7 + 2),
                json!({"max_tokens": 12, "temperature": 0.7, "seed": i}),
            );
            tokio::spawn(async move { streamed(&base, &body).await })
        })
        .collect();
    let mut sum = 0;
    for t in tasks {
        let (deltas, usage, done) = t.await.unwrap();
        assert!(done, "every stream ends in [DONE]");
        assert!(!deltas.is_empty());
        sum += usage["completion_tokens"].as_u64().unwrap();
    }
    // The front's count, the remote's count and what the clients were told agree.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let front_count = metric(
        &front,
        "lantern_generated_tokens_total",
        "model=\"edge/smollm2\"",
    )
    .await;
    let remote_count = metric(
        &remote,
        "lantern_generated_tokens_total",
        "model=\"smollm2\"",
    )
    .await
        - before;
    assert_eq!(front_count as u64, sum);
    assert_eq!(remote_count as u64, sum);
}

#[tokio::test]
async fn a_remote_model_is_a_quality_reference_and_an_experiment_variant() {
    let (_remote, _proxy, front) = servers().await;
    // The same weights behind the remote: the local variant agrees with nearly every token the
    // reference wrote, and finds its answers unsurprising.
    let quality = |reference: &'static str| {
        let front = &front;
        async move {
            let body = json!({"reference": reference, "variant": "smollm2",
                              "prompts": ["Say hi.", "Count to three."], "max_tokens": 12});
            let (status, started) = common::server::post(front, "/api/lab/quality", &body).await;
            assert_eq!(status, 202, "{started}");
            let job = common::server::wait_job(front, started["job"].as_u64().unwrap()).await;
            assert_eq!(job["state"], "done", "{job}");
            job["result"].clone()
        }
    };
    let report = &quality("edge/smollm2").await;
    assert!(report["positions"].as_u64().unwrap() >= 8, "{report}");
    assert!(report["top1_agreement"].as_f64().unwrap() > 0.9, "{report}");
    assert!(
        report["kl_mean"].is_null() && report["perplexity_reference"].is_null(),
        "{report}"
    );
    // The local model's perplexity of the remote's answers is its perplexity of its own.
    let own = quality("smollm2").await["perplexity_reference"]
        .as_f64()
        .unwrap();
    let theirs = report["perplexity_variant"].as_f64().unwrap();
    assert!((own - theirs).abs() < 0.01 * own, "{own} vs {theirs}");
    assert!(
        report["reference_tokens_per_second"].as_f64().unwrap() > 0.0,
        "{report}"
    );

    // An experiment run with a remote variant: both answer every prompt, greedily the same.
    let spec = json!({"name": "local-vs-remote", "max_tokens": 8, "prompts": ["Say hi."],
        "variants": [{"name": "here", "model": "smollm2"}, {"name": "there", "model": "edge/smollm2"}]});
    assert_eq!(
        common::server::post(&front, "/api/lab/experiments", &spec)
            .await
            .0,
        201
    );
    let (status, started) = common::server::post(
        &front,
        "/api/lab/experiments/local-vs-remote/run",
        &json!({}),
    )
    .await;
    assert_eq!(status, 202, "{started}");
    let job = common::server::wait_job(&front, started["job"].as_u64().unwrap()).await;
    assert_eq!(job["state"], "done", "{job}");
    let e = get_json(&front, "/api/lab/experiments/local-vs-remote").await;
    let rows = e["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{e}");
    assert_eq!(rows[0]["output"], rows[1]["output"], "{rows:?}");
}

#[tokio::test]
async fn a_remote_embedding_model_answers_through_the_embedding_cache() {
    let (remote, proxy, front) = servers().await;
    let embed = |s: &Server, model: &str| {
        let (base, model) = (s.base.clone(), model.to_string());
        async move {
            reqwest::Client::new()
                .post(format!("{base}/v1/embeddings"))
                .json(&json!({"model": model, "input": ["a lantern in the dark", "héllo"]}))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let direct = embed(&remote, "all-minilm").await;
    let first = embed(&front, "edge/all-minilm").await;
    assert_eq!(first["model"], "edge/all-minilm");
    assert_eq!(first["cache"]["computed"], 2, "{first}");
    for i in 0..2 {
        assert_eq!(
            first["data"][i]["embedding"], direct["data"][i]["embedding"],
            "input {i}"
        );
    }
    assert_eq!(
        first["usage"]["prompt_tokens"],
        direct["usage"]["prompt_tokens"]
    );
    // Again: from the cache, and the remote is not asked.
    let asked = proxy.accepted();
    let again = embed(&front, "edge/all-minilm").await;
    assert_eq!(again["cache"]["memory_hits"], 2, "{again}");
    assert_eq!(again["data"], first["data"]);
    assert_eq!(proxy.accepted(), asked);
}
