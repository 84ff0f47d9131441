//! What the hardware allows, measured on the spot: memory bandwidth (reading a buffer the size
//! of the weights, as decode does each token; and a large copy) and matrix-multiply throughput at
//! the weights' own type. Benchmarks are reported as fractions of these ceilings.

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::Serialize;

use crate::engine::device::on_compute_pool;
use crate::engine::qmatmul::QLinear;

/// Bytes per second reading `bytes` of memory on every compute thread, the best of `passes`
/// (after one pass that faults the pages in). A working set that fits in cache reads at cache
/// speed, as a model that small decodes at cache speed too.
pub fn read_bandwidth(bytes: usize, passes: usize) -> f64 {
    let words = (bytes / 8).max(1 << 12);
    let data: Vec<u64> = (0..words as u64).collect();
    let chunk = (words / (rayon::current_num_threads().max(1) * 8)).max(1 << 12);
    let mut best = f64::INFINITY;
    let mut sink = 0u64;
    for pass in 0..=passes {
        let start = Instant::now();
        sink ^= on_compute_pool(|| {
            data.par_chunks(chunk)
                .map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
                .reduce(|| 0, u64::wrapping_add)
        });
        let secs = start.elapsed().as_secs_f64();
        if pass > 0 {
            best = best.min(secs);
        }
    }
    std::hint::black_box(sink);
    (words * 8) as f64 / best
}

/// Bytes per second copying `bytes` (counting bytes read and written), the best of `passes`.
pub fn copy_bandwidth(bytes: usize, passes: usize) -> f64 {
    let words = (bytes / 8).max(1 << 12);
    let src: Vec<u64> = (0..words as u64).collect();
    let mut dst = vec![0u64; words];
    let chunk = (words / (rayon::current_num_threads().max(1) * 8)).max(1 << 12);
    let mut best = f64::INFINITY;
    for pass in 0..=passes {
        let start = Instant::now();
        on_compute_pool(|| {
            dst.par_chunks_mut(chunk)
                .zip(src.par_chunks(chunk))
                .for_each(|(d, s)| d.copy_from_slice(s))
        });
        let secs = start.elapsed().as_secs_f64();
        if pass > 0 {
            best = best.min(secs);
        }
    }
    std::hint::black_box(&dst);
    (2 * words * 8) as f64 / best
}

/// Floating-point operations per second of a (rows × k) · (k × n) product with the weights in
/// `dtype`, through the engine's own linear layer, the best of `passes`.
pub fn matmul_flops(
    dtype: GgmlDType,
    rows: usize,
    n: usize,
    k: usize,
    passes: usize,
) -> candle_core::Result<f64> {
    let w = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu)?;
    let linear = QLinear::new(QTensor::quantize(&w, dtype)?)?;
    let x = Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu)?;
    let mut best = f64::INFINITY;
    for pass in 0..=passes {
        let start = Instant::now();
        let y = on_compute_pool(|| linear.forward(&x))?;
        std::hint::black_box(&y);
        if pass > 0 {
            best = best.min(start.elapsed().as_secs_f64());
        }
    }
    Ok(2.0 * (rows * n * k) as f64 / best)
}

/// The ceilings a benchmark is judged against.
#[derive(Debug, Clone, Serialize)]
pub struct Ceilings {
    /// Reading a buffer the size of the weights read per token (bytes/s). On a GPU, the higher
    /// of that and the memory's theoretical peak from NVML: candle's reduction and copy kernels
    /// reach well under the peak, and a ceiling must not be lower than what the hardware allows.
    pub read_bandwidth_bytes_per_s: f64,
    /// What `read_bandwidth_bytes_per_s` is: `measured` or `theoretical`.
    pub bandwidth_source: &'static str,
    /// Copying 512 MiB, bytes read and written (bytes/s): the main-memory figure.
    pub copy_bandwidth_bytes_per_s: f64,
    /// The model's weight type in a prompt-sized product (FLOP/s).
    pub matmul_flops_per_s: f64,
    pub matmul_dtype: String,
    pub matmul_shape: [usize; 3],
}

