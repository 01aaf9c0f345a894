//! Choosing the next token from the logits: LM Studio's prediction config and llama.cpp's sampler chain.

use rand::distr::{weighted::WeightedIndex, Distribution};
use rand::rngs::StdRng;

/// Sampling and stopping parameters (LM Studio's `LlmPredictionConfig`).
#[derive(Debug, Clone)]
pub struct PredictionConfig {
    /// Most tokens to predict (`None`: until EOS or the context is full).
    pub max_tokens: Option<usize>,
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// 0.0 = off.
    pub min_p: f32,
    /// 1.0 = off.
    pub repeat_penalty: f32,
    /// Stop when any of these appears in the output; not emitted.
    pub stop_strings: Vec<String>,
    /// RNG seed; `None` = random.
    pub seed: Option<u64>,
}

/// Tokens the repeat penalty looks back over (llama.cpp's `repeat_last_n`).
pub(super) const REPEAT_LAST_N: usize = 64;

impl Default for PredictionConfig {
    /// llama.cpp's defaults (repeat penalty off).
    fn default() -> Self {
        PredictionConfig {
            max_tokens: None,
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            stop_strings: Vec::new(),
            seed: None,
        }
    }
}

/// Penalise every distinct token of the look-back window once, as llama.cpp's penalty sampler does (and so LM
/// Studio): `logit / penalty` when positive, else `logit * penalty`. How often a token repeats does not matter.
pub(super) fn penalize_repeats(logits: &mut [f32], window: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut distinct = window.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    for t in distinct {
        if let Some(l) = logits.get_mut(t as usize) {
            *l = if *l <= 0.0 { *l * penalty } else { *l / penalty };
        }
    }
}

