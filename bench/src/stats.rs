//! Summaries of repeated measurements.

/// min / median / max of a set of values.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

pub fn spread(values: &[f64]) -> Spread {
    if values.is_empty() {
        // No figure (every run failed): shown as NaN, not a panic.
        return Spread {
            min: f64::NAN,
            median: f64::NAN,
            max: f64::NAN,
        };
    }
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

/// Mean of the middle half of the values (interquartile mean): robust to
/// outliers like a median, but finer than the clock's granularity, which
/// a median of single-run timings cannot be.
pub fn interquartile_mean(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let (lo, hi) = (v.len() / 4, v.len() - v.len() / 4);
    let mid = &v[lo..hi.max(lo + 1)];
    mid.iter().sum::<f64>() / mid.len() as f64
}
