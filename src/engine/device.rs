//! Which compute device a model runs on, and what this build can use.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use candle_core::Device;

/// A device as users name it: `cpu`, `cuda:N` or `metal`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceRequest {
    Cpu,
    Cuda(usize),
    Metal,
}

impl std::str::FromStr for DeviceRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "metal" => Ok(Self::Metal),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device `{s}` (cpu, cuda:N, metal)")),
        }
    }
}

/// Open the asked device; when it is absent or not compiled in, fall back to the CPU and say why.
pub fn open(request: &DeviceRequest) -> (Device, Option<String>) {
    let attempt = match request {
        DeviceRequest::Cpu => return (Device::Cpu, None),
        DeviceRequest::Cuda(n) if candle_core::utils::cuda_is_available() => {
            Device::new_cuda(*n).map_err(|e| e.to_string())
        }
        DeviceRequest::Cuda(_) => {
            Err("this build has no CUDA support (build with --features cuda)".into())
        }
        DeviceRequest::Metal if candle_core::utils::metal_is_available() => {
            Device::new_metal(0).map_err(|e| e.to_string())
        }
        DeviceRequest::Metal => {
            Err("this build has no Metal support (build with --features metal)".into())
        }
    };
    match attempt {
        Ok(d) => (d, None),
        Err(why) => (
            Device::Cpu,
            Some(format!("{request:?} unavailable: {why}; using the CPU")),
        ),
    }
}

static COMPUTE_THREADS: AtomicUsize = AtomicUsize::new(0);
static COMPUTE_POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();

/// Use `threads` worker threads for Lantern's and candle's CPU kernels (0: one per core).
/// Takes effect if called before the first forward pass.
pub fn set_cpu_threads(threads: usize) {
    let threads = if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    COMPUTE_THREADS.store(threads, Ordering::Relaxed);
    // candle sizes every matmul's work by RAYON_NUM_THREADS; unset, it parses /proc/cpuinfo
    // on each call (twice per layer in a decode step: a tenth of a batched step's time).
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    // candle runs elementwise ops on its own pool, whose idle workers spin 25,000 times before
    // parking, on the very cores this pool computes on. A short spin: pp128 on 2 cores went from
    // 1,047 to 1,260 tok/s (decode unchanged). A user's own setting wins.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000");
    }
}

/// Run CPU compute on the engine's thread pool. A forward pass calls into the pool a hundred
/// times; from a pool thread each call runs at once, while from any other thread each one
/// would be a hand-off through a futex (14% of a decode profile).
pub fn on_compute_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let pool = COMPUTE_POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(COMPUTE_THREADS.load(Ordering::Relaxed))
            .thread_name(|i| format!("lantern-compute-{i}"))
            .build()
            .expect("a thread pool can be built")
    });
    if pool.current_thread_index().is_some() {
        f()
    } else {
        pool.install(f)
    }
}

/// Worker threads of the compute pool.
pub fn cpu_threads() -> usize {
    on_compute_pool(rayon::current_num_threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_falls_back() {
        assert_eq!(
            "cuda:1".parse::<DeviceRequest>(),
            Ok(DeviceRequest::Cuda(1))
        );
        assert!("tpu".parse::<DeviceRequest>().is_err());
        if !candle_core::utils::cuda_is_available() {
            let (d, why) = open(&DeviceRequest::Cuda(0));
            assert!(d.is_cpu());
            assert!(why.unwrap().contains("using the CPU"));
        }
    }
}
