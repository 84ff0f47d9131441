//! The lab: how variants of a model compare. `quality` measures a variant's drift from a
//! reference on a prompt set (`prompts`); `experiments` holds A/B experiments' variants, routing
//! and statistics, and `runner` runs one (its answers from the inference path, handed in).

pub mod canary;
pub mod experiments;
pub mod prompts;
pub mod quality;
pub mod quality_remote;
pub mod runner;
