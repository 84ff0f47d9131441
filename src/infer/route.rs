//! Which target answers a request: an experiment's variant, a fallback chain's links in order
//! (each behind its circuit breaker), a remote backend's model or a local one. A link that fails
//! before anything reached the client (load failure, 5xx, timeout, queue full, open circuit)
//! passes the request to the next; the answer names the target that served it.

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use super::accounting::{Account, CacheHit};
use super::backends::Remote;
use super::cache::recording_if;
use super::cache::remote_key;
use super::error::InferError;
use super::plan::{Infer, Routing};
use super::request::Request;
use super::stream::{Run, Shape};

/// One place a request may be answered.
enum Target {
    Local(String),
    /// A remote backend, the model as it names it, and as clients name it (`NAME/MODEL`).
    Remote(Arc<Remote>, String, String),
}

impl Target {
    fn label(&self) -> &str {
        match self {
            Self::Local(m) => m,
            Self::Remote(_, _, label) => label,
        }
    }
}

/// Whether a failure may be answered by the next link: the target could not take the request
/// (not the request being wrong).
fn passes_on(e: &InferError) -> bool {
    matches!(
        e,
        InferError::Unavailable { .. }
            | InferError::Overloaded { .. }
            | InferError::Internal { .. }
            | InferError::ModelNotFound(_)
    )
}

/// Whether a failure says the target is unwell (what the breaker counts): a busy queue is not.
fn counts_against(e: &InferError) -> bool {
    matches!(
        e,
        InferError::Unavailable { .. } | InferError::Internal { .. }
    )
}

impl Infer {
    fn target(&self, model: &str) -> Target {
        match self.backends.resolve(model) {
            Some((remote, name)) => Target::Remote(remote, name, model.to_string()),
            None => Target::Local(model.to_string()),
        }
    }

    /// Plan and run: what every adapter does with its typed request.
    pub async fn start(&self, req: Request) -> Result<Run, InferError> {
        let request = tracing::Span::current();
        request.record("session", req.caller.session.as_str());
        request.record("model", req.model.as_str());
        let infer = tracing::info_span!("infer", model = req.model.as_str());
        self.start_routed(req).instrument(infer).await
    }

    async fn start_routed(&self, mut req: Request) -> Result<Run, InferError> {
        let began = Instant::now();
        let admission = self.admit(&req.caller.session)?;
        // `experiment:NAME` runs this session's variant: its model, and its compression and
        // temperature where the request names none.
        let routed = self.route(&req.model, &req.caller.session).await?;
        if let Some(r) = &routed {
            let v = &r.variant;
            req.model = v.model.clone();
            req.sampling.compression = req.sampling.compression.or_else(|| v.compression.clone());
            req.sampling.temperature = req.sampling.temperature.or(v.temperature);
        }
        // `auto` picks the smallest candidate whose rules accept the prompt.
        let route = if req.model == "auto" {
            let choice = self.auto(&req).await?;
            tracing::info!(model = choice.model.as_str(), "auto: {}", choice.reason);
            req.model = choice.model;
            Some(format!("auto: {}", choice.reason))
        } else {
            None
        };
        let routing = Routing {
            admission,
            variant: routed.as_ref().map(|r| r.label.clone()),
            observer: routed.and_then(|r| r.observer),
            route,
            began,
        };
        let result = self.answer(req, &routing).await;
        // A request that no target took is an outcome too (a canary answering 500).
        if let (Err(e), Some(observe)) = (&result, &routing.observer) {
            if passes_on(e) || matches!(e, InferError::Timeout(_)) {
                observe(false, began.elapsed().as_secs_f64() * 1e3);
            }
        }
        result
    }

