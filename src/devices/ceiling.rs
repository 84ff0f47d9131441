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

/// One weight type of a model: how many of its weights a token multiplies, and what the engine's
/// kernel for that type does on a prompt-sized product of the type's largest shape.
#[derive(Debug, Clone, Serialize)]
pub struct TypeThroughput {
    pub dtype: String,
    /// Weights of this type in the blocks' matrix products.
    pub block_params: u64,
    /// Weights of this type in the output head (computed once per prompt, once per decoded token).
    pub head_params: u64,
    /// [rows, n, k] of the measured product.
    pub shape: [usize; 3],
    pub flops_per_s: f64,
}

/// A weight type to measure: `(dtype, block_params, head_params, n, k)`.
pub type WeightType = (GgmlDType, u64, u64, usize, usize);

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
    /// The blocks' matrix products at their own types (FLOP/s): each type's throughput weighted
    /// by its share of the weights, as time adds up (a harmonic mean).
    pub matmul_flops_per_s: f64,
    /// The types, most weights first (`Q5_0+Q6_K+Q4_K`).
    pub matmul_dtype: String,
    /// The shape the most common type was measured at.
    pub matmul_shape: [usize; 3],
    /// Every weight type on its own kernel.
    pub matmul_by_type: Vec<TypeThroughput>,
}

impl Ceilings {
    /// Tokens per second the matrix products allow when each token multiplies the block
    /// weights and `1 / head_every` of the head (a prompt of n tokens computes the head once).
    pub fn compute_bound(&self, head_every: usize) -> f64 {
        let secs: f64 = self
            .matmul_by_type
            .iter()
            .map(|t| {
                let weights = t.block_params as f64 + t.head_params as f64 / head_every as f64;
                2.0 * weights / t.flops_per_s
            })
            .sum();
        1.0 / secs
    }
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
            matmul_by_type: self
                .matmul_by_type
                .iter()
                .zip(&other.matmul_by_type)
                .map(|(a, b)| TypeThroughput {
                    flops_per_s: a.flops_per_s.max(b.flops_per_s),
                    ..a.clone()
                })
                .collect(),
            ..self.clone()
        }
    }
}

/// Rows of a measured product: a prompt's worth.
const ROWS: usize = 512;
/// The widest product measured: throughput does not depend on n past a few thousand rows, and
/// a 262k-row output head would take seconds.
const MAX_N: usize = 4096;

/// Measure the ceilings on `device` for a model that reads `weight_bytes` per token, with its
/// weight types (`types`, most weights first; each at its largest `n × k`).
pub fn measure(
    device: &Device,
    weight_bytes: u64,
    types: &[WeightType],
) -> candle_core::Result<Ceilings> {
    if types.is_empty() {
        candle_core::bail!("the model has no weight matrices to measure");
    }
    let (read, source, copy) = if device.is_cpu() {
        (
            read_bandwidth(weight_bytes as usize, 5),
            "measured",
            copy_bandwidth(512 << 20, 3),
        )
    } else {
        accelerator_bandwidth(device, weight_bytes)?
    };
    let mut by_type = Vec::new();
    for &(dtype, block_params, head_params, n, k) in types {
        let n = n.min(MAX_N);
        let flops = if device.is_cpu() {
            matmul_flops(dtype, ROWS, n, k, 3)?
        } else {
            accelerator_matmul_flops(device, dtype, ROWS, n, k)?
        };
        by_type.push(TypeThroughput {
            dtype: crate::engine::gguf::dtype_name(dtype).to_string(),
            block_params,
            head_params,
            shape: [ROWS, n, k],
            flops_per_s: flops,
        });
    }
    let block: f64 = by_type.iter().map(|t| t.block_params as f64).sum();
    let secs: f64 = by_type
        .iter()
        .map(|t| t.block_params as f64 / t.flops_per_s)
        .sum();
    Ok(Ceilings {
        read_bandwidth_bytes_per_s: read,
        bandwidth_source: source,
        copy_bandwidth_bytes_per_s: copy,
        matmul_flops_per_s: if secs > 0.0 {
            block / secs
        } else {
            by_type[0].flops_per_s
        },
        matmul_dtype: by_type
            .iter()
            .map(|t| t.dtype.as_str())
            .collect::<Vec<_>>()
            .join("+"),
        matmul_shape: by_type[0].shape,
        matmul_by_type: by_type,
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
/// the better of the two being what decode can use, or the theoretical peak when higher.
fn accelerator_bandwidth(
    device: &Device,
    weight_bytes: u64,
) -> candle_core::Result<(f64, &'static str, f64)> {
    let elems = (weight_bytes as usize / 4).max(1 << 20);
    let buffer = Tensor::ones(elems, candle_core::DType::F32, device)?;
    let read = best_secs(device, 5, || buffer.sum_all().map(|_| ()))?;
    let copy = best_secs(device, 5, || buffer.copy().map(|_| ()))?;
    let bytes = (elems * 4) as f64;
    let (read_bw, copy_bw) = (bytes / read, 2.0 * bytes / copy);
    let measured = read_bw.max(copy_bw);
    let theoretical = match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => super::nvidia::probe()
            .ok()
            .and_then(|r| r.gpus.into_iter().find(|g| g.index as usize == gpu_id))
            .and_then(|g| g.theoretical_bandwidth_gbs)
            .map(|gbs| gbs * 1e9),
        _ => None,
    };
    Ok(match theoretical {
        Some(t) if t > measured => (t, "theoretical", copy_bw),
        _ => (measured, "measured", copy_bw),
    })
}

/// The quantized matmul's throughput on a GPU.
fn accelerator_matmul_flops(
    device: &Device,
    dtype: GgmlDType,
    rows: usize,
    n: usize,
    k: usize,
) -> candle_core::Result<f64> {
    let w = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu)?;
    let linear =
        candle_core::quantized::QMatMul::from_qtensor(QTensor::quantize_onto(&w, dtype, device)?)?;
    let x = Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu)?.to_device(device)?;
    let mm = best_secs(device, 5, || {
        use candle_core::Module;
        linear.forward(&x).map(|_| ())
    })?;
    Ok(2.0 * (rows * n * k) as f64 / mm)
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

    #[test]
    fn mixed_types_add_up_as_time() {
        let t = |dtype: &str, block_params, head_params, flops_per_s| TypeThroughput {
            dtype: dtype.into(),
            block_params,
            head_params,
            shape: [512, 64, 64],
            flops_per_s,
        };
        let c = Ceilings {
            read_bandwidth_bytes_per_s: 1e9,
            bandwidth_source: "measured",
            copy_bandwidth_bytes_per_s: 1e9,
            matmul_flops_per_s: 0.0,
            matmul_dtype: String::new(),
            matmul_shape: [0; 3],
            // 100 weights at 1000 FLOP/s: 0.2 s a token; the head, 512 weights at 2048 FLOP/s,
            // 0.5 s a token when computed for each one, 1/512 of that in a prompt.
            matmul_by_type: vec![t("Q4_K", 100, 0, 1000.0), t("Q8_0", 0, 512, 2048.0)],
        };
        assert!((c.compute_bound(1) - 1.0 / 0.7).abs() < 1e-9);
        assert!((c.compute_bound(512) - 1.0 / (0.2 + 0.5 / 512.0)).abs() < 1e-9);
    }
}
