//! The one request path, free of wire formats (TGI's `Infer`, our shape). Every API's adapter in
//! `server/` parses its body into a [`Request`], calls [`Infer::start`] (route, plan, run), and
//! renders the [`Event`]s; nothing here knows HTTP or JSON bodies.
//!
//! - `request`: the typed request, its sampling settings and its caller
//! - `plan`: budget, experiment routing, the model, default compression, validation: once
//! - `auto`: `model: "auto"`: the smallest candidate whose rules accept the prompt
//! - `route`: which target answers: an experiment's variant, a fallback chain's links behind
//!   their circuit breakers, a remote backend's model or a local one
//! - `experiment`: an experiment's variant for a request; a canary's share and its judging
//! - `validate`: a request checked for one model into the scheduler's requests
//! - `tools`: tools checked once for every API, the forced-call grammar, the call hold
//! - `stream`: the one loop: timeout, disconnect, held call text, calls read, accounting
//! - `phase`: a choice's `prefill` and `decode` trace spans
//! - `reasoning`: a thinking model's `<think>` text split from its answer as it streams
//! - `backend`: `trait Backend`, the seam to the local scheduler; remote engines are reached
//!   at the typed request (`backends`), since they tokenize for themselves
//! - `backends`: remote OpenAI-compatible engines as `NAME/MODEL`, fallback chains, the circuit
//!   breakers and `auto`'s rules, as the settings give them
//! - `compression`: prompt compression, scored as a job on the scoring model's engine thread
//! - `cache`: the response caches' keys and scopes, replays and recordings
//! - `cached`: answering from the response caches and keeping fresh answers, as allowed
//! - `semantic`: which requests may use the semantic cache, their question and its probe
//! - `embed`: texts to vectors through the embedding cache (`auto`, the semantic cache)
//! - `accounting`: the one record of every finished request
//! - `error`: what the path fails with; each adapter maps it to its own error shape

pub mod accounting;
mod auto;
pub mod backend;
pub mod backends;
mod cache;
mod cached;
mod compression;
pub mod embed;
pub mod error;
mod experiment;
mod phase;
pub mod plan;
pub mod reasoning;
pub mod request;
mod route;
pub mod semantic;
pub mod stream;
pub mod tools;
pub mod validate;

pub use backend::Backend;
pub use error::InferError;
pub use experiment::record_change;
pub use plan::{registry_error, Admission, Infer, Plan, Routing};
pub use request::{Api, CacheSpec, CacheUse, Caller, Input, OneOrMany, Request, Sampling};
pub use stream::{Answer, ChoiceAnswer, Event, Finish, Run, TokenLogprob};