    /// The first target of the model (or of its chain) that takes the request.
    async fn answer(&self, req: Request, routing: &Routing) -> Result<Run, InferError> {
        let chain = self.backends.chain(&req.model);
        let targets: Vec<Target> = match &chain {
            Some(links) => links.iter().map(|l| self.target(l)).collect(),
            None => vec![self.target(&req.model)],
        };
        let breakers = self.backends.breakers();
        let mut last = None;
        let mut failed: Vec<String> = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            let label = target.label();
            let guarded = chain.is_some() || matches!(target, Target::Remote(..));
            if guarded && !breakers.allow(label) {
                last = Some(InferError::Unavailable {
                    message: format!("`{label}` failed repeatedly; its circuit is open"),
                    code: "circuit_open",
                });
                failed.push(format!("{label} passed over (circuit open)"));
                continue;
            }
            let mut attempt = req.clone();
            attempt.model = label.to_string();
            let mut routing = routing.clone();
            if !failed.is_empty() {
                let note = format!(
                    "chain {}: {}; {label} answered",
                    req.model,
                    failed.join("; ")
                );
                routing.route = Some(match routing.route {
                    Some(r) => format!("{r}; {note}"),
                    None => note,
                });
            }
            let routing = &routing;
            let started = match target {
                Target::Local(_) => {
                    let plan = tracing::info_span!("plan", target = label);
                    match self
                        .plan_local(attempt, routing.clone())
                        .instrument(plan)
                        .await
                    {
                        Ok(plan) => self.run(plan),
                        Err(e) => Err(e),
                    }
                }
                Target::Remote(remote, model, label) => {
                    let span = tracing::info_span!("remote", target = label.as_str());
                    self.run_remote(remote, model, label, attempt, routing)
                        .instrument(span)
                        .await
                }
            };
            match started {
                Ok(mut run) => {
                    if guarded {
                        breakers.success(label);
                    }
                    if chain.is_some() && i > 0 {
                        self.monitor.metrics().fallback(&req.model, label);
                    }
                    if chain.is_some() || routing.route.is_some() || guarded {
                        run.served_by = Some(label.to_string());
                    }
                    return Ok(run);
                }
                Err(e) => {
                    if guarded && counts_against(&e) && breakers.failure(label) {
                        self.monitor.metrics().circuit_opened(label);
                        tracing::warn!(target = label, "circuit opened: {e}");
                    }
                    if chain.is_none() || !passes_on(&e) {
                        return Err(e);
                    }
                    tracing::info!(target = label, "falling back: {e}");
                    failed.push(format!("{label} failed ({e})"));
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| InferError::ModelNotFound(req.model.clone())))
    }

    /// Open `req` on a remote backend (or replay it from the response cache) and run it
    /// through the one loop.
    async fn run_remote(
        &self,
        remote: &Arc<Remote>,
        model: &str,
        label: &str,
        req: Request,
        routing: &Routing,
    ) -> Result<Run, InferError> {
        let outgoing = super::backends::wire::outgoing(&req, model)?;
        let n = req.sampling.n.unwrap_or(1).max(1) as usize;
        let logprobs = req.logprobs.is_some();
        let key = super::backends::wire::deterministic(&req)
            .then(|| remote_key(remote.spec.base(), &outgoing.body));
        let account = Account {
            session: req.caller.session.clone(),
            rate_key: req.caller.rate_key.clone(),
            charge: self.charge.clone(),
            monitor: self.monitor.clone(),
            model: label.to_string(),
            api: req.api,
            started: routing.began,
            variant: routing.variant.clone(),
            compression: None,
            observer: routing.observer.clone(),
            route: routing.route.clone(),
        };
        let (streams, from_cache) = match self.cached(key.as_ref(), &req.caller) {
            Some(replayed) => (replayed, Some(CacheHit::Exact)),
            None => {
                let opened = remote.open(self.backends.client(), outgoing).await?;
                let keep = self.keep(key, &req.caller, None, label.to_string());
                (recording_if(opened, keep), None)
            }
        };
        let shape = Shape {
            n,
            logprobs,
            tools: None,
            stops: false,
            from_cache,
            // A remote engine splits its own reasoning out (vLLM's reasoning parsers).
            thinking: Default::default(),
        };
        let events = self.launch(streams, account, shape, None, req.caller.timeout);
        Ok(Run {
            events,
            model: label.to_string(),
            n,
            logprobs,
            prompt_tokens: 0,
            compression: None,
            admission: routing.admission.clone(),
            load: Default::default(),
            began: routing.began,
            served_by: Some(label.to_string()),
            route: routing.route.clone(),
            cache_hit: from_cache,
        })
    }
}
