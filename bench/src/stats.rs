//! Percentiles and rates.

/// Percentile `p` (0..=100) of `values` (sorted here), nearest rank.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// p50, p90, p99 and max of `values`, in the same unit.
pub fn summary(values: &mut [f64]) -> serde_json::Value {
    serde_json::json!({
        "count": values.len(),
        "p50": round3(percentile(values, 50.0)),
        "p90": round3(percentile(values, 90.0)),
        "p99": round3(percentile(values, 99.0)),
        "max": round3(percentile(values, 100.0)),
    })
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
