//! Wall-clock time as Lantern stores it, at the bottom of the house: the log, the store, jobs and
//! benchmarks all stamp their rows with it.

/// Unix seconds now, as the log stores times.
pub fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
