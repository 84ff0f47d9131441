//! Tests of `bench`.

use super::*;

struct Quiet;
impl Observer for Quiet {
    fn progress(&mut self, _: f64, _: &str) {}
    fn cancelled(&self) -> bool {
        false
    }
}

#[test]
fn stats_are_mean_and_sample_sd() {
    let s = Stat::of(vec![1.0, 2.0, 3.0]);
    assert_eq!((s.mean, s.sd), (2.0, 1.0));
    assert_eq!(Stat::of(vec![5.0]).sd, 0.0);
}

#[test]
fn a_tiny_synthetic_model_benchmarks_within_its_rooflines() {
    let dir = tempfile::tempdir().unwrap();
    let shape = super::super::synthetic::shape("tiny").unwrap();
    let path =
        super::super::synthetic::write(&shape, candle_core::quantized::GgmlDType::Q8_0, dir.path())
            .unwrap();
    let r = run(
        "tiny",
        &path,
        &Device::Cpu,
        None,
        Options::quick(),
        &mut Quiet,
    )
    .unwrap();
    let tests: Vec<&str> = r.speeds.iter().map(|s| s.test.as_str()).collect();
    assert_eq!(tests, ["pp64", "tg16", "tg8@b1", "tg8@b4"]);
    for s in &r.speeds {
        assert!(s.tokens_per_second.mean > 0.0, "{s:?}");
        assert_eq!(s.tokens_per_second.samples.len(), 2);
        // Other tests share the cores here, so only tests/devices.rs, which runs alone,
        // holds the fraction to at most 1.
        assert!(
            s.roofline_fraction > 0.0 && s.roofline_fraction.is_finite(),
            "{s:?}"
        );
    }
    // 4 blocks of q, k, v, o and the MLP, plus the tied head.
    let per_block = 256 * 256 + 2 * 128 * 256 + 256 * 256 + 3 * 768 * 256;
    assert_eq!(r.model.params, (4 * per_block + 4096 * 256) as u64);
    assert!(r.ttft_ms.mean > 0.0);
    let table = super::super::table::markdown(&r);
    assert!(table.contains("| tg16 |"), "{table}");
}

#[test]
fn cancelling_stops_the_run() {
    struct Cancel;
    impl Observer for Cancel {
        fn progress(&mut self, _: f64, _: &str) {}
        fn cancelled(&self) -> bool {
            true
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let shape = super::super::synthetic::shape("tiny").unwrap();
    let path =
        super::super::synthetic::write(&shape, candle_core::quantized::GgmlDType::Q8_0, dir.path())
            .unwrap();
    let err = run(
        "tiny",
        &path,
        &Device::Cpu,
        None,
        Options::quick(),
        &mut Cancel,
    )
    .unwrap_err();
    assert!(matches!(err, BenchError::Cancelled));
}
