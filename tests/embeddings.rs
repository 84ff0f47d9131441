//! Sentence embeddings against sentence-transformers (`tests/fixtures/embeddings.json`, made
//! with PyTorch on the same all-MiniLM-L6-v2 files).

mod common;

use common::server::{delete_json, get_json, post, start};
use serde_json::{json, Value};

fn reference() -> Value {
    let path = common::reference_dir().join("embeddings.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn vectors_match_sentence_transformers() {
    let model = common::minilm();
    let reference = reference();
    assert_eq!(
        model.info.max_tokens,
        reference["max_seq_length"].as_u64().unwrap() as usize
    );
    let items = reference["items"].as_array().unwrap();
    let tokenized: Vec<_> = items
        .iter()
        .map(|it| model.tokenize(it["text"].as_str().unwrap(), true).unwrap())
        .collect();
    let inputs: Vec<&[u32]> = tokenized.iter().map(|t| t.ids.as_slice()).collect();
    let vectors = model.embed(&inputs).unwrap();
    let mut worst = 1f64;
    for ((it, tok), v) in items.iter().zip(&tokenized).zip(&vectors) {
        let text = it["text"].as_str().unwrap();
        assert_eq!(
            tok.ids.len() as u64,
            it["n_tokens"].as_u64().unwrap(),
            "{text:?}"
        );
        let expect: Vec<f32> = serde_json::from_value(it["embedding"].clone()).unwrap();
        assert_eq!(v.len(), expect.len());
        let c = cosine(v, &expect);
        eprintln!("{c:.6} {text:?}");
        worst = worst.min(c);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{text:?}: norm {norm}");
    }
    let long = items
        .iter()
        .zip(&tokenized)
        .find(|(it, _)| it["text"].as_str().unwrap().len() > 1000);
    let (_, long) = long.expect("the reference has a text past the window");
    assert!(long.truncated_from.unwrap() > model.info.max_tokens);
}

#[test]
fn batched_equals_one_at_a_time_and_order_is_kept() {
    let model = common::minilm();
    let texts = [
        "hello",
        "A much longer sentence about cats and rugs and mats.",
        "",
        "🦀",
    ];
    let toks: Vec<_> = texts
        .iter()
        .map(|t| model.tokenize(t, true).unwrap())
        .collect();
    let inputs: Vec<&[u32]> = toks.iter().map(|t| t.ids.as_slice()).collect();
    let batched = model.embed(&inputs).unwrap();
    for (input, b) in inputs.iter().zip(&batched) {
        let alone = model.embed(&[input]).unwrap().remove(0);
        let worst = alone
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "padding changed a vector by {worst}");
    }
}

#[test]
fn window_and_bad_ids_are_reported() {
    let model = common::minilm();
    let long = "word ".repeat(400);
    let cut = model.tokenize(&long, true).unwrap();
    assert_eq!(cut.ids.len(), model.info.max_tokens);
    assert_eq!(cut.ids.last(), Some(&102), "[SEP] is kept at the end");
    assert_eq!(cut.truncated_from, Some(402));
    assert!(matches!(
        model.tokenize(&long, false),
        Err(lantern::engine::models::bert::EmbedError::TooLong {
            tokens: 402,
            limit: 256
        })
    ));
    assert!(model.fit(vec![101, 999_999], true).is_err());
    assert!(model.fit(vec![], true).is_err());
}

fn vector(item: &Value) -> Vec<f32> {
    serde_json::from_value(item["embedding"].clone()).unwrap()
}

