//! `/api/lab/experiments`: define an experiment, run it as a job (finished rows are never
//! redone, so a run stopped by a cancel or a restart resumes where it was), vote blind on pairs
//! of outputs, and read the summary; and the routing of `model: "experiment:NAME"`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::AppState;
use crate::lab::experiments::{self, ExperimentSpec, Row, Vote};
use crate::scheduler::GenEvent;
use crate::store::experiments::Experiment;
use crate::store::Store;

type Body = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

/// A pair shown for a blind vote: (experiment, prompt, variant a, variant b).
type Shown = (i64, usize, String, String);

/// The pairs handed out, by their opaque id.
#[derive(Clone, Default)]
pub struct Pairs(Arc<Mutex<HashMap<u64, Shown>>>);

fn store(state: &AppState) -> Result<&Store, ApiError> {
    state.monitor.store().ok_or_else(|| ApiError::Unavailable {
        message: "Experiments need the database, which could not be opened".into(),
        code: "no_database",
    })
}

async fn experiment(state: &AppState, key: &str) -> Result<Experiment, ApiError> {
    store(state)?
        .experiment_get(key)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::RouteNotFound(format!("/api/lab/experiments/{key} (no such experiment)"))
        })
}

/// `POST /api/lab/experiments`: create one (every variant's model must be installed).
pub async fn create(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let spec: ExperimentSpec = super::body::parse_body(body, state.body_limit)?;
    spec.validate()
        .map_err(|(message, param)| ApiError::invalid(message, param))?;
    let installed: Vec<String> = state.engines.servable().into_iter().map(|m| m.id).collect();
    if let Some(v) = spec.variants.iter().find(|v| !installed.contains(&v.model)) {
        return Err(ApiError::invalid(
            format!(
                "variant `{}`: the model `{}` is not installed",
                v.name, v.model
            ),
            "variants",
        ));
    }
    let id = store(&state)?
        .experiment_create(&spec)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::invalid(
                format!("an experiment named `{}` exists", spec.name),
                "name",
            )
        })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "name": spec.name})),
    )
        .into_response())
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let all = store(&state)?
        .experiments_list()
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({"experiments": all})))
}

#[derive(serde::Deserialize)]
pub struct Format {
    format: Option<String>,
}

/// `GET /api/lab/experiments/{id or name}`: the definition, every row, and the summary;
/// `?format=csv`: the rows as CSV.
pub async fn get(
    State(state): State<AppState>,
    Path(key): Path<String>,
    axum::extract::Query(q): axum::extract::Query<Format>,
) -> Result<Response, ApiError> {
    let e = experiment(&state, &key).await?;
    let db = store(&state)?;
    let rows = db.experiment_rows(e.id).await.map_err(ApiError::internal)?;
    match q.format.as_deref().unwrap_or("json") {
        "json" => {}
        "csv" => return Ok(csv(&e, &rows)),
        other => return Err(super::csv::bad_format(other)),
    }
    let votes = db.votes(e.id).await.map_err(ApiError::internal)?;
    let prompts = e.spec.prompt_list();
    let total = prompts.len() * e.spec.variants.len();
    Ok(Json(json!({
        "id": e.id,
        "name": e.name,
        "spec": e.spec,
        "prompts": prompts,
        "progress": {"done": rows.len(), "total": total},
        "summary": experiments::summarize(&e.spec, &rows, &votes),
        "rows": rows,
        "votes": votes.len(),
    }))
    .into_response())
}

fn csv(e: &Experiment, rows: &[Row]) -> Response {
    let field = super::csv::field;
    let prompts = e.spec.prompt_list();
    let opt = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v:.6}"));
    let mut out = String::from(
        "experiment,prompt_index,prompt,variant,ttft_ms,tokens_per_second,prompt_tokens,completion_tokens,similarity,output\n",
    );
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{:.3},{},{},{},{},{}\n",
            field(&e.name),
            r.prompt_index,
            field(prompts.get(r.prompt_index).map_or("", |p| p.as_str())),
            field(&r.variant),
            r.ttft_ms,
            opt(r.tokens_per_second),
            r.prompt_tokens,
            r.completion_tokens,
            opt(r.similarity),
            field(&r.output),
        ));
    }
    super::csv::response(out)
}

