//! The machine's compute devices and how fast models run on them: `inventory` lists the CPU and
//! GPUs (NVIDIA through NVML, loaded at run time), `ceiling` measures what the hardware allows,
//! `synthetic` writes models of real shapes with random weights, and `bench` runs llama-bench's
//! tests and reports each result against its ceiling.

pub mod bench;
pub mod ceiling;
pub mod inventory;
pub mod nvidia;
pub mod speculative;
pub mod stat;
pub mod synthetic;
pub mod table;
