//! Tests of `layers`: activations, masks.

use super::*;

#[test]
fn the_vectorizable_gelu_is_candles_within_a_millionth() {
    let v: Vec<f32> = (-20000..20000).map(|i| i as f32 * 0.00071).collect();
    for x in v {
        let (ours, theirs) = (gelu_vectorizable(x), Activation::Gelu.apply(x));
        let tolerance = 1e-6 * x.abs().max(1.0);
        assert!(
            (ours - theirs).abs() <= tolerance,
            "gelu({x}): {ours} vs {theirs}"
        );
    }
}

#[test]
fn activations_are_candles_to_the_bit() {
    let v: Vec<f32> = (-4000..4000).map(|i| i as f32 * 0.00237).collect();
    let t = Tensor::new(v.as_slice(), &Device::Cpu).unwrap();
    for (act, theirs) in [
        (Activation::Gelu, t.gelu().unwrap()),
        (Activation::Silu, t.silu().unwrap()),
    ] {
        let theirs = theirs.to_vec1::<f32>().unwrap();
        for (x, y) in v.iter().zip(theirs) {
            assert_eq!(act.apply(*x).to_bits(), y.to_bits(), "{act:?}({x})");
        }
    }
}

#[test]
fn mask_is_causal_and_windowed() {
    let m = attention_mask(3, 2, None, &Device::Cpu).unwrap().unwrap();
    let m = m.to_vec2::<f32>().unwrap();
    assert_eq!(m[0][..3], [0.0, 0.0, 0.0]);
    assert!(m[0][3].is_infinite() && m[1][4].is_infinite());
    assert_eq!(m[2], vec![0.0; 5]);
    assert!(attention_mask(1, 10, None, &Device::Cpu).unwrap().is_none());
    let w = attention_mask(1, 10, Some(4), &Device::Cpu)
        .unwrap()
        .unwrap();
    let w = w.to_vec2::<f32>().unwrap();
    // Position 10 sees 7..=10.
    assert!(w[0][6].is_infinite());
    assert_eq!(w[0][7..], [0.0; 4]);
}
