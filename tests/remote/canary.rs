//! A canary release whose variant (a remote model behind the fault proxy) fails one request in
//! five: it never gets more than its share, rolls back within its window with an alert and a
//! stored reason, and is promoted by hand.

use serde_json::json;

use super::common::server::{get_json, post};
use super::proxy::Mode;
use super::{ask, body, servers};

#[tokio::test]
async fn a_canary_failing_one_request_in_five_rolls_back_and_never_exceeds_its_share() {
    let (_remote, proxy, front) = servers().await;
    let spec = json!({
        "name": "release",
        "variants": [
            {"name": "current", "model": "smollm2"},
            {"name": "next", "model": "edge/smollm2"},
        ],
        "canary": {"variant": "next", "steps": [0.5, 1.0], "step_seconds": 3600,
                   "window_seconds": 600, "min_requests": 5, "max_error_increase": 0.05},
    });
    let (status, created) = post(&front, "/api/lab/experiments", &spec).await;
    assert_eq!(status, 201, "{created}");
    proxy.set(Mode::Flaky(5)).await;

    let (mut total, mut on_canary, mut failed) = (0, 0, 0);
    let mut rolled_back_after = None;
    for i in 0..24 {
        let (status, served, answer) = ask(
            &front,
            &body("experiment:release", "Say hi.", json!({"max_tokens": 4})),
        )
        .await;
        total += 1;
        // The canary is the remote model: the proxy counts its requests, failed ones included.
        let reached = proxy.accepted();
        if status != 200 {
            assert_eq!(status, 503, "{answer}");
            failed += 1;
        } else if served.as_deref() == Some("edge/smollm2") {
            assert_eq!(reached, on_canary + 1);
        }
        on_canary = reached;
        assert!(
            on_canary * 2 <= total,
            "at request {i}: {on_canary} of {total} to the canary"
        );
        let state = get_json(&front, "/api/lab/experiments/release/canary").await;
        if rolled_back_after.is_none() && state["status"] == "rolled_back" {
            rolled_back_after = Some(total);
        }
    }
    assert_eq!(failed, 1, "the fifth request to the canary failed");
    assert_eq!(
        on_canary, 5,
        "rolled back at its fifth request, the first it could be judged at"
    );
    assert_eq!(rolled_back_after, Some(10));

    let state = get_json(&front, "/api/lab/experiments/release/canary").await;
    assert_eq!(state["share"], 0.0);
    assert_eq!(state["canary"]["requests"], 5);
    let changes = state["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[0]["status"], "running");
    assert_eq!(changes[1]["status"], "rolled_back");
    assert!(
        changes[1]["reason"]
            .as_str()
            .unwrap()
            .contains("error rate 20.0%"),
        "{changes:?}"
    );
    let alerts = get_json(&front, "/api/alerts").await;
    let active = alerts["active"].as_array().unwrap();
    assert!(
        active
            .iter()
            .any(|a| a["rule"] == "canary_rollback" && a["subject"] == "release"),
        "{alerts}"
    );

    // Promoted by hand: every request goes to the new variant, and the reason is kept.
    proxy.set(Mode::Pass).await;
    let (status, promoted) = post(
        &front,
        "/api/lab/experiments/release/canary/promote",
        &json!({"reason": "fixed upstream"}),
    )
    .await;
    assert_eq!(status, 200, "{promoted}");
    for _ in 0..3 {
        let (status, served, _) = ask(
            &front,
            &body("experiment:release", "Say hi.", json!({"max_tokens": 4})),
        )
        .await;
        assert_eq!((status, served.as_deref()), (200, Some("edge/smollm2")));
    }
    let state = get_json(&front, "/api/lab/experiments/release/canary").await;
    assert_eq!(state["status"], "promoted");
    let last = state["changes"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["reason"], "promoted by hand: fixed upstream");
    // An experiment without a canary says so.
    let plain = json!({"name": "plain", "variants": [
        {"name": "a", "model": "smollm2"}, {"name": "b", "model": "edge/smollm2"}]});
    assert_eq!(post(&front, "/api/lab/experiments", &plain).await.0, 201);
    let (status, answer) = post(
        &front,
        "/api/lab/experiments/plain/canary/rollback",
        &json!({}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
}