/// Softmax of candidate logits (sorted, best first) at temperature `t`.
fn softmax(cands: &[(u32, f32)], t: f32) -> Vec<f32> {
    let max = cands[0].1;
    let e: Vec<f32> = cands.iter().map(|&(_, l)| ((l - max) / t).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

/// The candidates llama.cpp's chain leaves after the penalty, with the logits the draw's softmax uses, best first:
/// top-k, top-p (on the probabilities at temperature 1), min-p (`logit >= best + ln min_p`), then the temperature.
/// `temperature <= 0` leaves only the best (the first at a tie).
pub(super) fn candidates(logits: &[f32], cfg: &PredictionConfig) -> Vec<(u32, f32)> {
    let mut cands: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    if cfg.temperature <= 0.0 {
        let best = cands.iter().fold(cands[0], |best, &c| if c.1 > best.1 { c } else { best });
        return vec![best];
    }
    let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
    if cfg.top_k > 0 && cfg.top_k < cands.len() {
        cands.select_nth_unstable_by(cfg.top_k - 1, by_logit);
        cands.truncate(cfg.top_k);
    }
    cands.sort_unstable_by(by_logit);
    if cfg.top_p < 1.0 {
        let mut cumulative = 0.0;
        let last = softmax(&cands, 1.0).iter().position(|p| {
            cumulative += p;
            cumulative >= cfg.top_p
        });
        cands.truncate(last.map_or(cands.len(), |i| i + 1));
    }
    if cfg.min_p > 0.0 {
        let floor = cands[0].1 + cfg.min_p.ln();
        let keep = cands.iter().take_while(|&&(_, l)| l >= floor).count().max(1);
        cands.truncate(keep);
    }
    for c in &mut cands {
        c.1 /= cfg.temperature;
    }
    cands
}

/// The next token: the repeat penalty over `window` (the last `REPEAT_LAST_N` tokens of prompt and prediction),
/// then llama.cpp's chain (`candidates`) and a draw from the softmax of what is left.
pub(super) fn sample(mut logits: Vec<f32>, cfg: &PredictionConfig, window: &[u32], rng: &mut StdRng) -> u32 {
    penalize_repeats(&mut logits, window, cfg.repeat_penalty);
    let cands = candidates(&logits, cfg);
    if cands.len() == 1 {
        return cands[0].0;
    }
    let probs = softmax(&cands, 1.0);
    match WeightedIndex::new(&probs) {
        Ok(dist) => cands[dist.sample(rng)].0,
        Err(_) => cands[0].0,
    }
}

#[cfg(test)]
mod tests {
    //! The chain checked in effect: draws from fixed logits against the distribution llama.cpp's chain
    //! defines (`reference`, written from llama.cpp's `src/llama-sampler.cpp`, in f64), and the repeat penalty
    //! against llama.cpp's penalty sampler (each distinct token of the window penalised once).
    use rand::SeedableRng;

    use super::*;

    /// llama.cpp's chain in f64: penalties (left to the caller), top-k, top-p (softmax at temperature 1),
    /// min-p (`logit >= max + ln p`), temperature, then the draw's softmax. Token → probability.
    fn reference(logits: &[f32], cfg: &PredictionConfig) -> Vec<(u32, f64)> {
        let mut c: Vec<(u32, f64)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, f64::from(l))).collect();
        c.sort_by(|a, b| b.1.total_cmp(&a.1));
        if cfg.top_k > 0 {
            c.truncate(cfg.top_k);
        }
        let softmax = |c: &[(u32, f64)], t: f64| -> Vec<f64> {
            let e: Vec<f64> = c.iter().map(|&(_, l)| ((l - c[0].1) / t).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|x| x / s).collect()
        };
        if cfg.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = softmax(&c, 1.0).iter().position(|p| {
                acc += p;
                acc >= f64::from(cfg.top_p)
            });
            c.truncate(keep.map_or(c.len(), |k| k + 1));
        }
        if cfg.min_p > 0.0 {
            let floor = c[0].1 + f64::from(cfg.min_p).ln();
            let keep = c.iter().take_while(|&&(_, l)| l >= floor).count().max(1);
            c.truncate(keep);
        }
        let p = softmax(&c, f64::from(cfg.temperature));
        c.iter().zip(p).map(|(&(t, _), p)| (t, p)).collect()
    }

    fn only(temperature: f32) -> PredictionConfig {
        PredictionConfig { temperature, top_k: 0, top_p: 1.0, min_p: 0.0, ..PredictionConfig::default() }
    }

    /// Draw `n` tokens with a fixed seed and compare each token's frequency with `expected`: within 5 standard
    /// deviations of its binomial count, and nothing drawn outside the expected support.
    fn check_frequencies(logits: &[f32], cfg: &PredictionConfig, expected: &[(u32, f64)]) {
        const N: usize = 40_000;
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..N {
            counts[sample(logits.to_vec(), cfg, &[], &mut rng) as usize] += 1;
        }
        let support: Vec<u32> = expected.iter().map(|&(t, _)| t).collect();
        for (t, &n) in counts.iter().enumerate() {
            assert!(n == 0 || support.contains(&(t as u32)), "token {t} drawn {n} times, outside {support:?}");
        }
        for &(t, p) in expected {
            let mean = p * N as f64;
            let sd = (N as f64 * p * (1.0 - p)).sqrt().max(1.0);
            let n = counts[t as usize] as f64;
            assert!((n - mean).abs() <= 5.0 * sd, "token {t}: drawn {n} times, expected {mean:.0} ± {sd:.0}");
        }
    }

    /// Twelve logits with distinct, spread-out values (token 3 is the most likely).
    fn twelve() -> Vec<f32> {
        vec![1.0, 0.2, 2.5, 3.1, -0.5, 2.9, 0.7, -2.0, 1.8, 2.2, 0.0, 1.3]
    }

    #[test]
    fn temperature_scales_the_softmax() {
        for t in [0.5, 1.0, 2.0] {
            let cfg = only(t);
            let expected = reference(&twelve(), &cfg);
            assert_eq!(expected.len(), 12);
            check_frequencies(&twelve(), &cfg, &expected);
        }
    }

    #[test]
    fn top_k_keeps_the_k_most_likely() {
        let cfg = PredictionConfig { top_k: 3, ..only(1.0) };
        let expected = reference(&twelve(), &cfg);
        assert_eq!(expected.iter().map(|e| e.0).collect::<Vec<_>>(), vec![3, 5, 2]);
        check_frequencies(&twelve(), &cfg, &expected);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p_before_temperature() {
        // top-p runs before the temperature (llama.cpp's order): at temperature 2 the set is the one the
        // temperature-1 probabilities choose, only drawn from more evenly.
        for t in [1.0, 2.0] {
            let cfg = PredictionConfig { top_p: 0.6, ..only(t) };
            let expected = reference(&twelve(), &cfg);
            assert_eq!(expected.iter().map(|e| e.0).collect::<Vec<_>>(), vec![3, 5, 2]);
            check_frequencies(&twelve(), &cfg, &expected);
        }
    }

    #[test]
    fn min_p_drops_tokens_below_p_times_the_best() {
        let cfg = PredictionConfig { min_p: 0.3, ..only(1.0) };
        let expected = reference(&twelve(), &cfg);
        // p_i >= 0.3 p_max  <=>  logit >= 3.1 + ln 0.3 = 1.896
        assert_eq!(expected.iter().map(|e| e.0).collect::<Vec<_>>(), vec![3, 5, 2, 9]);
        check_frequencies(&twelve(), &cfg, &expected);
    }

    #[test]
    fn the_default_chain_matches_llama_cpp() {
        // A vocabulary-sized spread: top-k 40, top-p 0.95, min-p 0.05 and temperature 0.8 each cut something.
        let logits: Vec<f32> = (0..200).map(|i| 8.0 - 0.9 * (i as f32).sqrt() + 0.01 * (i % 7) as f32).collect();
        let cfg = PredictionConfig::default();
        let expected = reference(&logits, &cfg);
        assert!(expected.len() > 1 && expected.len() < 40, "{} candidates", expected.len());
        check_frequencies(&logits, &cfg, &expected);
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens_and_another_seed_others() {
        let draw = |seed: u64| -> Vec<u32> {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..64).map(|_| sample(twelve(), &only(1.5), &[], &mut rng)).collect()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn temperature_zero_is_the_argmax_whatever_the_seed() {
        for seed in 0..8 {
            assert_eq!(sample(twelve(), &only(0.0), &[], &mut StdRng::seed_from_u64(seed)), 3);
        }
    }

    /// llama.cpp's penalty sampler: every distinct token of the window once, `l / p` if `l > 0`, else `l * p`.
    fn penalised(logits: &[f32], window: &[u32], penalty: f32) -> Vec<f32> {
        let mut out = logits.to_vec();
        for (t, l) in out.iter_mut().enumerate() {
            if window.contains(&(t as u32)) {
                *l = if *l <= 0.0 { *l * penalty } else { *l / penalty };
            }
        }
        out
    }

    #[test]
    fn the_repeat_penalty_counts_each_distinct_token_once() {
        // Token 0 fills the window five times; token 1 is a close second. Penalised once (llama.cpp), token 0
        // stays ahead (3.0 / 1.1 = 2.73 > 2.6); penalised per occurrence it would fall to 3.0 / 1.1^5 = 1.86.
        let logits = vec![3.0, 2.6, -1.0, 0.5];
        let window = [0, 0, 2, 0, 0, 2, 0];
        let cfg = PredictionConfig { repeat_penalty: 1.1, ..only(0.0) };
        let want = penalised(&logits, &window, 1.1);
        assert_eq!(sample(logits.clone(), &cfg, &window, &mut StdRng::seed_from_u64(0)), 0);
        // Negative logits are multiplied: token 2 goes from -1.0 to -1.1, not -1.21. Drawn at temperature 1 from
        // the penalised logits, the frequencies are llama.cpp's.
        let cfg = PredictionConfig { repeat_penalty: 1.1, ..only(1.0) };
        let expected = reference(&want, &only(1.0));
        let mut rng = StdRng::seed_from_u64(3);
        let mut counts = [0usize; 4];
        const N: usize = 40_000;
        for _ in 0..N {
            counts[sample(logits.clone(), &cfg, &window, &mut rng) as usize] += 1;
        }
        for (t, p) in expected {
            let (mean, sd) = (p * N as f64, (N as f64 * p * (1.0 - p)).sqrt());
            let n = counts[t as usize] as f64;
            assert!((n - mean).abs() <= 5.0 * sd, "token {t}: drawn {n} times, expected {mean:.0} ± {sd:.0}");
        }
    }

    #[test]
    fn a_penalty_of_one_changes_nothing() {
        let cfg = PredictionConfig { repeat_penalty: 1.0, ..only(0.0) };
        assert_eq!(sample(vec![1.0, 2.0], &cfg, &[1, 1, 1], &mut StdRng::seed_from_u64(0)), 1);
    }
}
