//! Reading a block's weights out of a GGUF file: linear layers (repacked for Lantern's CPU
//! kernels where they cover the type), fused row ranges split apart, norms, the embedding and
//! the output head. Every architecture's loader names its parts through these.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::Device;

use super::layers::{self, Embedding, RmsNorm};
use super::ModelError;
use crate::engine::gguf::GgufFile;
use crate::engine::qmatmul::{LinearGroup, QLinear};

/// A named weight, checked to have the expected (out, in) shape.
fn weight(
    gguf: &GgufFile,
    name: &str,
    shape: (usize, usize),
    device: &Device,
) -> Result<QTensor, ModelError> {
    let t = gguf.qtensor(name, device)?;
    if t.shape().dims() != [shape.0, shape.1] {
        return Err(ModelError::Inconsistent(format!(
            "{name} has shape {:?}, expected {shape:?}",
            t.shape().dims()
        )));
    }
    Ok(t)
}

/// A named (out, in) linear layer. On the CPU, for the types Lantern's kernels cover, it is
/// repacked straight from the map, whose pages go back as it goes: the layer is then the only
/// copy of those weights in memory.
pub(crate) fn linear(
    gguf: &GgufFile,
    name: &str,
    shape: (usize, usize),
    device: &Device,
) -> Result<QLinear, ModelError> {
    let (info, bytes) = gguf.tensor_bytes(name)?;
    if info.shape != [shape.0, shape.1] {
        return Err(ModelError::Inconsistent(format!(
            "{name} has shape {:?}, expected {shape:?}",
            info.shape
        )));
    }
    let repacked = if device.is_cpu() {
        QLinear::from_gguf_rows(info.dtype, bytes, shape, |upto| gguf.release(name, upto))
    } else {
        None
    };
    let layer = match repacked {
        Some(layer) => layer,
        None => QLinear::new(weight(gguf, name, shape, device)?)?,
    };
    gguf.release(name, usize::MAX);
    Ok(layer)
}

/// Consecutive row ranges of one (out, in) weight as their own layers: Phi-3's fused
/// `attn_qkv` and gate-and-up `ffn_up`. GGUF rows are contiguous, so each part is a byte range.
pub(crate) fn split_rows(
    gguf: &GgufFile,
    name: &str,
    parts: &[usize],
    cols: usize,
    device: &Device,
) -> Result<Vec<QLinear>, ModelError> {
    let rows: usize = parts.iter().sum();
    let (info, bytes) = gguf.tensor_bytes(name)?;
    if info.shape != [rows, cols] {
        return Err(ModelError::Inconsistent(format!(
            "{name} has shape {:?}, expected {:?}",
            info.shape,
            [rows, cols]
        )));
    }
    let row_bytes = row_bytes(name, info.dtype, rows, cols, bytes.len())?;
    let mut out = Vec::with_capacity(parts.len());
    let mut start = 0;
    for &n in parts {
        let part = &bytes[start * row_bytes..(start + n) * row_bytes];
        out.push(rows_linear(name, info.dtype, part, (n, cols), device)?);
        start += n;
    }
    gguf.release(name, usize::MAX);
    Ok(out)
}

/// Each expert's (rows, cols) matrix of a stacked (experts, rows, cols) weight (`ffn_up_exps`
/// and the like) as its own layer, split further into row ranges `parts` (a fused
/// `ffn_gate_up_exps` holds each expert's gate rows, then its up rows). The map's pages go back
/// expert by expert.
pub(crate) fn expert_matrices(
    gguf: &GgufFile,
    name: &str,
    n_experts: usize,
    parts: &[usize],
    cols: usize,
    device: &Device,
) -> Result<Vec<Vec<QLinear>>, ModelError> {
    let rows: usize = parts.iter().sum();
    let (info, bytes) = gguf.tensor_bytes(name)?;
    if info.shape != [n_experts, rows, cols] {
        return Err(ModelError::Inconsistent(format!(
            "{name} has shape {:?}, expected {:?}",
            info.shape,
            [n_experts, rows, cols]
        )));
    }
    let row_bytes = row_bytes(name, info.dtype, n_experts * rows, cols, bytes.len())?;
    (0..n_experts)
        .map(|e| {
            let mut start = e * rows;
            let layers = parts
                .iter()
                .map(|&n| {
                    let part = &bytes[start * row_bytes..(start + n) * row_bytes];
                    start += n;
                    rows_linear(name, info.dtype, part, (n, cols), device)
                })
                .collect();
            gguf.release(name, (e + 1) * rows * row_bytes);
            layers
        })
        .collect()
}

/// Bytes per row of `cols` values of `dtype`, checked against the tensor's byte size, so a file
/// whose rows do not fill whole blocks is an error naming the tensor, not a panic.
fn row_bytes(
    name: &str,
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    len: usize,
) -> Result<usize, ModelError> {
    let per_row = cols
        .is_multiple_of(dtype.block_size())
        .then(|| cols / dtype.block_size() * dtype.type_size())
        .filter(|b| b * rows == len)
        .ok_or_else(|| {
            ModelError::Inconsistent(format!(
                "{name}: {rows} rows of {cols} values do not fill its {len} bytes of {dtype:?}"
            ))
        })?;
    Ok(per_row)
}

