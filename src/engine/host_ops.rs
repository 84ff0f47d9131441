//! Element-wise work of a CPU forward pass, on the engine's thread pool.
//!
//! candle runs its element-wise ops either on the calling thread or on a barrier pool of its
//! own, whose workers share the cores with the engine's pool: a residual add of a 512-token
//! prompt then ran on one core while the other waited, or on a second set of threads. Here they
//! run on the threads a forward pass holds (`pass_threads`), in chunks big enough to pay for the
//! hand-off.

use crate::engine::pass_threads::for_each_chunk_mut;
use candle_core::{DType, Result, Storage, Tensor};

/// Elements per task: below this, splitting costs more than it saves.
pub const CHUNK: usize = 1 << 14;

/// Run `f` on `x`'s values as one f32 slice without copying them, when `x` is a contiguous f32
/// tensor in CPU memory; None otherwise.
pub fn with_f32<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if x.dtype() != DType::F32 {
        return None;
    }
    let (storage, layout) = x.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    match &*storage {
        Storage::Cpu(cpu) => cpu.as_slice::<f32>().ok().map(|s| f(&s[start..end])),
        _ => None,
    }
}

/// `x`'s values as plain f32 rows: borrowed from a contiguous CPU f32 tensor, else converted.
pub fn to_f32_vec(x: &Tensor) -> Result<Vec<f32>> {
    if let Some(v) = with_f32(x, copy) {
        return Ok(v);
    }
    x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

/// A copy of `src`, in parallel for large slices (a single memcpy of a prompt's activations
/// runs at one core's bandwidth).
pub fn copy(src: &[f32]) -> Vec<f32> {
    if src.len() < 2 * CHUNK {
        return src.to_vec();
    }
    // Zeroed memory of this size comes fresh from the system (no serial memset): each thread
    // faults in the pages it writes.
    let mut out = vec![0f32; src.len()];
    for_each_chunk_mut(&mut out, CHUNK, |i, o| {
        o.copy_from_slice(&src[i * CHUNK..i * CHUNK + o.len()])
    });
    out
}

/// `a + b` for tensors of one shape; candle's add where either is not plain CPU f32.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return a + b;
    }
    let sum = with_f32(a, |a| {
        with_f32(b, |b| {
            let mut out = vec![0f32; a.len()];
            zip_map(&mut out, a, b, |x, y| x + y);
            out
        })
    })
    .flatten();
    match sum {
        Some(v) => Tensor::from_vec(v, a.shape(), a.device()),
        None => a + b,
    }
}

/// `out[i] = f(a[i], b[i])`, split across the pool for long rows.
pub fn zip_map(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    let run = |(o, (a, b)): (&mut [f32], (&[f32], &[f32]))| {
        for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
            *o = f(x, y);
        }
    };
    if out.len() < 2 * CHUNK {
        run((out, (a, b)));
    } else {
        for_each_chunk_mut(out, CHUNK, |i, o| {
            let at = i * CHUNK..i * CHUNK + o.len();
            run((o, (&a[at.clone()], &b[at])))
        });
    }
}

/// `f` on every row of `x` (rows of `row` values), split across the pool when there are many.
pub fn for_rows(x: &mut [f32], row: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if x.len() < 2 * CHUNK || row == 0 {
        x.chunks_mut(row.max(1))
            .enumerate()
            .for_each(|(i, r)| f(i, r));
    } else {
        let per_task = (CHUNK / row).max(1);
        for_each_chunk_mut(x, per_task * row, |t, rows| {
            for (i, r) in rows.chunks_mut(row).enumerate() {
                f(t * per_task + i, r);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn ramp(n: usize, k: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * k).sin()).collect()
    }

    #[test]
    fn add_is_candles_add_for_every_size() {
        for n in [1, 7, CHUNK - 1, 2 * CHUNK, 5 * CHUNK + 3] {
            let a = Tensor::from_vec(ramp(n, 0.1), n, &Device::Cpu).unwrap();
            let b = Tensor::from_vec(ramp(n, 0.37), n, &Device::Cpu).unwrap();
            let ours: Vec<f32> = add(&a, &b).unwrap().to_vec1().unwrap();
            let theirs: Vec<f32> = (&a + &b).unwrap().to_vec1().unwrap();
            assert_eq!(ours, theirs, "n = {n}");
        }
    }

    #[test]
    fn add_of_other_shapes_and_types_falls_back_to_candle() {
        let a = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
        let row = Tensor::ones(3, DType::F32, &Device::Cpu).unwrap();
        assert!(
            add(&a, &row).is_err(),
            "candle refuses a plain add of two shapes"
        );
        let h = Tensor::ones((2, 3), DType::F16, &Device::Cpu).unwrap();
        let sum: Vec<Vec<half::f16>> = add(&h, &h).unwrap().to_vec2().unwrap();
        assert_eq!(sum[1][2].to_f32(), 2.0);
        let t = a.t().unwrap();
        assert!(
            with_f32(&t, |_| ()).is_none(),
            "a transposed view is not one slice"
        );
    }

    #[test]
    fn copies_and_rows_cover_everything_once() {
        for n in [3, 2 * CHUNK + 5] {
            let v = ramp(n, 0.01);
            assert_eq!(copy(&v), v);
            let row = 7;
            let mut x = vec![0f32; row * (n / row)];
            for_rows(&mut x, row, |i, r| {
                r.iter_mut().for_each(|v| *v += i as f32)
            });
            for (i, r) in x.chunks(row).enumerate() {
                assert!(r.iter().all(|&v| v == i as f32), "row {i}");
            }
        }
    }
}
