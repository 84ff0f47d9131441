//! Answering from the response caches, and keeping fresh answers in them, as each request
//! allows (`Cache-Control`, its `cache.semantic`): the same request from the exact cache, a
//! question this similar from the semantic cache.

use super::accounting::CacheHit;
use super::backend::Generation;
use super::cache::{replay, Keep, SemanticProbe};
use super::plan::Infer;
use crate::cache::responses::ResponseKey;
use crate::scheduler::GenEvent;

impl Infer {
    /// A request's streams replayed from the response cache, when it holds them and the
    /// request lets it answer.
    pub(super) fn cached(
        &self,
        key: Option<&ResponseKey>,
        caller: &super::Caller,
    ) -> Option<Vec<Generation>> {
        let cache = &self.responses;
        let key = key.filter(|_| cache.enabled())?;
        if !caller.cache.read {
            cache.note_bypass();
            return None;
        }
        cache
            .get(key)
            .map(|recorded| replay(&recorded.choices, None))
    }

    /// The answer to a question this similar, replayed with this request's prompt size.
    pub(super) fn semantic_hit(
        &self,
        probe: Option<&SemanticProbe>,
        caller: &super::Caller,
        prompt_tokens: usize,
    ) -> Option<(Vec<Generation>, CacheHit)> {
        let p = probe.filter(|_| caller.cache.read)?;
        let hit = self.semantic.lookup(&p.scope, &p.vector, p.threshold)?;
        tracing::info!(
            similarity = hit.similarity,
            kept_question = hit.question.as_str(),
            "semantic cache hit"
        );
        let similarity = hit.similarity;
        Some((
            replay(&hit.choices, Some(prompt_tokens)),
            CacheHit::Semantic { similarity },
        ))
    }

    /// Where a fresh answer is kept as it finishes, as the request allows: the response cache
    /// under its key, the semantic cache under its question.
    pub(super) fn keep(
        &self,
        key: Option<ResponseKey>,
        caller: &super::Caller,
        semantic: Option<SemanticProbe>,
        model: String,
    ) -> Option<Keep> {
        let write = caller.cache.write;
        let exact = key
            .filter(|_| write && self.responses.enabled())
            .map(|k| (k, self.responses.clone()));
        let semantic = semantic
            .filter(|_| write)
            .map(|p| (p, self.semantic.clone()));
        if exact.is_none() && semantic.is_none() {
            return None;
        }
        Some(Box::new(move |choices: Vec<Vec<GenEvent>>| {
            if let Some((p, cache)) = semantic {
                cache.put(p.scope, &model, &p.question, p.vector, choices.clone());
            }
            if let Some((k, cache)) = exact {
                cache.put(k, choices);
            }
        }))
    }
}
