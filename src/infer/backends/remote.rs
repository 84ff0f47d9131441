//! One remote engine: its spec and key, the requests it may have in flight, its last health
//! check; and opening a request on it. A request counts as opened once the remote answered 2xx
//! and sent its first chunk within the backend's timeout: until then nothing reached the client,
//! so a failure can still fall back to the next target of a chain.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};

use super::keys::Key;
use super::spec::BackendSpec;
use super::sse::{Demux, Frame, Frames};
use super::wire::Outgoing;
use crate::infer::backend::Generation;
use crate::infer::InferError;

/// The last health check's outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    /// None until the first check.
    pub up: Option<bool>,
    pub checked_at: Option<f64>,
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
    /// What its `/models` lists.
    pub models: Vec<String>,
}

pub struct Remote {
    pub spec: BackendSpec,
    key: Option<Key>,
    slots: Option<Arc<Semaphore>>,
    health: Mutex<(Health, Option<Instant>)>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("name", &self.spec.name)
            .finish()
    }
}

fn unavailable(name: &str, what: impl std::fmt::Display, code: &'static str) -> InferError {
    InferError::Unavailable {
        message: format!("backend `{name}` {what}"),
        code,
    }
}

fn timed_out(name: &str, limit: Duration) -> InferError {
    let what = format!("did not answer within {:.1} s", limit.as_secs_f64());
    unavailable(name, what, "backend_timeout")
}

/// A non-2xx answer as this server's error: the client's own mistakes (400, 422) are passed on
/// as such; anything else is the backend failing, which a chain may answer elsewhere.
fn status_error(name: &str, status: reqwest::StatusCode, body: &str) -> InferError {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/message").or_else(|| v.get("error")))
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| body.chars().take(300).collect());
    match status.as_u16() {
        400 | 422 => InferError::Invalid {
            message,
            param: parsed
                .as_ref()
                .and_then(|v| v.pointer("/error/param"))
                .and_then(|p| p.as_str())
                .map(|p| p.to_string().into()),
            code: None,
        },
        429 => InferError::Overloaded {
            message: format!("backend `{name}` is busy: {message}"),
            retry_after: 1,
        },
        s => unavailable(name, format!("answered {s}: {message}"), "backend_error"),
    }
}

impl Remote {
    pub fn new(spec: BackendSpec, key: Option<Key>) -> Self {
        let slots =
            (spec.max_concurrent > 0).then(|| Arc::new(Semaphore::new(spec.max_concurrent)));
        Self {
            spec,
            key,
            slots,
            health: Mutex::default(),
        }
    }

    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    pub fn key(&self) -> Option<&Key> {
        self.key.as_ref()
    }

    pub fn serves(&self, model: &str) -> bool {
        self.spec.models.iter().any(|m| m == model)
    }

