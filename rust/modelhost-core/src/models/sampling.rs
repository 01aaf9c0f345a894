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

pub(super) fn sample(mut logits: Vec<f32>, cfg: &PredictionConfig, recent: &[u32], rng: &mut StdRng) -> u32 {
    if cfg.repeat_penalty != 1.0 {
        for &t in recent {
            let l = &mut logits[t as usize];
            *l = if *l > 0.0 { *l / cfg.repeat_penalty } else { *l * cfg.repeat_penalty };
        }
    }
    let argmax = || logits.iter().enumerate().fold(0, |best, (i, &l)| if l > logits[best] { i } else { best }) as u32;
    if cfg.temperature <= 0.0 {
        return argmax();
    }
    // llama.cpp's chain: top-k → top-p → min-p → temperature → draw.
    let mut cands: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    cands.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    if cfg.top_k > 0 {
        cands.truncate(cfg.top_k);
    }
    let softmax = |c: &[(u32, f32)], t: f32| -> Vec<f32> {
        let max = c[0].1;
        let e: Vec<f32> = c.iter().map(|&(_, l)| ((l - max) / t).exp()).collect();
        let s: f32 = e.iter().sum();
        e.into_iter().map(|x| x / s).collect()
    };
    if cfg.top_p < 1.0 {
        let probs = softmax(&cands, 1.0);
        let mut acc = 0.0;
        let keep = probs.iter().position(|p| {
            acc += p;
            acc >= cfg.top_p
        });
        cands.truncate(keep.map_or(cands.len(), |k| k + 1));
    }
    if cfg.min_p > 0.0 {
        let probs = softmax(&cands, 1.0);
        let floor = probs[0] * cfg.min_p;
        let keep = probs.iter().take_while(|&&p| p >= floor).count().max(1);
        cands.truncate(keep);
    }
    let probs = softmax(&cands, cfg.temperature);
    match WeightedIndex::new(&probs) {
        Ok(dist) => cands[dist.sample(rng)].0,
        Err(_) => cands[0].0,
    }
}
