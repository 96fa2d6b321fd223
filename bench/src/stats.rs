//! Summaries of repeated measurements.

/// min / median / max of a set of values.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

pub fn spread(values: &[f64]) -> Spread {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    Spread {
        min: v[0],
        median: percentile_sorted(&v, 50.0),
        max: v[v.len() - 1],
    }
}

/// The `p`th percentile (nearest rank) of sorted values.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    percentile_sorted(&v, p)
}

pub fn fmt(s: Spread, digits: usize) -> [String; 3] {
    [
        format!("{:.*}", digits, s.min),
        format!("{:.*}", digits, s.median),
        format!("{:.*}", digits, s.max),
    ]
}