    pub fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.slots
            .as_ref()
            .map_or(0, |s| self.spec.max_concurrent - s.available_permits())
    }

    fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let mut r = client.request(method, format!("{}{path}", self.spec.base()));
        // The remote engine's spans join this request's trace.
        if let Some(parent) = crate::telemetry::context::traceparent() {
            r = r.header("traceparent", parent);
        }
        match &self.key {
            Some(k) => r.header(reqwest::header::AUTHORIZATION, k.bearer()),
            None => r,
        }
    }

    /// One of its in-flight slots, held until the request ends; none free is a busy backend.
    fn slot(&self) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, InferError> {
        let Some(slots) = &self.slots else {
            return Ok(None);
        };
        let permit = slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| InferError::Overloaded {
                message: format!(
                    "backend `{}` has its {} requests in flight; retry shortly",
                    self.spec.name, self.spec.max_concurrent
                ),
                retry_after: 1,
            })?;
        Ok(Some(permit))
    }

    /// Whether a check is due (never checked, or its interval passed).
    pub fn check_due(&self) -> bool {
        let guard = self.health.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .1
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(self.spec.health_interval))
    }

    /// `GET /models` within the timeout: up, how fast, what it lists.
    pub async fn check(&self, client: &reqwest::Client) -> Health {
        let began = Instant::now();
        // Marked at the start, so a slow check is not started again while it runs.
        self.health.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(began);
        let limit = Duration::from_secs_f64(self.spec.timeout.min(10.0));
        let answer = tokio::time::timeout(limit, async {
            let r = self
                .request(client, reqwest::Method::GET, "/models")
                .send()
                .await
                .map_err(|e| format!("cannot be reached: {e}"))?;
            let status = r.status();
            let body = r.text().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("answered {status}"));
            }
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            Ok(v["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect::<Vec<_>>())
        })
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "did not answer within {:.1} s",
                limit.as_secs_f64()
            ))
        });
        let health = Health {
            up: Some(answer.is_ok()),
            checked_at: Some(crate::clock::unix_seconds()),
            latency_ms: Some(began.elapsed().as_secs_f64() * 1e3),
            error: answer.as_ref().err().cloned(),
            models: answer.unwrap_or_default(),
        };
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) =
            (health.clone(), Some(Instant::now()));
        health
    }

    /// `POST /embeddings` of `inputs` (texts, or token ids of the remote's own tokenizer), within
    /// the timeout: the vectors in input order and the prompt tokens it counted.
    pub async fn embed(
        &self,
        client: &reqwest::Client,
        model: &str,
        inputs: serde_json::Value,
    ) -> Result<(Vec<Vec<f32>>, usize), InferError> {
        let name = self.spec.name.as_str();
        let _permit = self.slot()?;
        let limit = Duration::from_secs_f64(self.spec.timeout);
        let body = serde_json::json!({"model": model, "input": inputs, "encoding_format": "float"});
        let request = self
            .request(client, reqwest::Method::POST, "/embeddings")
            .json(&body);
        let answer = tokio::time::timeout(limit, async {
            let r = request.send().await.map_err(|e| {
                unavailable(
                    name,
                    format!("cannot be reached: {e}"),
                    "backend_unreachable",
                )
            })?;
            let status = r.status();
            let text = r
                .text()
                .await
                .map_err(|e| unavailable(name, format!("broke off: {e}"), "backend_error"))?;
            if !status.is_success() {
                return Err(status_error(name, status, &text));
            }
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| unavailable(name, format!("sent no JSON: {e}"), "backend_error"))
        })
        .await
        .map_err(|_| timed_out(name, limit))??;
        let mut data: Vec<(u64, Vec<f32>)> = answer["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                let v = d["embedding"].as_array().into_iter().flatten();
                (
                    d["index"].as_u64().unwrap_or(0),
                    v.filter_map(|x| x.as_f64()).map(|x| x as f32).collect(),
                )
            })
            .collect();
        data.sort_by_key(|(i, _)| *i);
        let tokens = answer["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize;
        Ok((data.into_iter().map(|(_, v)| v).collect(), tokens))
    }

    /// Send the request and wait, within the timeout, for the answer's status and first chunk;
    /// then its chunks flow into one event stream per choice. Dropping every stream closes the
    /// connection, which cancels the request on the remote engine.
    pub async fn open(
        &self,
        client: &reqwest::Client,
        out: Outgoing,
    ) -> Result<Vec<Generation>, InferError> {
        let name = self.spec.name.as_str();
        let permit = self.slot()?;
        let limit = Duration::from_secs_f64(self.spec.timeout);
        let sent = Instant::now();
        let request = self
            .request(client, reqwest::Method::POST, out.path)
            .json(&out.body);
        let first = tokio::time::timeout(limit, async {
            let response = request.send().await.map_err(|e| {
                unavailable(
                    name,
                    format!("cannot be reached: {e}"),
                    "backend_unreachable",
                )
            })?;
            let status = response.status();
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                return Err(status_error(name, status, &body));
            }
            let mut bytes = response.bytes_stream();
            let mut frames = Frames::default();
            loop {
                match bytes.next().await {
                    Some(Ok(b)) => {
                        let got = frames.push(&b);
                        if !got.is_empty() {
                            return Ok((bytes, frames, got));
                        }
                    }
                    Some(Err(e)) => {
                        return Err(unavailable(
                            name,
                            format!("broke off: {e}"),
                            "backend_error",
                        ))
                    }
                    None => {
                        return Err(unavailable(
                            name,
                            "closed the answer before any chunk",
                            "backend_error",
                        ))
                    }
                }
            }
        })
        .await
        .map_err(|_| timed_out(name, limit))??;
        let (mut bytes, mut frames, got) = first;
        let (txs, rxs): (Vec<_>, Vec<_>) =
            (0..out.choices).map(|_| mpsc::unbounded_channel()).unzip();
        let prompts = match &out.body["prompt"] {
            serde_json::Value::Array(p) => p.len(),
            _ => 1,
        };
        let watchers = txs.clone();
        let mut demux = Demux::new(out.chat, prompts, sent, txs);
        let mut done = false;
        for frame in got {
            match frame {
                Frame::Data(d) => demux
                    .chunk(&d)
                    .map_err(|e| unavailable(name, e, "backend_error"))?,
                Frame::Done => done = true,
            }
        }
        tokio::spawn(async move {
            let _permit = permit;
            let gone = futures_util::future::join_all(watchers.iter().map(|t| t.closed()));
            tokio::pin!(gone);
            let mut error = None;
            while !done {
                let next = tokio::select! {
                    b = bytes.next() => b,
                    _ = &mut gone => return,
                };
                match next {
                    Some(Ok(b)) => {
                        for frame in frames.push(&b) {
                            match frame {
                                Frame::Data(d) => {
                                    if let Err(e) = demux.chunk(&d) {
                                        error = Some(e);
                                        done = true;
                                    }
                                }
                                Frame::Done => done = true,
                            }
                        }
                    }
                    Some(Err(e)) => {
                        error = Some(format!("the remote engine's answer broke off: {e}"));
                        break;
                    }
                    None => break,
                }
            }
            demux.end(error);
        });
        Ok(rxs)
    }
}
