//! `/api/models/{id}/quantize` and `/api/lab/*`: quantizations and quality measurements, run as
//! jobs, their results stored.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::errors::ApiError;
use super::AppState;
use crate::engine::quant;
use crate::lab::{prompts, quality};

type Body = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

fn path_of(state: &AppState, id: &str) -> Result<std::path::PathBuf, ApiError> {
    state
        .engines
        .servable()
        .into_iter()
        .find(|m| m.id == id)
        .map(|m| m.path)
        .ok_or_else(|| ApiError::ModelNotFound(id.to_string()))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct QuantizeRequest {
    /// Target types: q8_0, q6_k, q5_k, q4_k, q4_0, ...
    to: Vec<String>,
}

/// `POST /api/models/{id}/quantize` with `{"to": ["q8_0", "q4_k"]}`: a job writing each variant
/// (`ID-q8_0`, ...) next to the model; its result lists them.
pub async fn quantize(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: QuantizeRequest = super::body::parse_body(body, state.body_limit)?;
    if req.to.is_empty() {
        return Err(ApiError::invalid("'to' names no target type", "to"));
    }
    let targets = req
        .to
        .iter()
        .map(|t| quant::parse_target(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::invalid(e.to_string(), "to"))?;
    let src = path_of(&state, &id)?;
    let models_dir = state.engines.library().models_dir().to_path_buf();
    let job = state
        .jobs
        .spawn("quantize", &format!("quantize {id}"), move |job| {
            let mut variants = Vec::new();
            for (i, &to) in targets.iter().enumerate() {
                let (variant, dst) = quant::variant_path(&models_dir, &id, &src, to);
                let share = 1.0 / targets.len() as f64;
                let report = quant::requantize(&src, &dst, to, &mut |f, tensor| {
                    job.progress((i as f64 + f) * share, &format!("{variant}: {tensor}"));
                    !job.cancelled()
                })
                .map_err(|e| e.to_string())?;
                variants.push(json!({"id": variant, "report": report}));
            }
            Ok(json!({"model": id, "variants": variants}))
        });
    Ok(super::jobs::accepted(job))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct QualityRequest {
    reference: String,
    variant: String,
    /// Prompts inline; or `jsonl`, a prompt set as JSONL text; default: the built-in set.
    prompts: Option<Vec<String>>,
    jsonl: Option<String>,
    /// Use only the first N prompts.
    limit: Option<usize>,
    max_tokens: Option<usize>,
}

/// `POST /api/lab/quality`: a job measuring a variant against a reference (KL divergence, top-1
/// agreement, perplexity, speed); the report is stored and listed at `GET /api/lab/quality`.
pub async fn start_quality(
    State(state): State<AppState>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: QualityRequest = super::body::parse_body(body, state.body_limit)?;
    let (set, mut list) = match (req.prompts, req.jsonl) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "give 'prompts' or 'jsonl', not both",
                "prompts",
            ))
        }
        (Some(list), None) if list.is_empty() || list.iter().any(|p| p.trim().is_empty()) => {
            return Err(ApiError::invalid(
                "'prompts' must be non-empty strings",
                "prompts",
            ))
        }
        (Some(list), None) => ("custom".to_string(), list),
        (None, Some(text)) => (
            "custom".to_string(),
            prompts::parse_jsonl(&text).map_err(|e| ApiError::invalid(e, "jsonl"))?,
        ),
        (None, None) => (
            "builtin".to_string(),
            prompts::BUILTIN.iter().map(|s| s.to_string()).collect(),
        ),
    };
    if let Some(n) = req.limit {
        list.truncate(n.max(1));
    }
    let max_tokens = req.max_tokens.unwrap_or(32);
    if !(1..=1024).contains(&max_tokens) {
        return Err(ApiError::invalid(
            "'max_tokens' must be between 1 and 1024",
            "max_tokens",
        ));
    }
    // Both must be installed (or the reference a remote model); they are loaded (or found
    // loaded) as served models, and each one's part runs as a job on its engine thread.
    let remote = state.infer.backends.resolve(&req.reference);
    if remote.is_none() {
        path_of(&state, &req.reference)?;
    }
    path_of(&state, &req.variant)?;
    let backends = state.infer.backends.clone();
    let engines = state.engines.clone();
    let store = state.monitor.store().cloned();
    let runtime = tokio::runtime::Handle::current();
    let title = format!("quality {} vs {}", req.variant, req.reference);
    let job = state.jobs.spawn("quality", &title, move |job| {
        job.progress(0.0, "loading the models");
        let report = runtime.block_on(async {
            let load = |name: String| {
                let engines = engines.clone();
                async move { engines.get(&name).await.map_err(|e| format!("{name}: {e}")) }
            };
            let variant = load(req.variant.clone()).await?;
            let mut progress = |f, m: &str| {
                job.progress(f, m);
                !job.cancelled()
            };
            if let Some((remote, model)) = remote {
                let answer =
                    |prompt: String| remote_answer(&backends, &remote, &model, prompt, max_tokens);
                return crate::lab::quality_remote::compare(
                    (&req.reference, &req.variant),
                    answer,
                    &variant,
                    &set,
                    &list,
                    max_tokens,
                    &mut progress,
                )
                .await
                .map_err(|e| e.to_string());
            }
            let reference = load(req.reference.clone()).await?;
            quality::compare(
                (&req.reference, &req.variant),
                &reference,
                &variant,
                &set,
                &list,
                max_tokens,
                &mut progress,
            )
            .await
            .map_err(|e| e.to_string())
        })?;
        let mut value = json!(report);
        if let Some(store) = store {
            let row = crate::store::lab::QualityRow {
                id: 0,
                finished_at: crate::clock::unix_seconds(),
                reference: report.reference.clone(),
                variant: report.variant.clone(),
                prompt_set: report.prompt_set.clone(),
                report: value.clone(),
            };
            let id = runtime
                .block_on(store.quality_insert(&row))
                .map_err(|e| format!("the report could not be stored: {e}"))?;
            value["id"] = json!(id);
        }
        Ok(value)
    });
    Ok(super::jobs::accepted(job))
}

