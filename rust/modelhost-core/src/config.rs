//! Load configs: parsed from the flat snake_case map the bindings hand over, validated, and reported
//! back as applied. Prediction configs likewise.

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::host::placement::{GpuConfig, SplitStrategy};
use crate::models::PredictionConfig;

/// Prompt chunk size when none is given (llama.cpp's `n_batch` default).
pub const DEFAULT_EVAL_BATCH_SIZE: usize = 512;
/// Context length when none is given: min(this, the model's maximum) (SPEC §5).
pub const DEFAULT_CONTEXT_LENGTH: usize = 4096;

/// A requested load config (LM Studio's `LlmLoadModelConfig` / `EmbeddingLoadModelConfig`).
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Tokens of context; `None` = the default.
    pub context_length: Option<usize>,
    /// GPU offload.
    pub gpu: GpuConfig,
    /// Map the file (true) or read it into owned memory.
    pub try_mmap: bool,
    /// Lock the weights in RAM.
    pub keep_model_in_memory: bool,
    /// Prompt chunk size; `None` = min(512, context length).
    pub eval_batch_size: Option<usize>,
    /// Default sampling seed for this instance.
    pub seed: Option<u64>,
    /// RoPE base override.
    pub rope_frequency_base: Option<f64>,
    /// RoPE linear scale override.
    pub rope_frequency_scale: Option<f64>,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            context_length: None,
            gpu: GpuConfig::default(),
            try_mmap: true,
            keep_model_in_memory: false,
            eval_batch_size: None,
            seed: None,
            rope_frequency_base: None,
            rope_frequency_scale: None,
        }
    }
}

fn positive_int(key: &str, v: &Value) -> Result<u64> {
    v.as_u64()
        .filter(|&n| n > 0)
        .ok_or_else(|| Error::InvalidConfig(format!("{key} must be a positive integer, got {v}")))
}

fn non_negative_int(key: &str, v: &Value) -> Result<u64> {
    v.as_u64().ok_or_else(|| Error::InvalidConfig(format!("{key} must be a non-negative integer, got {v}")))
}

fn boolean(key: &str, v: &Value) -> Result<bool> {
    v.as_bool().ok_or_else(|| Error::InvalidConfig(format!("{key} must be true or false, got {v}")))
}

fn number(key: &str, v: &Value, range: std::ops::RangeInclusive<f64>) -> Result<f64> {
    v.as_f64()
        .filter(|x| x.is_finite() && range.contains(x))
        .ok_or_else(|| Error::InvalidConfig(format!("{key} must be a number in {range:?}, got {v}")))
}

fn as_object<'a>(what: &str, v: &'a Value) -> Result<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| Error::InvalidConfig(format!("{what} must be a mapping, got {v}")))
}

impl LoadConfig {
    /// Parse the flat snake_case keys of `Instance.load_config()`; unknown keys are errors.
    pub fn from_json(v: &Value) -> Result<Self> {
        let mut c = LoadConfig::default();
        for (key, v) in as_object("load config", v)? {
            if v.is_null() {
                continue;
            }
            match key.as_str() {
                "context_length" => c.context_length = Some(positive_int(key, v)? as usize),
                "gpu_ratio" => c.gpu.ratio = Some(number("gpu.ratio", v, 0.0..=1.0)?),
                "main_gpu" => c.gpu.main_gpu = non_negative_int("gpu.mainGpu", v)? as usize,
                "split_strategy" => {
                    let s = v.as_str().ok_or_else(|| Error::InvalidConfig(format!("gpu.splitStrategy {v}")))?;
                    c.gpu.split_strategy = SplitStrategy::parse(s)?;
                }
                "disabled_gpus" => {
                    let items = v.as_array().ok_or_else(|| Error::InvalidConfig(format!("gpu.disabledGpus {v}")))?;
                    c.gpu.disabled_gpus = items
                        .iter()
                        .map(|i| non_negative_int("gpu.disabledGpus[]", i).map(|i| i as usize))
                        .collect::<Result<_>>()?;
                }
                "try_mmap" => c.try_mmap = boolean("tryMmap", v)?,
                "keep_model_in_memory" => c.keep_model_in_memory = boolean("keepModelInMemory", v)?,
                "eval_batch_size" => c.eval_batch_size = Some(positive_int("evalBatchSize", v)? as usize),
                "seed" => c.seed = Some(seed(v)?),
                "rope_frequency_base" => c.rope_frequency_base = Some(number("ropeFrequencyBase", v, 1e-3..=1e12)?),
                "rope_frequency_scale" => {
                    c.rope_frequency_scale = Some(number("ropeFrequencyScale", v, 1e-6..=1e6)?);
                }
                other => return Err(Error::InvalidConfig(format!("unknown load config key {other:?}"))),
            }
        }
        Ok(c)
    }

