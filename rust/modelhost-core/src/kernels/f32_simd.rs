//! Reductions over f32 slices in explicit SIMD (the compiler will not reorder float sums by itself): AVX2/FMA
//! where the build targets it, a portable fallback elsewhere.

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod imp {
    use std::arch::x86_64::*;

    const W: usize = 8;

    /// Horizontal sum of one vector.
    #[inline(always)]
    fn hsum(v: __m256) -> f32 {
        // SAFETY: AVX is enabled at compile time (cfg above); these only shuffle registers.
        unsafe {
            let lo = _mm256_castps256_ps128(v);
            let hi = _mm256_extractf128_ps(v, 1);
            let s = _mm_add_ps(lo, hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }

    #[inline(always)]
    pub fn sum(v: &[f32]) -> f32 {
        let full = v.len() - v.len() % W;
        // SAFETY: loads read v[i..i + 8] with i + 8 <= full <= v.len(); AVX2 is enabled.
        let acc = unsafe {
            let mut acc = _mm256_setzero_ps();
            let mut i = 0;
            while i < full {
                acc = _mm256_add_ps(acc, _mm256_loadu_ps(v.as_ptr().add(i)));
                i += W;
            }
            acc
        };
        hsum(acc) + v[full..].iter().sum::<f32>()
    }

    /// Σ (v - mean)².
    #[inline(always)]
    pub fn sum_sq_dev(v: &[f32], mean: f32) -> f32 {
        let full = v.len() - v.len() % W;
        // SAFETY: as in `sum`.
        let acc = unsafe {
            let m = _mm256_set1_ps(mean);
            let mut acc = _mm256_setzero_ps();
            let mut i = 0;
            while i < full {
                let d = _mm256_sub_ps(_mm256_loadu_ps(v.as_ptr().add(i)), m);
                acc = _mm256_fmadd_ps(d, d, acc);
                i += W;
            }
            acc
        };
        hsum(acc) + v[full..].iter().map(|x| (x - mean) * (x - mean)).sum::<f32>()
    }

    #[inline(always)]
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        dots::<1, 1>([a], [b])[0][0]
    }

    /// `R × C` dot products of slices of one length, in `R·C` vector accumulators, each weight
    /// vector loaded once for all `C` rows.
    #[inline(always)]
    pub fn dots<const R: usize, const C: usize>(w: [&[f32]; R], x: [&[f32]; C]) -> [[f32; C]; R] {
        let k = w[0].len();
        assert!(w.iter().all(|s| s.len() == k) && x.iter().all(|s| s.len() == k));
        let full = k - k % W;
        let mut out = [[0f32; C]; R];
        // SAFETY: every load reads [i, i + 8) with i + 8 <= full <= k, inside each slice (all
        // have length k, asserted above); AVX2 and FMA are enabled at compile time.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); C]; R];
            let mut i = 0;
            while i < full {
                let mut xv = [_mm256_setzero_ps(); C];
                for c in 0..C {
                    xv[c] = _mm256_loadu_ps(x[c].as_ptr().add(i));
                }
                for r in 0..R {
                    let wv = _mm256_loadu_ps(w[r].as_ptr().add(i));
                    for c in 0..C {
                        acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);
                    }
                }
                i += W;
            }
            for r in 0..R {
                for c in 0..C {
                    let tail: f32 = w[r][full..].iter().zip(&x[c][full..]).map(|(a, b)| a * b).sum();
                    out[r][c] = hsum(acc[r][c]) + tail;
                }
            }
        }
        out
    }
}

/// Portable fallback (correct, not fast): builds without AVX2/FMA.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
mod imp {
    pub fn sum(v: &[f32]) -> f32 {
        v.iter().sum()
    }

    pub fn sum_sq_dev(v: &[f32], mean: f32) -> f32 {
        v.iter().map(|x| (x - mean) * (x - mean)).sum()
    }

    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    pub fn dots<const R: usize, const C: usize>(w: [&[f32]; R], x: [&[f32]; C]) -> [[f32; C]; R] {
        let mut out = [[0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                out[r][c] = dot(w[r], x[c]);
            }
        }
        out
    }
}

pub use imp::*;