/// A remote reference's greedy answer to one prompt, as the lab asks it (not in the request
/// log).
async fn remote_answer(
    backends: &crate::infer::backends::Backends,
    remote: &crate::infer::backends::Remote,
    model: &str,
    prompt: String,
    max_tokens: usize,
) -> Result<crate::lab::quality_remote::Answer, String> {
    use crate::infer::{Api, CacheUse, Caller, Input, Request};
    let caller = Caller {
        session: "lab".into(),
        rate_key: "lab".into(),
        cache: CacheUse::default(),
        timeout: std::time::Duration::from_secs(600),
    };
    let messages = vec![crate::engine::template::ChatMessage::new("user", prompt)];
    let mut req = Request::new(Api::Lab, model, Input::Chat(messages), caller);
    req.sampling.temperature = Some(0.0);
    req.sampling.max_tokens = Some(max_tokens as i64);
    let out = crate::infer::backends::wire::outgoing(&req, model).map_err(|e| e.to_string())?;
    let mut streams = remote
        .open(backends.client(), out)
        .await
        .map_err(|e| e.to_string())?;
    let mut events = streams.pop().ok_or("the remote sent no answer")?;
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            crate::scheduler::GenEvent::Text(t) => text.push_str(&t),
            crate::scheduler::GenEvent::Done(usage) => {
                return Ok(crate::lab::quality_remote::Answer {
                    text,
                    tokens: usage.completion_tokens,
                    decode_secs: usage.decode.as_secs_f64(),
                })
            }
            crate::scheduler::GenEvent::Failed(m) => return Err(m),
            _ => {}
        }
    }
    Err("the remote's answer ended early".into())
}

#[derive(serde::Deserialize)]
pub struct ListQuery {
    limit: Option<u64>,
    format: Option<String>,
}

/// `GET /api/lab/quality?limit=&format=json|csv`: stored measurements, newest first.
pub async fn list_quality(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let store = state.database("Lab results need")?;
    let runs = store
        .quality_recent(q.limit.unwrap_or(100).clamp(1, 10_000))
        .await
        .map_err(ApiError::internal)?;
    match q.format.as_deref().unwrap_or("json") {
        "json" => Ok(Json(json!({"runs": runs})).into_response()),
        "csv" => {
            let mut csv = String::from(
                "id,finished_at,reference,variant,prompt_set,prompts,positions,kl_mean,kl_p99,top1_agreement,perplexity_reference,perplexity_variant,reference_tokens_per_second,variant_tokens_per_second\n",
            );
            let quote = super::csv::field;
            for r in &runs {
                let f = |k: &str| r.report[k].to_string();
                csv.push_str(&format!(
                    "{},{:.3},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                    r.id,
                    r.finished_at,
                    quote(&r.reference),
                    quote(&r.variant),
                    quote(&r.prompt_set),
                    f("prompts"),
                    f("positions"),
                    f("kl_mean"),
                    f("kl_p99"),
                    f("top1_agreement"),
                    f("perplexity_reference"),
                    f("perplexity_variant"),
                    f("reference_tokens_per_second"),
                    f("variant_tokens_per_second"),
                ));
            }
            Ok(super::csv::response(csv))
        }
        other => Err(super::csv::bad_format(other)),
    }
}
