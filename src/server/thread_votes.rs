//! `POST /api/threads/{id}/votes`: the better of two answers a Chat-page compare wrote side by
//! side, kept as the lab's pairwise vote in the experiment of those two models
//! (`chat-MODEL_A-vs-MODEL_B`, made on the first vote, its prompt the first compared message),
//! so the experiment's summary counts it with the Compare page's blind votes. Each answer keeps
//! its result, and a compare is voted on once.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::threads::{store, Body};
use super::AppState;
use crate::lab::experiments::{ExperimentSpec, Variant, Vote};
use crate::store::threads::{Message, MessageState};
use crate::store::Store;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VoteBody {
    a: String,
    b: String,
    /// `a`, `b` or `tie`.
    winner: String,
}

pub async fn vote(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body: VoteBody = super::body::parse_body(body, state.body_limit)?;
    if !matches!(body.winner.as_str(), "a" | "b" | "tie") {
        return Err(ApiError::invalid("'winner' is a, b or tie", "winner"));
    }
    let db = store(&state)?;
    let messages = db.thread_messages(&id).await.map_err(ApiError::internal)?;
    let find = |mid: &str, param: &'static str| {
        messages
            .iter()
            .find(|m| m.id == mid && m.role == "assistant")
            .ok_or_else(|| ApiError::invalid(format!("no answer `{mid}` in this thread"), param))
    };
    let (a, b) = (find(&body.a, "a")?, find(&body.b, "b")?);
    let group = |m: &Message| m.sampling.as_ref().and_then(|s| s.get("compare")).cloned();
    if a.id == b.id || a.parent_id != b.parent_id || group(a).is_none() || group(a) != group(b) {
        return Err(ApiError::invalid(
            "'a' and 'b' are two answers of one compare",
            "b",
        ));
    }
    if [a, b].iter().any(|m| m.state != MessageState::Complete) {
        return Err(ApiError::invalid("both answers must be complete", "a"));
    }
    let (model_a, model_b) = (model_of(a), model_of(b));
    if model_a == model_b {
        return Err(ApiError::invalid("both answers came from one model", "b"));
    }
    let prompt = messages
        .iter()
        .find(|m| Some(&m.id) == a.parent_id.as_ref())
        .map(|m| m.content.clone())
        .unwrap_or_default();
    let (experiment, spec) = experiment_for(db, &model_a, &model_b, prompt).await?;
    let result = |side: &str| match body.winner.as_str() {
        "tie" => "tie",
        w if w == side => "won",
        _ => "lost",
    };
    let marks = [
        (
            a.id.as_str(),
            json!({"experiment": spec.name, "result": result("a")}),
        ),
        (
            b.id.as_str(),
            json!({"experiment": spec.name, "result": result("b")}),
        ),
    ];
    if !db.messages_vote(&marks).await.map_err(ApiError::internal)? {
        return Err(ApiError::invalid("this compare has its vote already", "a"));
    }
    let vote = Vote {
        prompt_index: 0,
        a: model_a,
        b: model_b,
        winner: body.winner,
    };
    db.vote_insert(experiment, &vote)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({"experiment": spec.name, "recorded": vote})))
}

fn model_of(m: &Message) -> String {
    m.model.clone().unwrap_or_default()
}

/// The experiment of two models (either order), made on the first vote.
async fn experiment_for(
    db: &Store,
    a: &str,
    b: &str,
    prompt: String,
) -> Result<(i64, ExperimentSpec), ApiError> {
    let mut pair = [a, b];
    pair.sort();
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut name = format!("chat-{}-vs-{}", clean(pair[0]), clean(pair[1]));
    if name.len() > 64 {
        let hash = pair.iter().fold(0xcbf29ce484222325u64, |h, s| {
            s.bytes()
                .fold(h, |h, c| (h ^ c as u64).wrapping_mul(0x100000001b3))
        });
        name = format!("{}-{hash:016x}", &name[..47]);
    }
    if let Some(e) = db.experiment_get(&name).await.map_err(ApiError::internal)? {
        return Ok((e.id, e.spec));
    }
    let variant = |model: &str| Variant {
        name: model.to_string(),
        model: model.to_string(),
        compression: None,
        temperature: None,
        weight: 1.0,
    };
    let spec = ExperimentSpec {
        name: name.clone(),
        variants: vec![variant(pair[0]), variant(pair[1])],
        reference: None,
        prompts: Some(vec![prompt]),
        prompt_limit: None,
        max_tokens: 256,
        canary: None,
    };
    spec.validate()
        .map_err(|(message, param)| ApiError::invalid(message, param))?;
    db.experiment_create(&spec)
        .await
        .map_err(ApiError::internal)?;
    // Made here or by a vote that raced this one: read back the one that stands.
    let e = db
        .experiment_get(&name)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::internal("the experiment just made is missing"))?;
    Ok((e.id, e.spec))
}