/// One generation through the scheduler, as an API request would run: the answer's text and
/// its figures.
async fn generate(
    state: &AppState,
    model: &str,
    variant: &experiments::Variant,
    prompt: &str,
    max_tokens: usize,
    partial: &mut dyn FnMut(&str),
) -> Result<(String, crate::scheduler::Usage), String> {
    let engine = state.engines.get(model).await.map_err(|e| e.to_string())?;
    // The lab's own request on the one path's validation, recorded by the lab, not the monitor.
    let caller = crate::infer::Caller {
        session: "lab".into(),
        rate_key: "lab".into(),
        cache: crate::infer::CacheUse::default(),
        timeout: state.settings.request_timeout(),
    };
    let messages = vec![crate::engine::template::ChatMessage::new("user", prompt)];
    let mut req = crate::infer::Request::new(
        crate::infer::Api::Lab,
        model,
        crate::infer::Input::Chat(messages),
        caller,
    );
    req.sampling.max_tokens = Some(max_tokens as i64);
    req.sampling.temperature = Some(variant.temperature.unwrap_or(0.0));
    req.sampling.seed = Some(1);
    req.sampling.compression = variant.compression.clone();
    state
        .infer
        .compress(&engine, &mut req)
        .await
        .map_err(|e| e.to_string())?;
    let plan = crate::infer::validate::validate(&engine, req).map_err(|e| e.to_string())?;
    let request = plan.requests.into_iter().next().ok_or("nothing to run")?;
    let mut events = engine.schedule(request).map_err(|e| e.to_string())?;
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            GenEvent::Text(t) => {
                text.push_str(&t);
                partial(&text);
            }
            GenEvent::Done(usage) => return Ok((text, usage)),
            GenEvent::Failed(m) => return Err(m),
            GenEvent::Token { .. } => {}
        }
    }
    Err("the engine stopped".into())
}

async fn embed(state: &AppState, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
    let embedder = state
        .embedders
        .get("all-minilm")
        .await
        .map_err(|e| e.to_string())?;
    let ids = texts
        .iter()
        .map(|t| embedder.model.tokenize(t, true).map(|t| t.ids))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    embedder.embed(ids).await.map_err(|e| e.to_string())
}

/// `POST /api/lab/experiments/{id}/run`: a job running every prompt on every variant not yet
/// done (the reference first, so each output can be compared with it).
pub async fn run(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let e = experiment(&state, &key).await?;
    let db = store(&state)?.clone();
    let runtime = tokio::runtime::Handle::current();
    let title = format!("experiment {}", e.name);
    let job = state.jobs.clone().spawn("experiment", &title, move |job| {
        runtime.block_on(async {
            let spec = &e.spec;
            let prompts = spec.prompt_list();
            let done: Vec<Row> = db.experiment_rows(e.id).await.map_err(|x| x.to_string())?;
            let mut variants: Vec<&experiments::Variant> = spec.variants.iter().collect();
            variants.sort_by_key(|v| v.name != spec.reference());
            let total = prompts.len() * variants.len();
            let mut finished = done.len();
            for (i, prompt) in prompts.iter().enumerate() {
                // The reference output's embedding, computed when first needed.
                let mut reference: Option<Vec<f32>> = None;
                for v in &variants {
                    if done.iter().any(|r| r.prompt_index == i && r.variant == v.name) {
                        continue;
                    }
                    if job.cancelled() {
                        return Err("cancelled".to_string());
                    }
                    job.progress(finished as f64 / total as f64, &format!("prompt {} · {}", i + 1, v.name));
                    let (output, usage) =
                        generate(&state, &v.model, v, prompt, spec.max_tokens, &mut |text| {
                            job.live(Some(json!({"prompt_index": i, "variant": v.name, "text": text})))
                        })
                        .await?;
                    // Similarity to the reference's output for this prompt (1 for the reference).
                    if reference.is_none() {
                        let stored = db
                            .experiment_rows(e.id)
                            .await
                            .map_err(|x| x.to_string())?
                            .into_iter()
                            .find(|r| r.prompt_index == i && r.variant == spec.reference());
                        let text = if v.name == spec.reference() {
                            Some(output.clone())
                        } else {
                            stored.map(|r| r.output)
                        };
                        if let Some(text) = text {
                            reference = embed(&state, &[&text]).await?.pop();
                        }
                    }
                    let similarity = match &reference {
                        Some(r) => Some(experiments::cosine(r, &embed(&state, &[&output]).await?[0])),
                        None => None,
                    };
                    let decode = usage.decode.as_secs_f64();
                    let row = Row {
                        prompt_index: i,
                        variant: v.name.clone(),
                        output,
                        ttft_ms: usage.time_to_first_token.as_secs_f64() * 1e3,
                        tokens_per_second: (usage.completion_tokens > 1 && decode > 0.0)
                            .then(|| (usage.completion_tokens - 1) as f64 / decode),
                        prompt_tokens: usage.prompt_tokens as u64,
                        completion_tokens: usage.completion_tokens as u64,
                        similarity,
                    };
                    db.experiment_row_put(e.id, &row).await.map_err(|x| x.to_string())?;
                    finished += 1;
                }
            }
            let rows = db.experiment_rows(e.id).await.map_err(|x| x.to_string())?;
            let votes = db.votes(e.id).await.map_err(|x| x.to_string())?;
            job.live(None);
            Ok(json!({"experiment": e.name, "rows": rows.len(), "summary": experiments::summarize(spec, &rows, &votes)}))
        })
    });
    Ok(super::jobs::accepted(job))
}

