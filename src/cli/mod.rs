//! Subcommands with more than a few lines each.

pub mod bench;
pub mod lab;
