//! Tests of the quantized linear layers: every kernel against dequantized products, the repacked layouts, fused groups.

use super::weights::{q4_0_as_q4_1, repack_q4_1, repack_q8_0};
use super::*;
use candle_core::Device;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn check(dtype: GgmlDType, rows: usize) {
    // 70 outputs: eight full groups and a padded one.
    let k = if dtype.block_size() == 256 { 512 } else { 96 };
    let n = 70;
    let w = Tensor::from_vec(random(n * k, 1), (n, k), &Device::Cpu).unwrap();
    let x = Tensor::from_vec(random(rows * k, 2), (rows, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, dtype).unwrap();
    let q_dequantized = q.dequantize(&Device::Cpu).unwrap();
    let reference = x.matmul(&q_dequantized.t().unwrap()).unwrap();
    let linear = QLinear::new(q).unwrap();
    let ours = linear.forward(&x).unwrap();
    // Only the 8-bit rounding of the activations separates the two.
    let d = max_diff(&ours, &reference);
    let tolerance = 0.05 * (k as f32 / 96.0).sqrt();
    assert!(d < tolerance, "{dtype:?} rows={rows}: max diff {d}");
    // Against the activations as the kernel rounded them, only the order of the float sums.
    let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let acts = match dtype {
        GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q5K | GgmlDType::Q6K => activations::q8_k(&xs),
        _ => activations::q8_1(Kernel::Scalar, &xs),
    };
    let x8: Vec<f32> = acts
        .iter()
        .flat_map(|a| a.qs.iter().map(move |&q| q as f32 * a.d))
        .collect();
    let x8 = Tensor::from_vec(x8, (rows, k), &Device::Cpu).unwrap();
    let exact = x8.matmul(&q_dequantized.t().unwrap()).unwrap();
    let d = max_diff(&ours, &exact);
    // Q4_1 takes ggml's f16-rounded activation sums on purpose.
    let tight = if dtype == GgmlDType::Q4_1 { 1e-2 } else { 2e-4 };
    assert!(
        d < tight,
        "{dtype:?} rows={rows}: {d} from the exact product"
    );
    // A row's result does not depend on the other rows of the batch.
    let alone = linear.forward(&x.narrow(0, rows - 1, 1).unwrap()).unwrap();
    let last = ours.narrow(0, rows - 1, 1).unwrap();
    assert_eq!(max_diff(&last, &alone), 0.0, "{dtype:?} rows={rows}");
}

#[test]
fn q4_1_matches_dequantized_matmul() {
    for rows in [1, 3, 5, 8, 30] {
        check(GgmlDType::Q4_1, rows);
    }
}

#[test]
fn q4_0_matches_dequantized_matmul() {
    for rows in [1, 3, 5, 8, 30] {
        check(GgmlDType::Q4_0, rows);
    }
    let w = Tensor::from_vec(random(16 * 64, 7), (16, 64), &Device::Cpu).unwrap();
    let q = QLinear::new(QTensor::quantize(&w, GgmlDType::Q4_0).unwrap()).unwrap();
    assert!(
        matches!(q.weights, Weights::Lantern(CpuWeights::Q4_0(_))),
        "runs on Lantern's kernel"
    );
}

#[test]
fn q8_0_matches_dequantized_matmul() {
    for rows in [1, 4, 7, 30] {
        check(GgmlDType::Q8_0, rows);
    }
}

const TILE_TYPES: [GgmlDType; 7] = [
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
    GgmlDType::Q3K,
    GgmlDType::Q2K,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
];

/// Each tile type against candle's dequantization (ggml's formulas), on Lantern's kernel.
#[test]
fn tile_types_match_dequantized_matmul() {
    for dtype in TILE_TYPES {
        for rows in [1, 3, 8, 13] {
            check(dtype, rows);
        }
        let w = Tensor::from_vec(random(16 * 256, 7), (16, 256), &Device::Cpu).unwrap();
        let q = QLinear::new(QTensor::quantize(&w, dtype).unwrap()).unwrap();
        assert!(q.on_lantern_kernels(), "{dtype:?} runs on Lantern's kernel");
    }
}

/// The scalar decoders read back exactly the values ggml's dequantization gives.
#[test]
fn tile_values_are_ggml_values() {
    for dtype in TILE_TYPES {
        let (n, k) = (9, 512);
        let w = Tensor::from_vec(random(n * k, 21), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let expected = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let cpu = CpuWeights::repack(dtype, &q.data().unwrap(), n, k).unwrap();
        for (row, want) in expected.iter().enumerate() {
            let got = cpu.row(row, k);
            for (c, (g, e)) in got.iter().zip(want).enumerate() {
                assert!(
                    (g - e).abs() <= 1e-6 * e.abs().max(1.0),
                    "{dtype:?} [{row},{c}]: {g} vs {e}"
                );
            }
        }
    }
}

#[test]
fn scalar_and_simd_tile_kernels_agree() {
    let (n, k) = (8, 512);
    let rows_x: Vec<Vec<ActBlock>> = (0..3)
        .map(|s| activations::q8_1(Kernel::Scalar, &random(k, 30 + s)))
        .collect();
    let rows: Rows<3> = [&rows_x[0], &rows_x[1], &rows_x[2]];
    for dtype in TILE_TYPES {
        let w = Tensor::from_vec(random(n * k, 3), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let cpu = CpuWeights::repack(dtype, &q.data().unwrap(), n, k).unwrap();
        let run = |kernel: Kernel| {
            let mut out = [[0f32; LANES]; ROW_GROUP];
            group_rows::<3>(
                kernel,
                &cpu,
                0,
                cpu.blocks_per_row(k),
                |i| rows[i],
                &mut out,
            );
            out
        };
        let expected = run(Kernel::Scalar);
        let mut kernels = vec![select_kernel()];
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c") {
            kernels.push(Kernel::Avx2);
        }
        for kernel in kernels {
            let got = run(kernel);
            for r in 0..3 {
                for c in 0..LANES {
                    let (g, e) = (got[r][c], expected[r][c]);
                    assert!((g - e).abs() < 1e-4, "{dtype:?} {kernel:?}: {g} vs {e}");
                }
            }
        }
    }
}

#[test]
fn scalar_and_simd_kernels_agree() {
    let (n, k) = (8, 64);
    let acts = activations::q8_1(Kernel::Scalar, &random(k, 4));
    let acts2 = activations::q8_1(Kernel::Scalar, &random(k, 5));
    let rows: Rows<2> = [&acts, &acts2];
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
        let w = Tensor::from_vec(random(n * k, 3), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let data = q.data().unwrap();
        let run = |kernel: Kernel| {
            let mut out = [[0f32; LANES]; ROW_GROUP];
            match dtype {
                GgmlDType::Q4_0 => {
                    let q41 = q4_0_as_q4_1(&data).unwrap();
                    kernel.q4_1::<2, true>(&repack_q4_1(&q41, n, k), rows, &mut out)
                }
                GgmlDType::Q4_1 => {
                    kernel.q4_1::<2, false>(&repack_q4_1(&data, n, k), rows, &mut out)
                }
                _ => kernel.q8_0::<2>(&repack_q8_0(&data, n, k), rows, &mut out),
            }
            out
        };
        let expected = run(Kernel::Scalar);
        let mut kernels = vec![select_kernel()];
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c") {
            kernels.push(Kernel::Avx2);
        }
        for kernel in kernels {
            let got = run(kernel);
            for r in 0..2 {
                for c in 0..LANES {
                    let (g, e) = (got[r][c], expected[r][c]);
                    assert!((g - e).abs() < 1e-4, "{dtype:?} {kernel:?}: {g} vs {e}");
                }
            }
        }
    }
}

#[test]
fn simd_activation_quantizer_gives_the_scalar_bytes() {
    let mut blocks: Vec<[f32; QK]> = random(QK * 64, 12)
        .chunks(QK)
        .enumerate()
        .map(|(i, c)| std::array::from_fn(|j| c[j] * (1 + i) as f32))
        .collect();
    // Exact halves (max 127 makes the scale 1): rounding ties must go away from zero.
    blocks.push(std::array::from_fn(|j| match j {
        0 => 127.0,
        _ => (j as f32 - 16.0) + 0.5,
    }));
    blocks.push([0.0; QK]);
    blocks.push(std::array::from_fn(|j| -(j as f32) * 1e-3));
    let simd = select_kernel();
    for b in &blocks {
        let (d, qs) = Kernel::Scalar.quantize_block(b);
        assert_eq!(simd.quantize_block(b), (d, qs), "{simd:?} on {b:?}");
    }
    let ties = Kernel::Scalar.quantize_block(&blocks[64]).1;
    assert_eq!((ties[1], ties[16], ties[17]), (-15, 1, 2));
}

#[test]
fn fused_groups_equal_separate_layers() {
    let x = Tensor::from_vec(random(3 * 256, 9), (3, 256), &Device::Cpu).unwrap();
    for dtype in [GgmlDType::Q4_1, GgmlDType::Q4K, GgmlDType::Q6K] {
        let layers = |widths: &[usize]| -> Vec<QLinear> {
            widths
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let w = random(n * 256, 10 + i as u64);
                    let w = Tensor::from_vec(w, (n, 256), &Device::Cpu).unwrap();
                    QLinear::new(QTensor::quantize(&w, dtype).unwrap()).unwrap()
                })
                .collect()
        };
        let separate: Vec<Tensor> = layers(&[32, 64, 16])
            .iter()
            .map(|l| l.forward(&x).unwrap())
            .collect();
        let group = LinearGroup::new(layers(&[32, 64, 16]));
        assert!(matches!(group, LinearGroup::Fused { .. }), "{dtype:?}");
        for (a, b) in group.forward(&x).unwrap().iter().zip(&separate) {
            assert_eq!(max_diff(a, b), 0.0, "{dtype:?}");
        }
        // A part that ends inside a group of eight rows cannot be appended.
        let ragged = LinearGroup::new(layers(&[12, 64]));
        assert!(matches!(ragged, LinearGroup::Separate(_)));
    }
}

