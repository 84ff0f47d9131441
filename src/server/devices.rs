//! `/api/devices`, `/api/bench` and `/api/jobs`: the hardware, benchmarks run as jobs, and their
//! stored history.

use axum::extract::{Path, Query, State};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::AppState;
use crate::devices::bench::{self, Options};
use crate::devices::inventory::{inventory, CpuProbe};

/// `GET /api/devices`: CPU, memory, GPUs (or why none are listed) and compiled backends.
pub async fn devices() -> Json<Value> {
    let inv = tokio::task::spawn_blocking(|| {
        let mut probe = CpuProbe::new();
        // CPU usage is a difference between two reads.
        std::thread::sleep(std::time::Duration::from_millis(200));
        inventory(&mut probe)
    })
    .await
    .expect("the inventory does not panic");
    Json(json!(inv))
}

/// `GET /api/devices/stream`: the inventory once a second (live telemetry) as `devices` events.
pub async fn devices_stream() -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(4);
    std::thread::spawn(move || {
        let mut probe = CpuProbe::new();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            let inv = inventory(&mut probe);
            let event = Event::default()
                .event("devices")
                .data(json!(inv).to_string());
            if tx.blocking_send(event).is_err() {
                break; // the client went away
            }
        }
    });
    super::sse::events(rx)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchRequest {
    /// An installed model, or `synthetic:tiny|1b|3b|8b`.
    model: String,
    /// Weight type of a synthetic model (default q4_k).
    quantization: Option<String>,
    /// The short run (fewer and shorter repetitions).
    #[serde(default)]
    quick: bool,
    reps: Option<usize>,
    n_prompt: Option<usize>,
    n_gen: Option<usize>,
    batches: Option<Vec<usize>>,
}

/// `POST /api/bench`: start a benchmark job; 202 with the job's id.
pub async fn start_bench(
    State(state): State<AppState>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let req: BenchRequest = super::body::parse_body(body, state.body_limit)?;
    let options = Options::asked(req.quick, req.reps, req.n_prompt, req.n_gen, req.batches);
    let path = if req.model.starts_with("synthetic:") {
        let shape = req.model.trim_start_matches("synthetic:");
        if crate::devices::synthetic::shape(shape).is_none() {
            return Err(ApiError::invalid(
                format!("Unknown synthetic shape `{shape}`: use tiny, 1b, 3b or 8b"),
                "model",
            ));
        }
        if let Some(q) = &req.quantization {
            if crate::devices::synthetic::parse_dtype(q).is_none() {
                return Err(ApiError::invalid(
                    format!("Unknown quantization `{q}`"),
                    "quantization",
                ));
            }
        }
        None
    } else {
        let found = state
            .engines
            .servable()
            .into_iter()
            .find(|m| m.id == req.model)
            .ok_or_else(|| ApiError::ModelNotFound(req.model.clone()))?;
        Some(found.path)
    };
    let device = state.engines.config().device.clone();
    let store = state.monitor.store().cloned();
    let runtime = tokio::runtime::Handle::current();
    let scratch = std::env::temp_dir();
    let title = format!("benchmark {}", req.model);
    let id = state.jobs.spawn("bench", &title, move |job| {
        let mut observer = job;
        let target = bench::Target {
            model: &req.model,
            path: path.as_deref(),
            quantization: req.quantization.as_deref(),
            keep_synthetic: None,
        };
        let result = bench::run_model(&target, &scratch, &device, None, options, &mut observer)
            .map_err(|e| e.to_string())?;
        let mut value = json!(result);
        if let Some(store) = store {
            let id = runtime
                .block_on(store.bench_save(&result))
                .map_err(|e| format!("the result could not be stored: {e}"))?;
            value["id"] = json!(id);
        }
        Ok(value)
    });
    Ok(super::jobs::accepted(id))
}

fn history(state: &AppState) -> Result<&crate::store::Store, ApiError> {
    state.database("Benchmark history needs")
}

#[derive(serde::Deserialize)]
pub struct HistoryQuery {
    limit: Option<u64>,
    format: Option<String>,
}

/// `GET /api/bench?limit=&format=json|csv`: stored runs, newest first.
pub async fn list_bench(
    State(state): State<AppState>,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid(
            "'limit' must be between 1 and 10000",
            "limit",
        ));
    }
    let runs = history(&state)?
        .bench_recent(limit)
        .await
        .map_err(ApiError::internal)?;
    match q.format.as_deref().unwrap_or("json") {
        "json" => Ok(Json(json!({"runs": runs})).into_response()),
        "csv" => {
            let mut csv = String::from(
                "id,finished_at,model,quantization,device,test,tokens_per_second,sd,roofline_tokens_per_second,roofline_fraction\n",
            );
            for r in &runs {
                for s in r.result["speeds"].as_array().into_iter().flatten() {
                    csv.push_str(&format!(
                        "{},{:.3},{},{},{},{},{},{},{},{}\n",
                        r.id,
                        r.finished_at,
                        super::csv::field(&r.model),
                        super::csv::field(&r.quantization),
                        r.device,
                        s["test"].as_str().unwrap_or(""),
                        s["tokens_per_second"]["mean"],
                        s["tokens_per_second"]["sd"],
                        s["roofline_tokens_per_second"],
                        s["roofline_fraction"],
                    ));
                }
            }
            Ok(super::csv::response(csv))
        }
        other => Err(super::csv::bad_format(other)),
    }
}

async fn run_of(state: &AppState, id: i64) -> Result<crate::store::bench::BenchRow, ApiError> {
    history(state)?
        .bench_get(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::RouteNotFound(format!("/api/bench/{id} (no such run)")))
}

pub async fn get_bench(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(run_of(&state, id).await?)))
}

#[derive(serde::Deserialize)]
pub struct CompareQuery {
    a: i64,
    b: i64,
}

/// `GET /api/bench/compare?a=ID&b=ID`: each test both runs have, with b's speed over a's.
pub async fn compare_bench(
    State(state): State<AppState>,
    Query(q): Query<CompareQuery>,
) -> Result<Json<Value>, ApiError> {
    let (a, b) = (run_of(&state, q.a).await?, run_of(&state, q.b).await?);
    let speeds = |r: &crate::store::bench::BenchRow| -> Vec<(String, f64, f64)> {
        r.result["speeds"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                (
                    s["test"].as_str().unwrap_or("").to_string(),
                    s["tokens_per_second"]["mean"].as_f64().unwrap_or(0.0),
                    s["roofline_fraction"].as_f64().unwrap_or(0.0),
                )
            })
            .collect()
    };
    let of_b = speeds(&b);
    let tests: Vec<Value> = speeds(&a)
        .into_iter()
        .filter_map(|(test, a_tps, a_roof)| {
            let (_, b_tps, b_roof) = of_b.iter().find(|(t, ..)| *t == test)?;
            Some(json!({
                "test": test,
                "a_tokens_per_second": a_tps,
                "b_tokens_per_second": b_tps,
                "ratio": if a_tps > 0.0 { b_tps / a_tps } else { f64::NAN },
                "a_roofline_fraction": a_roof,
                "b_roofline_fraction": b_roof,
            }))
        })
        .collect();
    let label = |r: &crate::store::bench::BenchRow| {
        json!({"id": r.id, "model": r.model, "quantization": r.quantization, "device": r.device,
               "software": r.software, "finished_at": r.finished_at})
    };
    Ok(Json(
        json!({"a": label(&a), "b": label(&b), "tests": tests}),
    ))
}
