//! The lab: how variants of a model compare. `quality` measures a variant's drift from a
//! reference on a prompt set (`prompts`).

pub mod experiments;
pub mod prompts;
pub mod quality;
