//! The summary of repeated measurements that benchmarks report.

use serde::Serialize;

/// Mean and sample standard deviation of repeated measurements.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub sd: f64,
    pub samples: Vec<f64>,
}

impl Stat {
    pub fn of(samples: Vec<f64>) -> Self {
        let n = samples.len() as f64;
        let mean = samples.iter().sum::<f64>() / n.max(1.0);
        let var = if samples.len() > 1 {
            samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Self {
            mean,
            sd: var.sqrt(),
            samples,
        }
    }
}
