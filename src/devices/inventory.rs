//! What compute this machine has: the CPU (model, cores, threads, frequency, SIMD features the
//! engine's kernels can use, RAM, load) and its GPUs, with what this build can run on.

use serde::Serialize;

use super::nvidia::{self, NvidiaReport};

/// The CPU and memory as of now.
#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    pub model: String,
    pub vendor: String,
    pub architecture: &'static str,
    pub physical_cores: Option<usize>,
    pub threads: usize,
    /// Current frequency of the first core (the OS's figure).
    pub frequency_mhz: u64,
    /// SIMD features detected at run time that matter to the kernels.
    pub simd: Vec<&'static str>,
    /// SIMD features this binary was compiled to assume (candle's kernels pick theirs at build).
    pub compiled_simd: Vec<&'static str>,
    /// Busy share of all cores since the last refresh, in percent.
    pub usage_percent: f32,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    /// Threads the engine computes on.
    pub engine_threads: usize,
}

/// GPUs and why a list may be empty.
#[derive(Debug, Clone, Serialize)]
pub struct Gpus {
    pub nvidia: Option<NvidiaReport>,
    /// Set when no NVIDIA GPU could be listed: what was missing.
    pub nvidia_unavailable: Option<String>,
    /// Apple GPU through candle's Metal backend (macOS builds with `--features metal`).
    pub metal: Option<String>,
}

/// Backends compiled into this binary.
#[derive(Debug, Clone, Serialize)]
pub struct Backends {
    pub cpu: bool,
    pub cuda: bool,
    pub metal: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub cpu: Cpu,
    pub gpus: Gpus,
    pub backends: Backends,
}

/// SIMD features the CPU has, detected now.
pub fn simd_features() -> Vec<&'static str> {
    let mut out = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! detect {
            ($($f:tt),*) => { $( if std::arch::is_x86_feature_detected!($f) { out.push($f); } )* };
        }
        detect!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avx512bf16",
            "avxvnni"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! detect {
            ($($f:tt),*) => { $( if std::arch::is_aarch64_feature_detected!($f) { out.push($f); } )* };
        }
        detect!("neon", "dotprod", "i8mm", "fp16", "bf16", "sve");
    }
    out
}

/// SIMD features the compiler was told it may assume.
pub fn compiled_simd() -> Vec<&'static str> {
    let mut out = Vec::new();
    macro_rules! compiled {
        ($($f:tt),*) => { $( if cfg!(target_feature = $f) { out.push($f); } )* };
    }
    compiled!("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "neon");
    out
}

/// Reads the CPU and memory; keep the `System` to get meaningful usage on the next refresh.
pub struct CpuProbe {
    system: Option<sysinfo::System>,
}

impl Default for CpuProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuProbe {
    pub fn new() -> Self {
        let system = sysinfo::System::new().ok().map(|mut s| {
            s.refresh_cpu_all();
            s.refresh_memory();
            s
        });
        Self { system }
    }

    pub fn read(&mut self) -> Cpu {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (mut model, mut vendor, mut frequency_mhz, mut usage, mut total, mut available) =
            (String::from("unknown"), String::new(), 0, 0.0, 0, 0);
        if let Some(s) = self.system.as_mut() {
            s.refresh_cpu_all();
            s.refresh_memory();
            if let Some(c) = s.cpus().first() {
                model = c.brand().trim().to_string();
                vendor = c.vendor_id().to_string();
                frequency_mhz = c.frequency();
            }
            usage = s.global_cpu_usage();
            total = s.total_memory();
            available = s.available_memory();
        }
        Cpu {
            model,
            vendor,
            architecture: std::env::consts::ARCH,
            physical_cores: sysinfo::System::physical_core_count().ok(),
            threads,
            frequency_mhz,
            simd: simd_features(),
            compiled_simd: compiled_simd(),
            usage_percent: usage,
            memory_total_bytes: total,
            memory_available_bytes: available,
            engine_threads: crate::engine::device::cpu_threads(),
        }
    }
}

/// GPUs as of now.
pub fn gpus() -> Gpus {
    let (nvidia, nvidia_unavailable) = match nvidia::probe() {
        Ok(r) if r.gpus.is_empty() => (Some(r), Some("the NVIDIA driver lists no GPU".into())),
        Ok(r) => (Some(r), None),
        Err(why) => (None, Some(why)),
    };
    Gpus {
        nvidia,
        nvidia_unavailable,
        metal: metal_device(),
    }
}

fn metal_device() -> Option<String> {
    if !candle_core::utils::metal_is_available() {
        return None;
    }
    candle_core::Device::new_metal(0)
        .ok()
        .map(|_| "Apple GPU (Metal device 0)".to_string())
}

pub fn backends() -> Backends {
    Backends {
        cpu: true,
        cuda: candle_core::utils::cuda_is_available(),
        metal: candle_core::utils::metal_is_available(),
    }
}

/// The whole inventory, read now.
pub fn inventory(cpu: &mut CpuProbe) -> Inventory {
    Inventory {
        cpu: cpu.read(),
        gpus: gpus(),
        backends: backends(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inventory_reads_without_nvidia_libraries() {
        let inv = inventory(&mut CpuProbe::new());
        assert!(inv.cpu.threads >= 1);
        assert!(inv.cpu.memory_total_bytes > 0);
        assert!(inv.backends.cpu);
        // Either NVML answered or the reason it did not is given; nothing panicked.
        assert!(inv.gpus.nvidia.is_some() || inv.gpus.nvidia_unavailable.is_some());
        if inv.gpus.nvidia.is_none() {
            let why = inv.gpus.nvidia_unavailable.unwrap();
            assert!(why.contains("NVIDIA driver not found"), "{why}");
        }
        #[cfg(target_arch = "x86_64")]
        assert!(
            inv.cpu.compiled_simd.contains(&"avx2"),
            "built for x86-64-v3"
        );
    }
}
