//! Prompt compression on the one path. Pruning scores every token with a forward pass: that
//! pass runs on the scoring model's engine thread, as a job queued with its requests, so only
//! the scheduler ever runs a loaded model.

use super::error::InferError;
use super::plan::{registry_error, Infer};
use super::request::{Input, Request};
use super::validate::Applied;
use crate::scheduler::EngineHandle;

impl Infer {
    /// The engine of the model a compression scores with, when it names one.
    async fn scorer(
        &self,
        spec: &crate::compress::Spec,
    ) -> Result<Option<EngineHandle>, InferError> {
        let Some(name) = spec.scorer.as_deref() else {
            return Ok(None);
        };
        match self.engines.get(name).await.map_err(registry_error) {
            Ok(engine) => Ok(Some(engine)),
            Err(InferError::ModelNotFound(m)) => Err(InferError::invalid(
                format!("compression scorer `{m}` is not an installed model"),
                "compression",
            )),
            Err(e) => Err(e),
        }
    }

    /// Compress `req`'s input as its `compression` asks, for `engine`'s model: messages as a
    /// whole, prompts each on their own (the report adds them up). Scored on the scorer's engine
    /// (the request's own model where the spec names none).
    pub async fn compress(
        &self,
        engine: &EngineHandle,
        req: &mut Request,
    ) -> Result<Option<Applied>, InferError> {
        let Some(spec) = req.sampling.compression.take() else {
            return Ok(None);
        };
        spec.validate()
            .map_err(|e| InferError::invalid(e, "compression"))?;
        let scorer = self.scorer(&spec).await?.unwrap_or_else(|| engine.clone());
        let target = engine.model.clone();
        let input = std::mem::replace(&mut req.input, Input::Prompts(Vec::new()));
        let job = spec.clone();
        let compressed = scorer
            .exclusive(move |scoring| match input {
                Input::Chat(messages) => {
                    crate::compress::compress_chat(&target, Some(scoring), messages, &job)
                        .map(|(m, report)| (Input::Chat(m), report))
                }
                Input::Prompts(texts) => {
                    let mut out = Vec::with_capacity(texts.len());
                    let mut total: Option<crate::compress::Report> = None;
                    for text in texts {
                        let (t, r) =
                            crate::compress::compress_text(&target, Some(scoring), &text, &job)?;
                        out.push(t);
                        total = Some(match total {
                            None => r,
                            Some(mut a) => {
                                a.original_tokens += r.original_tokens;
                                a.compressed_tokens += r.compressed_tokens;
                                a.ratio =
                                    a.compressed_tokens as f64 / a.original_tokens.max(1) as f64;
                                a
                            }
                        });
                    }
                    let report = total.ok_or_else(|| "`prompt` must not be empty".to_string())?;
                    Ok((Input::Prompts(out), report))
                }
            })
            .await
            .map_err(InferError::internal)?;
        let (input, report) = compressed.map_err(|e| InferError::invalid(e, "compression"))?;
        req.input = input;
        Ok(Some(Applied { spec, report }))
    }
}