/// `GET /api/lab/experiments/{id}/pair`: two variants' outputs for one prompt, as A and B, names
/// hidden until the vote.
pub async fn pair(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let e = experiment(&state, &key).await?;
    let rows = store(&state)?
        .experiment_rows(e.id)
        .await
        .map_err(ApiError::internal)?;
    let mut by_prompt: HashMap<usize, Vec<&Row>> = HashMap::new();
    for r in &rows {
        by_prompt.entry(r.prompt_index).or_default().push(r);
    }
    let candidates: Vec<&Vec<&Row>> = by_prompt.values().filter(|v| v.len() >= 2).collect();
    if candidates.is_empty() {
        return Err(ApiError::invalid(
            "no prompt has outputs from two variants yet: run the experiment first",
            "experiment",
        ));
    }
    use rand::seq::IndexedRandom;
    let mut rng = rand::rng();
    let rows_of = candidates.choose(&mut rng).expect("not empty");
    let mut two: Vec<&&Row> = rows_of.choose_multiple(&mut rng, 2).collect();
    if rand::random::<bool>() {
        two.reverse();
    }
    let (a, b) = (two[0], two[1]);
    let id = rand::random::<u64>() >> 11;
    state
        .pairs
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            id,
            (e.id, a.prompt_index, a.variant.clone(), b.variant.clone()),
        );
    let prompts = e.spec.prompt_list();
    Ok(Json(json!({
        "pair": id.to_string(),
        "prompt": prompts.get(a.prompt_index),
        "a": a.output,
        "b": b.output,
    })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VoteBody {
    pair: String,
    /// `a`, `b` or `tie`.
    winner: String,
}

/// `POST /api/lab/experiments/{id}/votes`: the vote on a pair; the answer reveals the names.
pub async fn vote(
    State(state): State<AppState>,
    Path(key): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let e = experiment(&state, &key).await?;
    let body: VoteBody = super::body::parse_body(body, state.body_limit)?;
    if !matches!(body.winner.as_str(), "a" | "b" | "tie") {
        return Err(ApiError::invalid("'winner' is a, b or tie", "winner"));
    }
    let pair_id: u64 = body
        .pair
        .parse()
        .map_err(|_| ApiError::invalid("'pair' is not a pair id from /pair", "pair"))?;
    let (experiment_id, prompt_index, a, b) = state
        .pairs
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&pair_id)
        .filter(|p| p.0 == e.id)
        .ok_or_else(|| ApiError::invalid("unknown or already used 'pair'", "pair"))?;
    let vote = Vote {
        prompt_index,
        a,
        b,
        winner: body.winner,
    };
    store(&state)?
        .vote_insert(experiment_id, &vote)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({"recorded": vote})))
}

/// For `model: "experiment:NAME"`: the variant this session is routed to.
pub async fn route(
    state: &AppState,
    model: &str,
    session: &str,
) -> Result<Option<(String, experiments::Variant)>, ApiError> {
    let Some(name) = model.strip_prefix("experiment:") else {
        return Ok(None);
    };
    let e = store(state)?
        .experiment_get(name)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::ModelNotFound(model.to_string()))?;
    let v = e.spec.route(session).clone();
    Ok(Some((format!("{}/{}", e.name, v.name), v)))
}
