//! Statistics of the load benchmarks (wrk itself is the harness's).

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

pub(crate) fn percentile(sorted_micros: &[f64], p: f64) -> f64 {
    let index = ((sorted_micros.len() as f64 - 1.0) * p).round() as usize;
    sorted_micros[index]
}