/// A layer over raw GGUF rows of tensor `name`: repacked for Lantern's CPU kernels where they
/// cover the type, else a candle tensor holding a copy of exactly these bytes (a narrowed view
/// of a whole tensor would not do: candle's quantizer reads the view's whole storage).
fn rows_linear(
    name: &str,
    dtype: GgmlDType,
    bytes: &[u8],
    shape: (usize, usize),
    device: &Device,
) -> Result<QLinear, ModelError> {
    if device.is_cpu() {
        if let Some(layer) = QLinear::from_gguf_rows(dtype, bytes, shape, |_| {}) {
            return Ok(layer);
        }
    }
    let fault = |e: candle_core::Error| {
        ModelError::Inconsistent(format!("{name}: rows of {shape:?} in {dtype:?}: {e}"))
    };
    let storage =
        QStorage::from_data(std::borrow::Cow::Borrowed(bytes), device, dtype).map_err(fault)?;
    QLinear::new(QTensor::new(storage, shape).map_err(fault)?).map_err(fault)
}

/// Linear layers over the same input, fused where the weights allow.
pub(crate) fn group(
    gguf: &GgufFile,
    parts: &[(&str, (usize, usize))],
    device: &Device,
) -> Result<LinearGroup, ModelError> {
    let layers = parts
        .iter()
        .map(|(name, shape)| linear(gguf, name, *shape, device))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LinearGroup::new(layers))
}

pub(crate) fn norm(
    gguf: &GgufFile,
    name: &str,
    eps: f64,
    device: &Device,
) -> Result<RmsNorm, ModelError> {
    Ok(RmsNorm::new(gguf.qtensor(name, device)?, eps, device)?)
}

/// The sizes every block of a model shares.
pub(crate) struct Dims {
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
}

/// Layer `i`'s fused Q/K/V projections and output projection, as every architecture names them.
pub(crate) fn attention_weights(
    gguf: &GgufFile,
    i: usize,
    d: &Dims,
    device: &Device,
) -> Result<(LinearGroup, QLinear), ModelError> {
    let p = |name: &str| format!("blk.{i}.{name}");
    let (q, kv) = (d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim);
    // One fused `attn_qkv` (Phi-3) or three.
    let qkv = if gguf.has_tensor(&p("attn_qkv.weight")) {
        LinearGroup::new(split_rows(
            gguf,
            &p("attn_qkv.weight"),
            &[q, kv, kv],
            d.d_model,
            device,
        )?)
    } else {
        group(
            gguf,
            &[
                (&p("attn_q.weight"), (q, d.d_model)),
                (&p("attn_k.weight"), (kv, d.d_model)),
                (&p("attn_v.weight"), (kv, d.d_model)),
            ],
            device,
        )?
    };
    let wo = linear(
        gguf,
        &p("attn_output.weight"),
        (d.d_model, d.n_heads * d.head_dim),
        device,
    )?;
    Ok((qkv, wo))
}

/// Layer `i`'s gated MLP.
pub(crate) fn gated_mlp(
    gguf: &GgufFile,
    i: usize,
    d: &Dims,
    activation: layers::Activation,
    device: &Device,
) -> Result<layers::GatedMlp, ModelError> {
    let p = |name: &str| format!("blk.{i}.{name}");
    // Without `ffn_gate`, `ffn_up` holds the gate rows and then the up rows (Phi-3).
    let gate_up = if gguf.has_tensor(&p("ffn_gate.weight")) {
        group(
            gguf,
            &[
                (&p("ffn_gate.weight"), (d.ffn, d.d_model)),
                (&p("ffn_up.weight"), (d.ffn, d.d_model)),
            ],
            device,
        )?
    } else {
        LinearGroup::new(split_rows(
            gguf,
            &p("ffn_up.weight"),
            &[d.ffn, d.ffn],
            d.d_model,
            device,
        )?)
    };
    Ok(layers::GatedMlp {
        gate_up,
        down: linear(gguf, &p("ffn_down.weight"), (d.d_model, d.ffn), device)?,
        activation,
    })
}

/// The token embedding and the output head (`output.weight`, or the embedding table when the
/// model ties them). A tied table is held once, in the head's repacked layout.
pub(crate) fn embedding_and_head(
    gguf: &GgufFile,
    d_model: usize,
    scale: Option<f64>,
    device: &Device,
) -> Result<(Embedding, Arc<QLinear>), ModelError> {
    const TABLE: &str = "token_embd.weight";
    let (info, _) = gguf.tensor_bytes(TABLE)?;
    let vocab = match info.shape.as_slice() {
        [vocab, d] if *d == d_model => *vocab,
        shape => {
            return Err(ModelError::Inconsistent(format!(
                "{TABLE} has shape {shape:?}, expected (vocab, {d_model})"
            )))
        }
    };
    if gguf.has_tensor("output.weight") {
        let head = linear(gguf, "output.weight", (vocab, d_model), device)?;
        let embedding = Embedding::new(gguf.qtensor(TABLE, device)?, scale)?;
        return Ok((embedding, Arc::new(head)));
    }
    let head = Arc::new(linear(gguf, TABLE, (vocab, d_model), device)?);
    let embedding = match Embedding::tied(&head, scale) {
        Some(e) => e,
        None => Embedding::new(gguf.qtensor(TABLE, device)?, scale)?,
    };
    Ok((embedding, head))
}
