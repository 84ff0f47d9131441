//! An engine's settings and the live figures it publishes (`/api/engine`).

use std::time::Instant;

use serde::Serialize;

use super::batch::Budgets;
use super::prefix::PrefixStats;
use super::KeepAlive;
use crate::engine::kv_rows::KvType;
use crate::engine::models::ModelInfo;
use crate::engine::ChatModel;

/// How one engine batches and how much memory it may hold.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Sequence, step and prefill limits; `kv_tokens` is derived from `kv_memory` per model.
    pub budgets: Budgets,
    /// Bytes of KV cache for running sequences.
    pub kv_memory: usize,
    /// Bytes of KV kept for prefix reuse.
    pub prefix_cache_memory: usize,
    /// Requests that may wait beyond the running set before new ones get 429.
    pub max_waiting: usize,
    /// Draft tokens by prompt lookup (`speculate`).
    pub prompt_lookup: bool,
    /// How the KV cache stores rows on the CPU.
    pub kv_type: KvType,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            budgets: Budgets::default(),
            kv_memory: 1 << 30,
            prefix_cache_memory: 512 << 20,
            max_waiting: 64,
            prompt_lookup: true,
            kv_type: KvType::F16,
        }
    }
}

/// Bytes of KV cache per token position: keys and values of every layer as the cache stores
/// them (f16 or q8_0 blocks of 34 bytes per 32 values on the CPU, f32 on an accelerator).
pub fn kv_bytes_per_token(info: &ModelInfo, kind: KvType, on_cpu: bool) -> usize {
    let values = info.n_layers * 2 * info.n_kv_heads * info.head_dim;
    match (on_cpu, kind) {
        (false, _) => values * 4,
        (true, KvType::Q8_0) if kind.fits(info.head_dim) => values * 34 / 32,
        (true, _) => values * 2,
    }
}

/// The engine's live figures, for `/api/engine`.
#[derive(Debug, Clone, Serialize)]
pub struct EngineStatus {
    pub running: usize,
    pub waiting: usize,
    /// KV positions held by sequences, and the most they may hold.
    pub kv_tokens: usize,
    pub kv_tokens_budget: usize,
    /// The cache's storage on the CPU: f16 or q8_0.
    pub kv_type: KvType,
    /// Bytes the sequences' KV caches hold (capacity grows by doubling).
    pub kv_bytes: usize,
    pub prefix_cache: PrefixStats,
    pub steps: u64,
    pub preemptions: u64,
    pub completed: u64,
    pub cancelled: u64,
    pub failed: u64,
    pub generated_tokens: u64,
    /// Tokens drafted (by prompt lookup and the draft model), and how many of them the sampler
    /// confirmed.
    pub drafted_tokens: u64,
    pub accepted_tokens: u64,
    /// The draft model's share of those (`--draft`); None without one.
    pub draft_model: Option<DraftFigures>,
    pub budgets: BudgetsView,
    /// When the engine last became idle (None: busy).
    #[serde(skip)]
    pub idle_since: Option<Instant>,
    /// The keep-alive the last finished request asked for.
    #[serde(skip)]
    pub requested_keep_alive: Option<KeepAlive>,
    /// The thread ended.
    pub stopped: bool,
}

/// What a draft model drafted, and how much of it stood.
#[derive(Debug, Clone, Serialize)]
pub struct DraftFigures {
    pub name: String,
    pub drafted_tokens: u64,
    pub accepted_tokens: u64,
}

/// `Budgets` as `/api/engine` shows them.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BudgetsView {
    pub max_seqs: usize,
    pub max_step_tokens: usize,
    pub prefill_chunk: usize,
}

impl EngineStatus {
    pub(crate) fn new(config: &EngineConfig, model: &ChatModel, draft: Option<&str>) -> Self {
        let b = config.budgets;
        Self {
            running: 0,
            waiting: 0,
            kv_tokens: 0,
            kv_tokens_budget: kv_budget(config, model),
            kv_type: config.kv_type,
            kv_bytes: 0,
            prefix_cache: PrefixStats {
                max_bytes: config.prefix_cache_memory,
                ..Default::default()
            },
            steps: 0,
            preemptions: 0,
            completed: 0,
            cancelled: 0,
            failed: 0,
            generated_tokens: 0,
            drafted_tokens: 0,
            accepted_tokens: 0,
            draft_model: draft.map(|name| DraftFigures {
                name: name.to_string(),
                drafted_tokens: 0,
                accepted_tokens: 0,
            }),
            budgets: BudgetsView {
                max_seqs: b.max_seqs,
                max_step_tokens: b.max_step_tokens,
                prefill_chunk: b.prefill_chunk,
            },
            idle_since: Some(Instant::now()),
            requested_keep_alive: None,
            stopped: false,
        }
    }
}

pub(crate) fn kv_budget(config: &EngineConfig, model: &ChatModel) -> usize {
    let t = &model.transformer;
    let per_token = kv_bytes_per_token(&t.info, config.kv_type, t.device().is_cpu());
    (config.kv_memory / per_token.max(1)).max(1)
}
