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
use crate::lab::runner::{Experiment as Run, Generator, Lab, Pending};
use crate::scheduler::GenEvent;
use crate::store::experiments::Experiment;
use crate::store::Store;

type Body = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

/// A pair shown for a blind vote: (experiment, prompt, variant a, variant b).
type Shown = (i64, usize, String, String);

/// The pairs handed out, by their opaque id.
#[derive(Clone, Default)]
pub struct Pairs(Arc<Mutex<HashMap<u64, Shown>>>);

pub(super) fn store(state: &AppState) -> Result<&Store, ApiError> {
    state.database("Experiments need")
}

pub(super) async fn experiment(state: &AppState, key: &str) -> Result<Experiment, ApiError> {
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
    let backends = &state.infer.backends;
    let served = |m: &str| {
        installed.iter().any(|i| i == m)
            || backends.resolve(m).is_some()
            || backends.chain(m).is_some()
    };
    if let Some(v) = spec.variants.iter().find(|v| !served(&v.model)) {
        return Err(ApiError::invalid(
            format!(
                "variant `{}`: the model `{}` is not installed nor a remote model or chain",
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
    // A canary starts now, at its first step (stored with that reason).
    if spec.canary.is_some() {
        let e = experiment(&state, &spec.name).await?;
        state.infer.take_up_canary(&e).await?;
    }
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

/// The lab's answers from the inference path's validation and the scheduler, as an API request
/// would run (recorded by the lab, not the request log).
struct LabGenerator(AppState);

impl LabGenerator {
    async fn answer(
        &self,
        variant: &experiments::Variant,
        prompt: &str,
        max_tokens: usize,
        partial: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(String, crate::scheduler::Usage), String> {
        let state = &self.0;
        let caller = crate::infer::Caller {
            session: "lab".into(),
            rate_key: "lab".into(),
            cache: crate::infer::CacheUse::default(),
            timeout: state.settings.request_timeout(),
        };
        let messages = vec![crate::engine::template::ChatMessage::new("user", prompt)];
        let input = crate::infer::Input::Chat(messages);
        let mut req =
            crate::infer::Request::new(crate::infer::Api::Lab, &*variant.model, input, caller);
        req.sampling.max_tokens = Some(max_tokens as i64);
        req.sampling.temperature = Some(variant.temperature.unwrap_or(0.0));
        req.sampling.seed = Some(1);
        req.sampling.compression = variant.compression.clone();
        let backends = &state.infer.backends;
        let mut events = if let Some((remote, model)) = backends.resolve(&variant.model) {
            // A remote variant: the same request, answered by its engine.
            let out =
                crate::infer::backends::wire::outgoing(&req, &model).map_err(|e| e.to_string())?;
            let mut streams = remote
                .open(backends.client(), out)
                .await
                .map_err(|e| e.to_string())?;
            streams.pop().ok_or("nothing to run")?
        } else {
            let engine = state
                .engines
                .get(&variant.model)
                .await
                .map_err(|e| e.to_string())?;
            state
                .infer
                .compress(&engine, &mut req)
                .await
                .map_err(|e| e.to_string())?;
            let plan = crate::infer::validate::validate(&engine, req).map_err(|e| e.to_string())?;
            let request = plan.requests.into_iter().next().ok_or("nothing to run")?;
            engine.schedule(request).map_err(|e| e.to_string())?
        };
        let mut text = String::new();
        while let Some(event) = events.recv().await {
            match event {
                GenEvent::Text(t) => {
                    text.push_str(&t);
                    partial(&text);
                }
                GenEvent::Done(usage) => return Ok((text, usage)),
                GenEvent::Failed(m) => return Err(m),
                GenEvent::Token { .. } | GenEvent::NamedToken { .. } | GenEvent::Calls(_) => {}
            }
        }
        Err("the engine stopped".into())
    }
}

impl Generator for LabGenerator {
    fn generate<'a>(
        &'a self,
        variant: &'a experiments::Variant,
        prompt: &'a str,
        max_tokens: usize,
        partial: &'a mut (dyn FnMut(&str) + Send),
    ) -> Pending<'a, Result<(String, crate::scheduler::Usage), String>> {
        Box::pin(self.answer(variant, prompt, max_tokens, partial))
    }
}

/// `POST /api/lab/experiments/{id}/run`: a job running every prompt on every variant not yet
/// done (`lab::runner`).
pub async fn run(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let e = experiment(&state, &key).await?;
    let db = store(&state)?.clone();
    let runtime = tokio::runtime::Handle::current();
    let title = format!("experiment {}", e.name);
    let embedders = state.embedders.clone();
    let generator = LabGenerator(state.clone());
    let job = state.jobs.clone().spawn("experiment", &title, move |job| {
        let lab = Lab {
            generator: &generator,
            embedders: &embedders,
            db: &db,
        };
        let experiment = Run {
            id: e.id,
            name: &e.name,
            spec: &e.spec,
        };
        runtime.block_on(lab.run(&experiment, job))
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
