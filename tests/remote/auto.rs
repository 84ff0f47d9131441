//! `model: "auto"` on a real server: a short prose prompt goes to the small model, a long one
//! or one holding code to the large; a prompt like a route's labelled examples (MiniLM) goes to
//! that route; the decision and its reason are in the headers and the request log.

use std::time::Duration;

use serde_json::{json, Value};

use super::common::server::{data_dir, get_json, spawn_in, started, Server};

fn front(auto: &str) -> Server {
    let home = data_dir();
    std::fs::write(home.path().join("settings.toml"), auto).unwrap();
    let child = spawn_in(home.path(), &[], &[]);
    let path = home.path().to_path_buf();
    started(child, &path, Some(home))
}

/// Status, the served-by and route headers, the body.
async fn auto(s: &Server, content: &str) -> (u16, String, String, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.base))
        .header("x-session-id", "auto-test")
        .json(&json!({"model": "auto", "max_tokens": 2, "temperature": 0,
                      "messages": [{"role": "user", "content": content}]}))
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let (served, route) = (header("x-lantern-served-by"), header("x-lantern-route"));
    (r.status().as_u16(), served, route, r.json().await.unwrap())
}

#[tokio::test]
async fn auto_sends_short_prose_to_the_small_model_and_long_or_code_prompts_to_the_large() {
    let s = front(
        r#"
[[auto.routes]]
model = "smollm2"
max_prompt_tokens = 60
code = false

[[auto.routes]]
model = "gemma3"
"#,
    );
    let (status, served, route, answer) = auto(&s, "What is the capital of France?").await;
    assert_eq!((status, served.as_str()), (200, "smollm2"), "{answer}");
    assert!(
        route.starts_with("auto: smollm2: ") && route.contains("prompt tokens <= 60"),
        "{route}"
    );
    assert!(route.contains("holds no code"), "{route}");
    assert_eq!(answer["model"], "smollm2");

    let long = "Tell me about the history of the printing press in Europe. ".repeat(12);
    let (status, served, route, _) = auto(&s, &long).await;
    assert_eq!((status, served.as_str()), (200, "gemma3"));
    assert!(
        route.contains("refused: smollm2:") && route.contains("> 60"),
        "{route}"
    );

    let code = "Why does this fail?\n```python\nprint(1/0)\n```";
    let (_, served, route, _) = auto(&s, code).await;
    assert_eq!(served, "gemma3");
    assert!(route.contains("the prompt holds code"), "{route}");

    // The request log keeps each decision with its reason.
    let mut routes = Vec::new();
    for _ in 0..30 {
        let session = get_json(&s, "/api/sessions/auto-test").await;
        routes = session["requests"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|x| x["route"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default();
        if routes.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(routes.len(), 3, "{routes:?}");
    assert!(routes.iter().all(|r| r.starts_with("auto: ")), "{routes:?}");
    assert_eq!(
        routes.iter().filter(|r| r.contains("auto: gemma3")).count(),
        2,
        "{routes:?}"
    );
}

#[tokio::test]
async fn auto_sends_a_prompt_like_a_routes_examples_to_it() {
    let s = front(
        r#"
[[auto.routes]]
model = "smollm2"
like = ["What is the capital of Spain?", "Which river flows through Paris?"]
min_similarity = 0.6

[[auto.routes]]
model = "gemma3"
"#,
    );
    let (_, served, route, _) = auto(&s, "What is the capital of Portugal?").await;
    assert_eq!(served, "smollm2", "{route}");
    assert!(
        route.contains("to \"What is the capital of Spain?\""),
        "{route}"
    );
    let (_, served, route, _) = auto(&s, "Write a haiku about autumn leaves falling.").await;
    assert_eq!(served, "gemma3", "{route}");
    assert!(
        route.contains("similarity") && route.contains("< 0.6"),
        "{route}"
    );
    // Without candidates, `auto` is refused with a clear error.
    let bare = super::common::server::start(&[]);
    let (status, _, _, answer) = auto(&bare, "hi").await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("auto.routes"),
        "{answer}"
    );
}