impl Ceilings {
    /// The higher of each figure: the hardware allows at least what it was ever seen to do.
    pub fn best_with(&self, other: &Ceilings) -> Ceilings {
        Ceilings {
            read_bandwidth_bytes_per_s: self
                .read_bandwidth_bytes_per_s
                .max(other.read_bandwidth_bytes_per_s),
            copy_bandwidth_bytes_per_s: self
                .copy_bandwidth_bytes_per_s
                .max(other.copy_bandwidth_bytes_per_s),
            bandwidth_source: if other.read_bandwidth_bytes_per_s > self.read_bandwidth_bytes_per_s
            {
                other.bandwidth_source
            } else {
                self.bandwidth_source
            },
            matmul_flops_per_s: self.matmul_flops_per_s.max(other.matmul_flops_per_s),
            ..self.clone()
        }
    }
}

/// Measure the ceilings on `device` for a model that reads `weight_bytes` per token with weights
/// of `dtype` and its largest projection `n × k`.
pub fn measure(
    device: &Device,
    weight_bytes: u64,
    dtype: GgmlDType,
    n: usize,
    k: usize,
) -> candle_core::Result<Ceilings> {
    let rows = 512;
    if !device.is_cpu() {
        return measure_accelerator(device, weight_bytes, dtype, rows, n, k);
    }
    Ok(Ceilings {
        read_bandwidth_bytes_per_s: read_bandwidth(weight_bytes as usize, 5),
        bandwidth_source: "measured",
        copy_bandwidth_bytes_per_s: copy_bandwidth(512 << 20, 3),
        matmul_flops_per_s: matmul_flops(dtype, rows, n, k, 3)?,
        matmul_dtype: crate::engine::gguf::dtype_name(dtype).to_string(),
        matmul_shape: [rows, n, k],
    })
}

/// The best of `passes` timings of `f`, each ended by a device synchronization.
fn best_secs(
    device: &Device,
    passes: usize,
    mut f: impl FnMut() -> candle_core::Result<()>,
) -> candle_core::Result<f64> {
    f()?; // warm-up: allocations, kernel loads
    device.synchronize()?;
    let mut best = f64::INFINITY;
    for _ in 0..passes {
        let start = Instant::now();
        f()?;
        device.synchronize()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// On a GPU: device memory read (a reduction over a weights-sized buffer) and copy bandwidth,
/// the better of the two being what decode can use; and the quantized matmul's throughput.
fn measure_accelerator(
    device: &Device,
    weight_bytes: u64,
    dtype: GgmlDType,
    rows: usize,
    n: usize,
    k: usize,
) -> candle_core::Result<Ceilings> {
    let elems = (weight_bytes as usize / 4).max(1 << 20);
    let buffer = Tensor::ones(elems, candle_core::DType::F32, device)?;
    let read = best_secs(device, 5, || buffer.sum_all().map(|_| ()))?;
    let copy = best_secs(device, 5, || buffer.copy().map(|_| ()))?;
    let bytes = (elems * 4) as f64;
    let (read_bw, copy_bw) = (bytes / read, 2.0 * bytes / copy);
    let w = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu)?;
    let linear =
        candle_core::quantized::QMatMul::from_qtensor(QTensor::quantize_onto(&w, dtype, device)?)?;
    let x = Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu)?.to_device(device)?;
    let mm = best_secs(device, 5, || {
        use candle_core::Module;
        linear.forward(&x).map(|_| ())
    })?;
    let measured = read_bw.max(copy_bw);
    let theoretical = match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => super::nvidia::probe()
            .ok()
            .and_then(|r| r.gpus.into_iter().find(|g| g.index as usize == gpu_id))
            .and_then(|g| g.theoretical_bandwidth_gbs)
            .map(|gbs| gbs * 1e9),
        _ => None,
    };
    let (bandwidth, source) = match theoretical {
        Some(t) if t > measured => (t, "theoretical"),
        _ => (measured, "measured"),
    };
    Ok(Ceilings {
        read_bandwidth_bytes_per_s: bandwidth,
        bandwidth_source: source,
        copy_bandwidth_bytes_per_s: copy_bw,
        matmul_flops_per_s: 2.0 * (rows * n * k) as f64 / mm,
        matmul_dtype: crate::engine::gguf::dtype_name(dtype).to_string(),
        matmul_shape: [rows, n, k],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_are_positive_and_finite() {
        for bw in [read_bandwidth(8 << 20, 2), copy_bandwidth(8 << 20, 2)] {
            assert!(bw.is_finite() && bw > 1e8, "{bw}");
        }
        let flops = matmul_flops(GgmlDType::Q8_0, 16, 64, 256, 2).unwrap();
        assert!(flops.is_finite() && flops > 1e6, "{flops}");
    }
}
