//! Pooling: sentence-transformers' `Pooling` module (one vector per text from its tokens' hidden states,
//! several modes concatenated) and the optional `Normalize` module.

use serde::Deserialize;

/// `torch.nn.functional.normalize`'s epsilon.
const NORMALIZE_EPS: f32 = 1e-12;
/// sentence-transformers clamps the token count of mean pooling to at least this.
const MEAN_MIN_COUNT: f32 = 1e-9;

/// sentence-transformers' pooling modes; several may be on, and their outputs are concatenated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub(super) struct Pooling {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

impl Pooling {
    pub(super) fn mean() -> Self {
        Pooling { pooling_mode_mean_tokens: true, ..Pooling::default() }
    }

    pub(super) fn modes(&self) -> usize {
        [
            self.pooling_mode_cls_token,
            self.pooling_mode_max_tokens,
            self.pooling_mode_mean_tokens,
            self.pooling_mode_mean_sqrt_len_tokens,
            self.pooling_mode_weightedmean_tokens,
            self.pooling_mode_lasttoken,
        ]
        .iter()
        .filter(|&&on| on)
        .count()
    }
}

/// Pool each sequence's hidden states as sentence-transformers' `Pooling` does, modes concatenated in
/// its order (cls, max, mean, mean_sqrt_len, weightedmean, lasttoken).
pub(super) fn pool(hidden: &[f32], seqs: &[(&[u32], &[u32])], h: usize, p: &Pooling, out: &mut Vec<f32>) {
    out.clear();
    let mut start = 0;
    for (ids, _) in seqs {
        let rows = &hidden[start * h..(start + ids.len()) * h];
        start += ids.len();
        let n = ids.len();
        if p.pooling_mode_cls_token {
            out.extend_from_slice(&rows[..h]);
        }
        if p.pooling_mode_max_tokens {
            let mut m = vec![f32::NEG_INFINITY; h];
            for row in rows.chunks_exact(h) {
                for (a, &v) in m.iter_mut().zip(row) {
                    *a = a.max(v);
                }
            }
            out.extend(m);
        }
        if p.pooling_mode_mean_tokens || p.pooling_mode_mean_sqrt_len_tokens {
            let mut sum = vec![0f32; h];
            for row in rows.chunks_exact(h) {
                for (a, &v) in sum.iter_mut().zip(row) {
                    *a += v;
                }
            }
            let count = (n as f32).max(MEAN_MIN_COUNT);
            if p.pooling_mode_mean_tokens {
                out.extend(sum.iter().map(|v| v / count));
            }
            if p.pooling_mode_mean_sqrt_len_tokens {
                let root = count.sqrt();
                out.extend(sum.iter().map(|v| v / root));
            }
        }
        if p.pooling_mode_weightedmean_tokens {
            // Position weights 1..=n, as sentence-transformers (right padding).
            let mut sum = vec![0f32; h];
            for (pos, row) in rows.chunks_exact(h).enumerate() {
                let wgt = (pos + 1) as f32;
                for (a, &v) in sum.iter_mut().zip(row) {
                    *a += v * wgt;
                }
            }
            let total = ((n * (n + 1) / 2) as f32).max(MEAN_MIN_COUNT);
            out.extend(sum.iter().map(|v| v / total));
        }
        if p.pooling_mode_lasttoken {
            out.extend_from_slice(&rows[(n - 1) * h..]);
        }
    }
}

/// L2-normalise in place, as `torch.nn.functional.normalize`.
pub(super) fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(NORMALIZE_EPS);
    for x in v {
        *x /= norm;
    }
}