    /// The prompt chunk size for a context of `ctx` tokens: the default shrinks to fit, an explicit
    /// value larger than the context is an error.
    pub fn resolve_eval_batch_size(&self, ctx: usize) -> Result<usize> {
        match self.eval_batch_size {
            None => Ok(DEFAULT_EVAL_BATCH_SIZE.min(ctx)),
            Some(n) if n <= ctx => Ok(n),
            Some(n) => Err(Error::InvalidConfig(format!("evalBatchSize {n} exceeds contextLength {ctx}"))),
        }
    }

    /// The context length to use for a model whose maximum is `max`.
    pub fn resolve_context_length(&self, max: usize) -> Result<usize> {
        match self.context_length {
            None => Ok(DEFAULT_CONTEXT_LENGTH.min(max)),
            Some(n) if n <= max => Ok(n),
            Some(n) => Err(Error::InvalidConfig(format!("contextLength {n} is outside 1..={max} for this model"))),
        }
    }
}

fn seed(v: &Value) -> Result<u64> {
    // LM Studio uses -1 for "random"; any other integer is a seed.
    match v.as_i64() {
        Some(-1) => Ok(rand::random()),
        Some(n) if n >= 0 => Ok(n as u64),
        _ => v.as_u64().ok_or_else(|| Error::InvalidConfig(format!("seed must be an integer, got {v}"))),
    }
}

/// Parse a prediction config (snake_case keys); `default_seed` is the instance's load-config seed.
pub fn prediction_from_json(v: &Value, default_seed: Option<u64>) -> Result<PredictionConfig> {
    let mut c = PredictionConfig { seed: default_seed, ..Default::default() };
    for (key, v) in as_object("prediction config", v)? {
        if v.is_null() {
            continue;
        }
        match key.as_str() {
            "max_tokens" => {
                // LM Studio: false or a negative number means "no limit".
                c.max_tokens = match v {
                    Value::Bool(false) => None,
                    _ if v.as_i64().is_some_and(|n| n < 0) => None,
                    _ => Some(non_negative_int("maxTokens", v)? as usize),
                }
            }
            "temperature" => c.temperature = number("temperature", v, 0.0..=100.0)? as f32,
            "top_k" => c.top_k = non_negative_int("topKSampling", v)? as usize,
            "top_p" => c.top_p = number("topPSampling", v, 0.0..=1.0)? as f32,
            "min_p" => c.min_p = number("minPSampling", v, 0.0..=1.0)? as f32,
            "repeat_penalty" => c.repeat_penalty = number("repeatPenalty", v, 0.0..=100.0)? as f32,
            "stop_strings" => {
                let items = v.as_array().ok_or_else(|| Error::InvalidConfig(format!("stopStrings {v}")))?;
                c.stop_strings = items
                    .iter()
                    .map(|s| {
                        s.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| Error::InvalidConfig(format!("stopStrings must be strings, got {s}")))
                    })
                    .collect::<Result<_>>()?;
            }
            "seed" => c.seed = Some(seed(v)?),
            other => return Err(Error::InvalidConfig(format!("unknown prediction config key {other:?}"))),
        }
    }
    if c.repeat_penalty == 0.0 {
        return Err(Error::InvalidConfig("repeatPenalty must be positive".into()));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_and_rejects() {
        let c = LoadConfig::from_json(&json!({"context_length": 256, "gpu_ratio": 0.5, "try_mmap": false})).unwrap();
        assert_eq!(c.context_length, Some(256));
        assert_eq!(c.gpu.ratio, Some(0.5));
        assert!(!c.try_mmap);
        assert!(c.resolve_context_length(128).is_err());
        assert_eq!(LoadConfig::default().resolve_context_length(8192).unwrap(), 4096);
        for bad in [json!({"context_length": 0}), json!({"gpu_ratio": 2}), json!({"bogus": 1}), json!({"try_mmap": 1})]
        {
            assert!(matches!(LoadConfig::from_json(&bad), Err(Error::InvalidConfig(_))), "{bad}");
        }
        let p = prediction_from_json(&json!({"max_tokens": 5, "temperature": 0, "stop_strings": ["x"]}), None).unwrap();
        assert_eq!(p.max_tokens, Some(5));
        assert!(prediction_from_json(&json!({"top_p": 3}), None).is_err());
    }
}
