//! Per-sequence KV cache.
//!
//! One `KvCache` belongs to one sequence and holds every layer's keys and values. On the CPU a
//! layer is two plain `Vec<f16>`s (as llama.cpp's cache: half the memory and half the reads of
//! a decode step), position-major (position, kv_heads, head_dim): an append is
//! an `extend`, growth is the vector's own doubling, and attention reads rows in place. On a GPU
//! a layer is two (kv_heads, capacity, head_dim) tensors written in place (`slice_set`) whose
//! capacity doubles when full, so a long generation copies O(log n) times instead of every step
//! as `Tensor::cat` would. Dropping the cache frees its memory.

use candle_core::{DType, Device, Result, Tensor};
use half::f16;

use super::kv_rows::{HostRows, KvType, Q8Rows, RowStore, Q8_BLOCK};

const MIN_CAPACITY: usize = 64;

#[derive(Debug, Clone)]
enum LayerKv {
    Device {
        k: Tensor,
        v: Tensor,
    },
    /// `row` floats per position: kv_heads × head_dim.
    Host {
        k: Vec<f16>,
        v: Vec<f16>,
        row: usize,
    },
    /// The same rows in q8_0 blocks.
    Quantized {
        k: Q8Rows,
        v: Q8Rows,
        row: usize,
    },
}

#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    len: usize,
    capacity: usize,
    /// How CPU layers store their rows.
    kind: KvType,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        Self::of_type(n_layers, KvType::F16)
    }

    /// A cache whose CPU layers store rows as `kind` (accelerators keep their own dtype).
    pub fn of_type(n_layers: usize, kind: KvType) -> Self {
        Self {
            layers: vec![None; n_layers],
            len: 0,
            capacity: 0,
            kind,
        }
    }

    pub fn kind(&self) -> KvType {
        self.kind
    }

    /// Tokens already in the cache: the position of the next token.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held, for memory budgets.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|l| match l {
                LayerKv::Device { k, .. } => 2 * k.elem_count() * k.dtype().size_in_bytes(),
                LayerKv::Host { k, v, .. } => (k.capacity() + v.capacity()) * 2,
                LayerKv::Quantized { k, v, .. } => k.bytes() + v.bytes(),
            })
            .sum()
    }

    /// Forget everything from `len` on (the rest stays valid for a shared prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// CPU path: add `k`, `v` rows (t positions of `row` values each, rounded to f16) for
    /// `layer` at the current position; [`KvCache::host`] then reads the whole history. The position moves on
    /// only at `advance`, once every layer has appended.
    pub fn append_host(&mut self, layer: usize, k: &[f32], v: &[f32], row: usize) -> Result<()> {
        let keep = self.len * row;
        let want = k.len().max(MIN_CAPACITY * row);
        if self.kind == KvType::Q8_0 && !row.is_multiple_of(Q8_BLOCK) {
            candle_core::bail!("q8_0 KV rows need a multiple of {Q8_BLOCK} values, not {row}");
        }
        match (self.kind, &mut self.layers[layer]) {
            (KvType::F16, slot @ None) => {
                let (k, v) = (fresh(want, k), fresh(want, v));
                *slot = Some(LayerKv::Host { k, v, row });
            }
            (KvType::Q8_0, slot @ None) => {
                let (k, v) = (fresh(want, k), fresh(want, v));
                *slot = Some(LayerKv::Quantized { k, v, row });
            }
            (
                KvType::F16,
                Some(LayerKv::Host {
                    k: kk,
                    v: vv,
                    row: r,
                }),
            ) if *r == row => {
                append_rows(kk, vv, keep, (k, v));
            }
            (
                KvType::Q8_0,
                Some(LayerKv::Quantized {
                    k: kk,
                    v: vv,
                    row: r,
                }),
            ) if *r == row => {
                append_rows(kk, vv, keep, (k, v));
            }
            _ => candle_core::bail!("KV cache layer {layer} holds another layout"),
        }
        Ok(())
    }

    /// CPU path: every key and value row of `layer`, including the ones appended this pass.
    pub fn host(&self, layer: usize) -> Option<(HostRows<'_>, HostRows<'_>)> {
        match &self.layers[layer] {
            Some(LayerKv::Host { k, v, .. }) => Some((HostRows::F16(k), HostRows::F16(v))),
            Some(LayerKv::Quantized { k, v, .. }) => {
                Some((HostRows::Q8(k.view()), HostRows::Q8(v.view())))
            }
            _ => None,
        }
    }

    /// Write `k`, `v` (kv_heads, t, head_dim) for `layer` at the current position and return the
    /// whole history for that layer, including them. The position moves on only at `advance`,
    /// once every layer has appended.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (heads, t, dim) = k.dims3()?;
        let needed = self.len + t;
        let slot = &mut self.layers[layer];
        let grow = match slot {
            None => true,
            Some(LayerKv::Device { k, .. }) => k.dim(1)? < needed,
            Some(LayerKv::Host { .. } | LayerKv::Quantized { .. }) => {
                candle_core::bail!("KV cache layer {layer} holds another layout")
            }
        };
        if grow {
            let capacity = needed
                .next_power_of_two()
                .max(MIN_CAPACITY)
                .max(self.capacity);
            let (dtype, device): (DType, Device) = (k.dtype(), k.device().clone());
            let new_k = Tensor::zeros((heads, capacity, dim), dtype, &device)?;
            let new_v = Tensor::zeros((heads, capacity, dim), dtype, &device)?;
            if let Some(LayerKv::Device { k: old_k, v: old_v }) = slot.as_ref() {
                if self.len > 0 {
                    new_k.slice_set(&old_k.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                    new_v.slice_set(&old_v.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                }
            }
            self.capacity = self.capacity.max(capacity);
            *slot = Some(LayerKv::Device { k: new_k, v: new_v });
        }
        let Some(LayerKv::Device { k: lk, v: lv }) = slot.as_ref() else {
            unreachable!("allocated above")
        };
        lk.slice_set(&k.contiguous()?, 1, self.len)?;
        lv.slice_set(&v.contiguous()?, 1, self.len)?;
        Ok((lk.narrow(1, 0, needed)?, lv.narrow(1, 0, needed)?))
    }

    /// An independent cache holding this one's first `len` positions, with room for `reserve`
    /// positions before it must grow. Appends to either never show in the other (prefix reuse
    /// must not let one sequence write into another's history).
    pub fn copy_prefix(&self, len: usize, reserve: usize) -> Result<Self> {
        let len = len.min(self.len);
        let capacity = reserve.max(len).next_power_of_two().max(MIN_CAPACITY);
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let copied = match layer {
                Some(LayerKv::Device { k, v }) if len > 0 => {
                    let (heads, _, dim) = k.dims3()?;
                    let copy = |t: &Tensor| -> Result<Tensor> {
                        let out = Tensor::zeros((heads, capacity, dim), t.dtype(), t.device())?;
                        out.slice_set(&t.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
                        Ok(out)
                    };
                    Some(LayerKv::Device {
                        k: copy(k)?,
                        v: copy(v)?,
                    })
                }
                Some(LayerKv::Host { k, v, row }) if len > 0 => {
                    let copy = |x: &[f16]| {
                        let mut out = Vec::with_capacity(reserve.max(len) * row);
                        out.extend_from_slice(&x[..len * row]);
                        out
                    };
                    Some(LayerKv::Host {
                        k: copy(k),
                        v: copy(v),
                        row: *row,
                    })
                }
                Some(LayerKv::Quantized { k, v, row }) if len > 0 => Some(LayerKv::Quantized {
                    k: k.prefix(len * row, reserve.max(len) * row),
                    v: v.prefix(len * row, reserve.max(len) * row),
                    row: *row,
                }),
                _ => None,
            };
            layers.push(copied);
        }
        let capacity = if len > 0 { capacity } else { 0 };
        Ok(Self {
            layers,
            len,
            capacity,
            kind: self.kind,
        })
    }

    /// Move the position on by `t` tokens after a forward pass.
    pub fn advance(&mut self, t: usize) {
        self.len += t;
    }
}

