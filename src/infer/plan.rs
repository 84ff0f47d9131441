//! Planning: everything before a request runs, once for every API: the session's budget, an
//! experiment's routing, the model (loaded if need be), the session's default compression,
//! validation against the chosen model. Which target answers is `route`'s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::accounting::Charge;
use super::error::InferError;
use super::request::{Caller, Request};
use super::validate::{validate, Validated};
use crate::scheduler::{EngineHandle, Registry, RegistryError};

/// The one inference path: what planning and running a request reach.
#[derive(Clone)]
pub struct Infer {
    pub engines: Registry,
    pub responses: Arc<crate::cache::ResponseCache>,
    /// Answers to questions that mean the same, for requests that ask.
    pub semantic: Arc<crate::cache::SemanticCache>,
    /// Sessions' default `cache` (the semantic threshold).
    pub cache_defaults: Arc<crate::store::session_defaults::SessionDefaults<super::CacheSpec>>,
    pub monitor: crate::monitor::Monitor,
    /// Sessions' default prompt compression.
    pub compression: Arc<crate::store::session_defaults::SessionDefaults<crate::compress::Spec>>,
    /// Charges finished requests' tokens to their rate-limit key.
    pub charge: Charge,
    /// Remote engines, fallback chains and the circuit breakers.
    pub backends: super::backends::Backends,
    /// Experiments' canary releases: their shares and windows.
    pub canaries: Arc<crate::lab::canary::Canaries>,
    /// Embedding models and their cache: `auto` compares prompts with its examples.
    pub embedders: crate::scheduler::embedder::Embedders,
    pub embeddings: Arc<crate::cache::EmbeddingCache>,
}

/// What a session under a daily budget is told with its answer.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    /// Tokens left today.
    pub remaining: Option<u64>,
    /// Past the warning threshold: what to say.
    pub warning: Option<String>,
}

/// A request checked and ready to run.
pub struct Plan {
    pub engine: EngineHandle,
    pub validated: Validated,
    pub caller: Caller,
    /// What routing decided before planning: the budget's word, the experiment's variant.
    pub routing: Routing,
    /// Time this request spent waiting for its model to load (zero when it was loaded).
    pub load: Duration,
    /// The semantic cache's look-up, when the request asked for it.
    pub semantic: Option<super::cache::SemanticProbe>,
}

/// What routing settled for a request before any target plans it.
#[derive(Clone)]
pub struct Routing {
    pub admission: Admission,
    /// The experiment variant that serves it (`EXPERIMENT/VARIANT`).
    pub variant: Option<String>,
    /// Told each finished request's outcome (a canary release judges its variant by them).
    pub observer: Option<super::accounting::Observer>,
    /// How routing chose the target (`auto`'s rule, a chain's failed links), with the reason.
    pub route: Option<String>,
    /// When the request arrived: its clock.
    pub began: Instant,
}

/// A registry failure as the client sees it.
pub fn registry_error(e: RegistryError) -> InferError {
    match e {
        RegistryError::NotInstalled(model) => InferError::ModelNotFound(model),
        RegistryError::InsufficientMemory { .. } => InferError::Unavailable {
            message: e.to_string(),
            code: "insufficient_memory",
        },
        RegistryError::Busy(_) => InferError::Overloaded {
            message: format!("Server busy: {e}"),
            retry_after: 5,
        },
        RegistryError::Load { .. } => InferError::internal(e),
    }
}

impl Infer {
    /// Let `session` in unless its daily budget is spent.
    pub fn admit(&self, session: &str) -> Result<Admission, InferError> {
        let now = crate::clock::unix_seconds();
        let status = match self.monitor.budgets().check(session, now) {
            Ok(Some(status)) => status,
            Ok(None) => return Ok(Admission::default()),
            Err(spent) => {
                return Err(InferError::BudgetExhausted {
                    message: spent.exhausted_message(),
                    retry_after: (spent.resets_at - now).ceil().max(1.0) as u64,
                })
            }
        };
        let warn = status.fraction() >= self.monitor.settings().alerts.budget_warning;
        Ok(Admission {
            remaining: Some(status.daily_tokens.saturating_sub(status.used_today)),
            warning: warn.then(|| status.warning()),
        })
    }

    /// The engine of a model, loaded if need be, and how long the load took.
    pub async fn engine(&self, model: &str) -> Result<(EngineHandle, Duration), InferError> {
        let was_loaded = self.engines.loaded().iter().any(|m| m.id == model);
        let began = Instant::now();
        let engine = self.engines.get(model).await.map_err(registry_error)?;
        Ok((
            engine,
            if was_loaded {
                Duration::ZERO
            } else {
                began.elapsed()
            },
        ))
    }

    /// The prompt's tokens as the model named would see them (template and tools applied),
    /// without running it or charging the session.
    pub async fn count_tokens(&self, req: Request) -> Result<usize, InferError> {
        let (engine, _) = self.engine(&req.model).await?;
        let validated = validate(&engine, req)?;
        Ok(validated.requests.first().map_or(0, |r| r.prompt.len()))
    }

    /// Everything before running `req` on the local model it names, once routing chose it:
    /// the model (loaded if need be), the session's default compression, validation.
    pub(super) async fn plan_local(
        &self,
        mut req: Request,
        routing: Routing,
    ) -> Result<Plan, InferError> {
        let session = req.caller.session.clone();
        let (engine, load) = self.engine(&req.model).await?;
        req.sampling.compression = req
            .sampling
            .compression
            .or_else(|| self.compression.get(&session));
        let ask = self.semantic_ask(&req)?;
        let compression = self.compress(&engine, &mut req).await?;
        let caller = req.caller.clone();
        let mut validated = tracing::info_span!("validate").in_scope(|| validate(&engine, req))?;
        validated.compression = compression;
        let semantic = match ask {
            Some(ask) => self.semantic_probe(ask, &engine, &validated).await,
            None => None,
        };
        Ok(Plan {
            engine,
            validated,
            caller,
            routing,
            load,
            semantic,
        })
    }
}
