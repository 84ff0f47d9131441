//! Lantern: serve and tune language models on your own machine.
//!
//! The map:
//! - [`config`]: the settings every command shares (flags, `LANTERN_*` variables, defaults).
//! - [`library`]: models on disk — the manifest of known models, what is installed, `pull`.
//! - [`engine`]: everything that touches tensors. A GGUF file is opened and validated
//!   ([`engine::gguf`]), its tokenizer ([`engine::tokenizer`]) and chat template
//!   ([`engine::template`]) are built from its metadata, and the weights become a
//!   [`engine::models::Transformer`] that runs a *flattened batch*: the new tokens of several
//!   sequences in one matrix, each sequence with its own [`engine::kv::KvCache`]. Linear layers
//!   use Lantern's SIMD kernels ([`engine::qmatmul`]).
//! - [`scheduler`]: the only place requests meet the engine: `EngineHandle::schedule` takes a
//!   validated request and returns a stream of events; one engine thread owns the model.
//! - [`infer`]: the one request path: every wire format's typed request is planned once
//!   (budget, routing, model, compression, validation, response cache) and run through one
//!   event loop (timeout, disconnect, tool calls, accounting) on a [`infer::Backend`] or a
//!   remote OpenAI-compatible engine ([`infer::backends`]: `NAME/MODEL`, fallback chains, circuit
//!   breakers, `auto`).
//! - [`server`]: axum routes and wire formats only (OpenAI, Responses, Ollama, Anthropic): each
//!   parses its body into an [`infer::Request`] and renders the events in its own shape.
//! - The path of one generation ([`engine::generate`]): chat messages → template → token ids →
//!   chunked prefill → decode loop (forward, [`engine::sampler`], [`engine::stops`]) → text
//!   streamed out whole, with its figures.

pub mod cache;
pub mod clock;
pub mod compress;
pub mod config;
pub mod devices;
pub mod engine;
pub mod infer;
pub mod jobs;
pub mod lab;
pub mod library;
pub mod monitor;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod telemetry;

pub use config::Config;
pub use engine::ChatModel;
pub use server::start::{Launch, Server};