/// Keep the first `keep` values of both stores, then add the new rows of keys and values.
fn append_rows<S: RowStore>(k: &mut S, v: &mut S, keep: usize, (nk, nv): (&[f32], &[f32])) {
    k.keep_rows(keep);
    v.keep_rows(keep);
    k.push_rows(nk);
    v.push_rows(nv);
}

/// A new store of `want` values' capacity holding `x`.
fn fresh<S: RowStore>(want: usize, x: &[f32]) -> S {
    let mut s = S::with_capacity(want);
    s.push_rows(x);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_grow_and_keep_history() {
        let mut cache = KvCache::new(1);
        let mut all = Vec::new();
        for step in 0..70u32 {
            let t = if step == 0 { 5 } else { 1 };
            let vals: Vec<f32> = (0..2 * t * 3)
                .map(|i| (step * 100 + i as u32) as f32)
                .collect();
            let k = Tensor::from_vec(vals.clone(), (2, t, 3), &Device::Cpu).unwrap();
            let (ks, _) = cache.append(0, &k, &k).unwrap();
            cache.advance(t);
            all.push(k);
            assert_eq!(ks.dim(1).unwrap(), cache.len());
        }
        let expected = Tensor::cat(&all, 1).unwrap();
        let (ks, _) = cache
            .append(
                0,
                &Tensor::zeros((2, 1, 3), DType::F32, &Device::Cpu).unwrap(),
                &Tensor::zeros((2, 1, 3), DType::F32, &Device::Cpu).unwrap(),
            )
            .unwrap();
        let got = ks.narrow(1, 0, cache.len()).unwrap();
        let diff = (got - expected).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn host_layers_append_copy_and_stay_independent() {
        let mut cache = KvCache::new(1);
        cache.append_host(0, &[1.0; 6], &[2.0; 6], 2).unwrap();
        cache.advance(3);
        let mut copy = cache.copy_prefix(2, 8).unwrap();
        cache.append_host(0, &[5.0; 2], &[5.0; 2], 2).unwrap();
        cache.advance(1);
        copy.append_host(0, &[7.0; 2], &[7.0; 2], 2).unwrap();
        copy.advance(1);
        let f32s = |x: HostRows| match x {
            HostRows::F16(x) => x.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
            HostRows::Q8(_) => unreachable!("an f16 cache"),
        };
        assert_eq!(
            f32s(cache.host(0).unwrap().0),
            [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0, 5.0]
        );
        assert_eq!(
            f32s(copy.host(0).unwrap().0),
            [1.0, 1.0, 1.0, 1.0, 7.0, 7.0]
        );
        assert_eq!(
            f32s(copy.host(0).unwrap().1),
            [2.0, 2.0, 2.0, 2.0, 7.0, 7.0]
        );
        assert!(cache.bytes() >= 16 * 2);
    }

    #[test]
    fn q8_0_layers_append_truncate_and_copy_like_f16_ones() {
        let row = 64;
        let vals = |x: f32, t: usize| -> Vec<f32> {
            (0..t * row).map(|i| x + (i % row) as f32 / 64.0).collect()
        };
        let keys = |c: &KvCache| match c.host(0).unwrap().0 {
            HostRows::Q8(q) => (0..q.qs.len()).map(|i| q.get(i)).collect::<Vec<f32>>(),
            HostRows::F16(_) => panic!("a q8_0 cache"),
        };
        let mut cache = KvCache::of_type(1, KvType::Q8_0);
        cache
            .append_host(0, &vals(1.0, 3), &vals(2.0, 3), row)
            .unwrap();
        cache.advance(3);
        let mut copy = cache.copy_prefix(2, 8).unwrap();
        assert_eq!(copy.kind(), KvType::Q8_0);
        // A pass that drafted two tokens, then kept one: the second is overwritten.
        cache
            .append_host(0, &vals(5.0, 2), &vals(5.0, 2), row)
            .unwrap();
        cache.advance(2);
        cache.truncate(4);
        cache
            .append_host(0, &vals(6.0, 1), &vals(6.0, 1), row)
            .unwrap();
        cache.advance(1);
        copy.append_host(0, &vals(7.0, 1), &vals(7.0, 1), row)
            .unwrap();
        copy.advance(1);
        let (got, copied) = (keys(&cache), keys(&copy));
        assert_eq!((got.len(), copied.len()), (5 * row, 3 * row));
        for (i, (g, want)) in got
            .iter()
            .zip([vals(1.0, 3), vals(5.0, 1), vals(6.0, 1)].concat())
            .enumerate()
        {
            assert!((g - want).abs() < 0.03, "{i}: {g} vs {want}");
        }
        assert!((copied[2 * row] - 7.0).abs() < 0.03);
        let mut f16s = KvCache::new(1);
        f16s.append_host(0, &vals(1.0, 3), &vals(2.0, 3), row)
            .unwrap();
        assert!(
            2 * cache.bytes() < f16s.bytes() * 11 / 10,
            "about half of f16's bytes: {} against {}",
            cache.bytes(),
            f16s.bytes()
        );
        assert!(KvCache::of_type(1, KvType::Q8_0)
            .append_host(0, &[0.0; 6], &[0.0; 6], 6)
            .is_err());
    }

    #[test]
    fn a_copied_prefix_is_independent_of_its_source() {
        let mut cache = KvCache::new(2);
        let kv = |x: f32, t: usize| Tensor::full(x, (1, t, 2), &Device::Cpu).unwrap();
        for layer in 0..2 {
            cache.append(layer, &kv(1.0, 6), &kv(1.0, 6)).unwrap();
        }
        cache.advance(6);
        let mut copy = cache.copy_prefix(4, 10).unwrap();
        assert_eq!(copy.len(), 4);
        for layer in 0..2 {
            let (k, _) = copy.append(layer, &kv(7.0, 1), &kv(7.0, 1)).unwrap();
            assert_eq!(
                k.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 7.0, 7.0]
            );
        }
        copy.advance(1);
        // The source still holds 1.0 at position 4.
        let (k, _) = cache.append(0, &kv(3.0, 1), &kv(3.0, 1)).unwrap();
        let row: Vec<f32> = k
            .narrow(1, 4, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(row, vec![1.0, 1.0]);
    }
}