#[test]
fn slices_repack_to_the_whole() {
    let (n, k) = (45, 512);
    let w = Tensor::from_vec(random(n * k, 21), (n, k), &Device::Cpu).unwrap();
    let x = Tensor::from_vec(random(2 * k, 22), (2, k), &Device::Cpu).unwrap();
    for dtype in [
        GgmlDType::Q4_0,
        GgmlDType::Q8_0,
        GgmlDType::Q5K,
        GgmlDType::Q2K,
    ] {
        let q = QTensor::quantize(&w, dtype).unwrap();
        let bytes = q.data().unwrap().into_owned();
        let whole = QLinear::new(q).unwrap().forward(&x).unwrap();
        let mut reported = Vec::new();
        let row_bytes = bytes.len() / n;
        // Eight rows a slice: six slices, the last one ragged.
        let weights = CpuWeights::repack_in_slices(dtype, &bytes, n, k, 8 * row_bytes, |at| {
            reported.push(at)
        })
        .unwrap();
        assert_eq!(reported, [8, 16, 24, 32, 40, 45].map(|r| r * row_bytes));
        let sliced = QLinear {
            weights: Weights::Lantern(weights),
            dtype,
            out_features: n,
            in_features: k,
        };
        assert_eq!(
            max_diff(&sliced.forward(&x).unwrap(), &whole),
            0.0,
            "{dtype:?}"
        );
        let direct = QLinear::from_gguf_rows(dtype, &bytes, (n, k), |_| ()).unwrap();
        assert_eq!(
            max_diff(&direct.forward(&x).unwrap(), &whole),
            0.0,
            "{dtype:?}"
        );
        assert_eq!(direct.row(3).unwrap(), sliced.row(3).unwrap());
        assert!(direct.row(n).is_none());
    }
}
