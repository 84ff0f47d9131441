//! `model: "experiment:NAME"`: the variant a request runs. A plain experiment sends each
//! session to one variant by a stable hash; one releasing a canary sends the canary exactly its
//! share of requests and judges it by every outcome (`lab::canary`), storing each change of its
//! share with the reason and raising an alert when it rolls back.

use std::sync::Arc;

use super::accounting::Observer;
use super::error::InferError;
use super::plan::Infer;
use crate::lab::canary::{Change, Decision};
use crate::lab::experiments::Variant;
use crate::monitor::Monitor;

/// An experiment's choice for one request.
pub(super) struct Routed {
    /// `EXPERIMENT/VARIANT`, as the request log names it.
    pub label: String,
    pub variant: Variant,
    /// Set when the experiment releases a canary.
    pub observer: Option<Observer>,
}

/// Store a canary's change and announce it: a roll back is an alert.
pub fn record_change(monitor: &Monitor, experiment: (i64, &str), change: Change, rollback: bool) {
    let (id, name) = experiment;
    let now = change.at;
    if rollback {
        monitor.alerts().fire(
            crate::monitor::alerts::Finding {
                rule: "canary_rollback",
                subject: name.to_string(),
                severity: "critical",
                message: format!(
                    "canary of experiment `{name}` rolled back: {}",
                    change.reason
                ),
                value: 0.0,
                threshold: 0.0,
            },
            now,
        );
    } else {
        monitor
            .alerts()
            .resolve_where("canary_rollback", now, |s| s != name);
    }
    tracing::warn!(
        experiment = name,
        share = change.share,
        "canary: {}",
        change.reason
    );
    if let Some(store) = monitor.store().cloned() {
        tokio::spawn(async move {
            if let Err(e) = store.canary_change_put(id, &change).await {
                tracing::warn!(error = %e, "canary change not stored");
            }
        });
    }
}

impl Infer {
    /// The database experiments live in; without it there are none.
    fn experiment_store(&self) -> Result<&crate::store::Store, InferError> {
        self.monitor.store().ok_or_else(|| InferError::Unavailable {
            message: "Experiments need the database, which could not be opened".into(),
            code: "no_database",
        })
    }

    /// Make `e`'s canary live at its last stored change; a canary never started is started
    /// now, at its first step, and that is stored too.
    pub async fn take_up_canary(
        &self,
        e: &crate::store::experiments::Experiment,
    ) -> Result<(), InferError> {
        let Some(canary) = &e.spec.canary else {
            return Ok(());
        };
        if self.canaries.is_live(&e.name, canary) {
            return Ok(());
        }
        let store = self.experiment_store()?;
        let changes = store
            .canary_changes(e.id)
            .await
            .map_err(InferError::internal)?;
        self.canaries.ensure(&e.name, canary, changes.last());
        if changes.is_empty() {
            let start = Change {
                at: crate::clock::unix_seconds(),
                share: canary.steps[0],
                status: crate::lab::canary::Status::Running,
                reason: format!("started at {:.0}% of traffic", canary.steps[0] * 100.0),
            };
            store
                .canary_change_put(e.id, &start)
                .await
                .map_err(InferError::internal)?;
        }
        Ok(())
    }

    /// For `model: "experiment:NAME"`: the variant this request runs.
    pub(super) async fn route(
        &self,
        model: &str,
        session: &str,
    ) -> Result<Option<Routed>, InferError> {
        let Some(name) = model.strip_prefix("experiment:") else {
            return Ok(None);
        };
        let store = self.experiment_store()?;
        let e = store
            .experiment_get(name)
            .await
            .map_err(InferError::internal)?
            .ok_or_else(|| InferError::ModelNotFound(model.to_string()))?;
        let Some(canary) = &e.spec.canary else {
            let v = e.spec.route(session).clone();
            return Ok(Some(Routed {
                label: format!("{}/{}", e.name, v.name),
                variant: v,
                observer: None,
            }));
        };
        self.take_up_canary(&e).await?;
        let on_canary = self.canaries.pick(&e.name);
        let v = if on_canary {
            e.spec.variants.iter().find(|v| v.name == canary.variant)
        } else {
            Some(e.spec.route_among(session, Some(&canary.variant)))
        }
        .cloned()
        .ok_or_else(|| InferError::internal("the canary's variant is gone"))?;
        let (canaries, monitor, id, name) = (
            self.canaries.clone(),
            self.monitor.clone(),
            e.id,
            e.name.clone(),
        );
        let observer: Observer =
            Arc::new(
                move |ok, ms| match canaries.observe(&name, on_canary, ok, ms) {
                    Some(Decision::RollBack(c)) => record_change(&monitor, (id, &name), c, true),
                    Some(Decision::Step(c)) => record_change(&monitor, (id, &name), c, false),
                    None => {}
                },
            );
        Ok(Some(Routed {
            label: format!("{}/{}", e.name, v.name),
            variant: v,
            observer: Some(observer),
        }))
    }
}