#[tokio::test]
async fn http_shapes_errors_and_truncation() {
    let s = start(&[]);
    let items = reference()["items"].as_array().unwrap().clone();
    let texts: Vec<&str> = items
        .iter()
        .map(|it| it["text"].as_str().unwrap())
        .collect();
    let (status, r) = post(
        &s,
        "/v1/embeddings",
        &json!({"model": "all-minilm", "input": texts, "encoding_format": "float"}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "list");
    assert_eq!(r["model"], "all-minilm");
    let data = r["data"].as_array().unwrap();
    assert_eq!(data.len(), items.len());
    for (i, (d, it)) in data.iter().zip(&items).enumerate() {
        assert_eq!(
            (d["object"].as_str(), d["index"].as_u64()),
            (Some("embedding"), Some(i as u64))
        );
        assert!(cosine(&vector(d), &vector(it)) >= 0.999, "{}", it["text"]);
    }
    let tokens: u64 = items
        .iter()
        .map(|it| it["n_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(r["usage"]["prompt_tokens"], tokens);
    assert_eq!(r["usage"]["total_tokens"], tokens);
    let cut = r["truncated_inputs"].as_array().unwrap();
    assert_eq!(cut.len(), 1);
    assert_eq!(cut[0]["kept"], 256);

    // Token ids in: the same vector as the text they spell.
    let (_, by_text) = post(
        &s,
        "/v1/embeddings",
        &json!({"model": "all-minilm", "input": "hello"}),
    )
    .await;
    let (_, by_ids) = post(
        &s,
        "/v1/embeddings",
        &json!({"model": "all-minilm", "input": [[101, 7592, 102]]}),
    )
    .await;
    assert_eq!(by_ids["usage"]["prompt_tokens"], 3);
    assert_eq!(
        by_text["data"][0]["embedding"],
        by_ids["data"][0]["embedding"]
    );

    let long = "word ".repeat(400);
    let cases = [
        (
            json!({"model": "all-minilm", "input": long, "truncate": false}),
            400,
            Some("context_length_exceeded"),
        ),
        (
            json!({"model": "all-minilm", "input": "x", "dimensions": 64}),
            400,
            None,
        ),
        (
            json!({"model": "all-minilm", "input": "x", "encoding_format": "int8"}),
            400,
            None,
        ),
        (json!({"model": "all-minilm", "input": []}), 400, None),
        (
            json!({"model": "all-minilm", "input": [[1, 99999999]]}),
            400,
            None,
        ),
        (json!({"model": "all-minilm"}), 400, None),
        (json!({"input": "x"}), 400, None),
        (json!({"model": "smollm2", "input": "x"}), 400, None),
        (
            json!({"model": "text-embedding-3-small", "input": "x"}),
            404,
            Some("model_not_found"),
        ),
        (
            json!({"model": "../smollm2", "input": "x"}),
            404,
            Some("model_not_found"),
        ),
    ];
    for (body, want, code) in cases {
        let (status, r) = post(&s, "/v1/embeddings", &body).await;
        assert_eq!(status, want, "{body} -> {r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{r}"
        );
        if let Some(code) = code {
            assert_eq!(r["error"]["code"], code, "{body}");
        }
    }
}

#[tokio::test]
async fn concurrent_requests_all_get_their_own_vectors() {
    let s = start(&[]);
    let texts: Vec<String> = (0..24)
        .map(|i| format!("sentence number {i} about topic {}", i * 7))
        .collect();
    let (_, alone) = post(
        &s,
        "/v1/embeddings",
        &json!({"model": "all-minilm", "input": texts, "encoding_format": "float"}),
    )
    .await;
    let requests = texts.iter().map(|t| {
        let body = json!({"model": "all-minilm", "input": [t, "a shared second input"], "encoding_format": "float"});
        let s = &s;
        async move { post(s, "/v1/embeddings", &body).await }
    });
    let answers = futures_util::future::join_all(requests).await;
    for (i, (status, r)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "{r}");
        let got = vector(&r["data"][0]);
        let want = vector(&alone["data"][i]);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "request {i}: off by {worst}");
    }
}

fn texts_body(texts: &[&str]) -> Value {
    json!({"model": "all-minilm", "input": texts, "encoding_format": "float"})
}

#[tokio::test]
async fn the_cache_survives_a_restart_and_can_be_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lantern.db");
    let db = db.to_str().unwrap();
    let texts = ["the first text", "the second text", "the first text"];
    let first = {
        let s = start(&["--db", db]);
        let (status, r) = post(&s, "/v1/embeddings", &texts_body(&texts)).await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["cache"]["computed"], 3, "{r}");
        let (_, again) = post(&s, "/v1/embeddings", &texts_body(&texts)).await;
        assert_eq!(again["cache"]["memory_hits"], 3, "{again}");
        assert_eq!(again["data"], r["data"]);
        r
    };
    // A new process: memory is empty, the database is not.
    let s = start(&["--db", db]);
    let (_, r) = post(&s, "/v1/embeddings", &texts_body(&texts)).await;
    assert_eq!(r["cache"]["store_hits"], 3, "{r}");
    assert_eq!(r["data"], first["data"]);
    let stats = get_json(&s, "/api/cache").await;
    let e = &stats["embeddings"];
    assert_eq!(e["store"]["entries"], 2, "{stats}");
    assert_eq!(e["store"]["bytes"], 2 * 384 * 4);
    assert_eq!(
        (e["lookups"].as_u64(), e["hit_rate"].as_f64()),
        (Some(3), Some(1.0))
    );
    assert_eq!(e["memory"]["entries"], 2);

    let cleared = delete_json(&s, "/api/cache/embeddings?model=all-minilm").await;
    assert_eq!(cleared["deleted"], json!({"memory": 2, "store": 2}));
    let (_, r) = post(&s, "/v1/embeddings", &texts_body(&texts)).await;
    assert_eq!(r["cache"]["computed"], 3, "{r}");
}

#[tokio::test]
async fn a_corrupt_or_locked_database_never_fails_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.db");
    std::fs::write(&bad, vec![0x5a; 4096]).unwrap();
    let s = start(&["--db", bad.to_str().unwrap()]);
    let (status, r) = post(&s, "/v1/embeddings", &texts_body(&["still served"])).await;
    assert_eq!(status, 200, "{r}");
    let stats = get_json(&s, "/api/cache").await;
    assert_eq!(stats["embeddings"]["store"]["enabled"], false, "{stats}");
    drop(s);
    assert_eq!(
        std::fs::read(&bad).unwrap(),
        vec![0x5a; 4096],
        "the file is left alone"
    );

    let db = dir.path().join("locked.db");
    let s = start(&["--db", db.to_str().unwrap()]);
    use sqlx::Connection;
    let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (status, r) = post(&s, "/v1/embeddings", &texts_body(&["while locked"])).await;
    assert_eq!(status, 200, "{r}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let stats = get_json(&s, "/api/cache").await;
    assert!(
        stats["embeddings"]["store"]["errors"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
}

#[tokio::test]
async fn identical_requests_at_once_compute_each_input_once() {
    let s = start(&[]);
    let body = texts_body(&["one text sent by many clients at once", "and a second one"]);
    let answers =
        futures_util::future::join_all((0..12).map(|_| post(&s, "/v1/embeddings", &body))).await;
    let mut computed = 0;
    for (status, r) in &answers {
        assert_eq!(*status, 200, "{r}");
        assert_eq!(r["data"], answers[0].1["data"]);
        let c = &r["cache"];
        let total: u64 = ["memory_hits", "store_hits", "joined", "computed"]
            .iter()
            .map(|k| c[*k].as_u64().unwrap())
            .sum();
        assert_eq!(total, 2, "{c}");
        computed += c["computed"].as_u64().unwrap();
    }
    assert_eq!(computed, 2, "each input was computed by one request only");
}
