//! Load and prediction configs as the in-process API accepts a dict (LM Studio's camelCase keys or their
//! snake_case attribute names), turned into the core's flat snake_case form. Mirrors python/modelhost/config.py:
//! unknown keys are `InvalidConfig`, recognised-but-unimplemented options at a non-default value `NotSupported`;
//! the core checks the ranges.

use modelhost_core::Error;
use modelhost_core::ModelKind;
use serde_json::{json, Map, Value};

/// A recognised option, its snake_case name (the camelCase one is derived unless given), and how it is taken.
struct Field {
    snake: &'static str,
    camel: Option<&'static str>,
    take: Take,
}

enum Take {
    /// Copied to the core under this name after a type check.
    Core(&'static str, Check),
    /// Accepted only at these values (or null): not supported yet otherwise.
    DefaultOnly(&'static [fn(&Value) -> bool]),
    /// The `gpu` object.
    Gpu,
    /// Special cases of the prediction config.
    Special,
}

#[derive(Clone, Copy)]
enum Check {
    Int,
    IntList,
    Number,
    Bool,
    StrList,
}

const fn core(snake: &'static str, to: &'static str, check: Check) -> Field {
    Field { snake, camel: None, take: Take::Core(to, check) }
}

const fn default_only(snake: &'static str, camel: Option<&'static str>, ok: &'static [fn(&Value) -> bool]) -> Field {
    Field { snake, camel, take: Take::DefaultOnly(ok) }
}

fn is_false(v: &Value) -> bool {
    v == &Value::Bool(false)
}
fn is_true(v: &Value) -> bool {
    v == &Value::Bool(true)
}
fn is_empty_list(v: &Value) -> bool {
    v.as_array().is_some_and(Vec::is_empty)
}
fn is_stop_at_limit(v: &Value) -> bool {
    v.as_str() == Some("stopAtLimit")
}
fn is_type_none(v: &Value) -> bool {
    v == &json!({"type": "none"})
}
fn is_not_enabled(v: &Value) -> bool {
    v == &json!({"enabled": false})
}

const LLM_LOAD: &[Field] = &[
    Field { snake: "gpu", camel: Some("gpu"), take: Take::Gpu },
    core("context_length", "context_length", Check::Int),
    core("rope_frequency_base", "rope_frequency_base", Check::Number),
    core("rope_frequency_scale", "rope_frequency_scale", Check::Number),
    core("eval_batch_size", "eval_batch_size", Check::Int),
    core("keep_model_in_memory", "keep_model_in_memory", Check::Bool),
    core("seed", "seed", Check::Int),
    core("try_mmap", "try_mmap", Check::Bool),
    default_only("gpu_strict_vram_cap", None, &[is_false]),
    default_only("offload_kv_cache_to_gpu", Some("offloadKVCacheToGpu"), &[is_true]),
    default_only("flash_attention", None, &[is_false]),
    default_only("use_fp16_for_kv_cache", Some("useFp16ForKVCache"), &[is_false]),
    default_only("num_experts", None, &[]),
    default_only("llama_k_cache_quantization_type", None, &[is_false]),
    default_only("llama_v_cache_quantization_type", None, &[is_false]),
];

const EMBEDDING_LOAD: &[Field] = &[
    Field { snake: "gpu", camel: Some("gpu"), take: Take::Gpu },
    core("context_length", "context_length", Check::Int),
    default_only("rope_frequency_base", None, &[]),
    default_only("rope_frequency_scale", None, &[]),
    core("keep_model_in_memory", "keep_model_in_memory", Check::Bool),
    core("try_mmap", "try_mmap", Check::Bool),
    core("seed", "seed", Check::Int),
];

const PREDICTION: &[Field] = &[
    Field { snake: "max_tokens", camel: None, take: Take::Special },
    core("temperature", "temperature", Check::Number),
    Field { snake: "top_k_sampling", camel: None, take: Take::Special },
    Field { snake: "top_p_sampling", camel: None, take: Take::Special },
    Field { snake: "min_p_sampling", camel: None, take: Take::Special },
    Field { snake: "repeat_penalty", camel: None, take: Take::Special },
    core("stop_strings", "stop_strings", Check::StrList),
    core("seed", "seed", Check::Int),
    default_only("tool_call_stop_strings", None, &[is_empty_list]),
    default_only("context_overflow_policy", None, &[is_stop_at_limit]),
    default_only("structured", None, &[is_type_none]),
    default_only("raw_tools", None, &[is_type_none]),
    default_only("cpu_threads", None, &[]),
    default_only("prompt_template", None, &[]),
    default_only("draft_model", None, &[]),
    default_only("speculative_decoding_num_draft_tokens_exact", None, &[]),
    default_only("speculative_decoding_min_draft_length_to_consider", None, &[]),
    default_only("speculative_decoding_min_continue_drafting_probability", None, &[]),
    default_only("reasoning_parsing", None, &[is_not_enabled]),
    default_only("raw", None, &[]),
];

const GPU: &[Field] = &[
    Field { snake: "ratio", camel: None, take: Take::Special },
    core("main_gpu", "main_gpu", Check::Int),
    Field { snake: "split_strategy", camel: None, take: Take::Special },
    core("disabled_gpus", "disabled_gpus", Check::IntList),
];

fn camel(snake: &str) -> String {
    let mut out = String::new();
    for (i, part) in snake.split('_').enumerate() {
        let mut chars = part.chars();
        match chars.next() {
            Some(c) if i > 0 => out.extend(c.to_uppercase().chain(chars)),
            Some(c) => out.extend(std::iter::once(c).chain(chars)),
            None => {}
        }
    }
    out
}

fn field_name(f: &Field) -> String {
    f.camel.map_or_else(|| camel(f.snake), str::to_string)
}

/// Match each key of `given` to a field by its camelCase or snake_case name; null values are "not given".
fn match_fields<'a>(what: &str, fields: &'a [Field], given: &'a Value) -> Result<Vec<(&'a Field, &'a Value)>, Error> {
    let map = match given {
        Value::Null => return Ok(Vec::new()),
        Value::Object(m) => m,
        other => return Err(Error::InvalidConfig(format!("{what} must be a mapping, got {other}"))),
    };
    let mut out: Vec<(&Field, &Value)> = Vec::new();
    for (key, value) in map {
        let field = fields.iter().find(|f| f.snake == key || field_name(f) == *key).ok_or_else(|| {
            let names: Vec<String> = fields.iter().map(field_name).collect();
            Error::InvalidConfig(format!("unknown {what} key {key:?}; known keys: {}", names.join(", ")))
        })?;
        if out.iter().any(|(f, _)| std::ptr::eq(*f, field)) {
            return Err(Error::InvalidConfig(format!("{what} key {key:?} is given twice (camelCase and snake_case)")));
        }
        if !value.is_null() {
            out.push((field, value));
        }
    }
    Ok(out)
}

fn checked(name: &str, v: &Value, check: Check) -> Result<Value, Error> {
    let ok = match check {
        Check::Int => v.is_i64() || v.is_u64(),
        Check::IntList => v.as_array().is_some_and(|a| a.iter().all(Value::is_u64)),
        Check::Number => v.is_number(),
        Check::Bool => v.is_boolean(),
        Check::StrList => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
    };
    if ok {
        Ok(v.clone())
    } else {
        let want = match check {
            Check::Int => "an int",
            Check::IntList => "a list of non-negative ints",
            Check::Number => "a number",
            Check::Bool => "a bool",
            Check::StrList => "a list of strings",
        };
        Err(Error::InvalidConfig(format!("{name} must be {want}, got {v}")))
    }
}

fn refuse_non_default(what: &str, f: &Field, v: &Value, ok: &[fn(&Value) -> bool]) -> Result<(), Error> {
    if ok.iter().any(|accept| accept(v)) {
        return Ok(());
    }
    Err(Error::NotSupported(format!("{what} option {}={v} is not supported yet", field_name(f))))
}

/// A load config for a model of `kind` → the core's flat form.
pub(crate) fn load_config(kind: ModelKind, given: &Value) -> Result<Value, Error> {
    let fields = match kind {
        ModelKind::Llm => LLM_LOAD,
        ModelKind::Embedding => EMBEDDING_LOAD,
    };
    let mut out = Map::new();
    for (f, v) in match_fields("load config", fields, given)? {
        match &f.take {
            Take::Core(to, check) => {
                out.insert((*to).into(), checked(&field_name(f), v, *check)?);
            }
            Take::DefaultOnly(ok) => refuse_non_default("load config", f, v, ok)?,
            Take::Gpu => gpu(kind, v, &mut out)?,
            Take::Special => unreachable_field(f)?,
        }
    }
    Ok(Value::Object(out))
}

fn gpu(kind: ModelKind, given: &Value, out: &mut Map<String, Value>) -> Result<(), Error> {
    for (f, v) in match_fields("gpu setting", GPU, given)? {
        let name = format!("gpu.{}", field_name(f));
        match (f.snake, &f.take) {
            ("ratio", _) => {
                let ratio = match v.as_str() {
                    Some("max") => json!(1.0),
                    Some("off") => json!(0.0),
                    _ if v.is_number() => v.clone(),
                    _ => {
                        return Err(Error::InvalidConfig(format!(
                            "{name} must be a number in 0..1, 'max' or 'off', got {v}"
                        )))
                    }
                };
                out.insert("gpu_ratio".into(), ratio);
            }
            ("split_strategy", _) => match v.as_str() {
                Some(s @ ("evenly" | "favorMainGpu")) => {
                    out.insert("split_strategy".into(), json!(s));
                }
                _ => return Err(Error::InvalidConfig(format!("{name} must be 'evenly' or 'favorMainGpu', got {v}"))),
            },
            (_, Take::Core(to, check)) => {
                out.insert((*to).into(), checked(&name, v, *check)?);
            }
            _ => unreachable_field(f)?,
        }
        // An embedding model sits on one device: only the ratio can differ from its default.
        let default = match f.snake {
            "main_gpu" => Some(json!(0)),
            "split_strategy" => Some(json!("evenly")),
            "disabled_gpus" => Some(json!([])),
            _ => None,
        };
        if kind == ModelKind::Embedding && default.is_some_and(|d| &d != v) {
            return Err(Error::NotSupported(format!(
                "load config option {name}={v} is not supported for embedding models"
            )));
        }
    }
    Ok(())
}

/// A prediction config → the core's flat form (what `LlmPredictionConfig._to_core()` makes).
pub(crate) fn prediction_config(given: &Value) -> Result<Value, Error> {
    let mut out = Map::new();
    for (f, v) in match_fields("prediction config", PREDICTION, given)? {
        let name = field_name(f);
        match (&f.take, f.snake) {
            (Take::Core(to, check), _) => {
                out.insert((*to).into(), checked(&name, v, *check)?);
            }
            (Take::DefaultOnly(ok), _) => refuse_non_default("prediction config", f, v, ok)?,
            // False or a negative number: until the end of generation or the context.
            (_, "max_tokens") => {
                if !is_false(v) {
                    let n = checked(&name, v, Check::Int)?;
                    if n.as_i64().is_none_or(|n| n >= 0) {
                        out.insert("max_tokens".into(), n);
                    }
                }
            }
            (_, "top_k_sampling") => {
                let k = checked(&name, v, Check::Number)?.as_f64().unwrap_or(0.0);
                if k.fract() != 0.0 {
                    return Err(Error::InvalidConfig(format!("{name} must be a whole number, got {v}")));
                }
                out.insert("top_k".into(), json!(k.max(0.0) as u64));
            }
            // False switches a sampler off: the value at which it has no effect.
            (_, "top_p_sampling") => put_or_off(&mut out, "top_p", &name, v, 1.0)?,
            (_, "min_p_sampling") => put_or_off(&mut out, "min_p", &name, v, 0.0)?,
            (_, "repeat_penalty") => put_or_off(&mut out, "repeat_penalty", &name, v, 1.0)?,
            _ => unreachable_field(f)?,
        }
    }
    Ok(Value::Object(out))
}

fn put_or_off(out: &mut Map<String, Value>, to: &str, name: &str, v: &Value, off: f64) -> Result<(), Error> {
    let value = if is_false(v) { json!(off) } else { checked(name, v, Check::Number)? };
    out.insert(to.into(), value);
    Ok(())
}

fn unreachable_field(f: &Field) -> Result<(), Error> {
    Err(Error::InvalidConfig(format!("config key {:?} cannot be used here", field_name(f))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_configs() {
        let c = load_config(ModelKind::Llm, &json!({"contextLength": 256, "gpu": {"ratio": "max"}, "try_mmap": false}))
            .unwrap();
        assert_eq!(c, json!({"context_length": 256, "gpu_ratio": 1.0, "try_mmap": false}));
        assert_eq!(
            load_config(ModelKind::Llm, &json!({"offloadKVCacheToGpu": true, "flashAttention": false})).unwrap(),
            json!({})
        );
        assert!(matches!(load_config(ModelKind::Llm, &json!({"flashAttention": true})), Err(Error::NotSupported(_))));
        assert!(matches!(load_config(ModelKind::Llm, &json!({"bogus": 1})), Err(Error::InvalidConfig(_))));
        assert!(matches!(
            load_config(ModelKind::Llm, &json!({"contextLength": 1, "context_length": 2})),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(load_config(ModelKind::Llm, &json!({"contextLength": "x"})), Err(Error::InvalidConfig(_))));
        assert!(matches!(
            load_config(ModelKind::Embedding, &json!({"gpu": {"mainGpu": 1}})),
            Err(Error::NotSupported(_))
        ));
        assert!(matches!(
            load_config(ModelKind::Embedding, &json!({"ropeFrequencyBase": 1e4})),
            Err(Error::NotSupported(_))
        ));
        assert_eq!(load_config(ModelKind::Embedding, &Value::Null).unwrap(), json!({}));
    }

    #[test]
    fn prediction_configs() {
        let p = prediction_config(&json!({"maxTokens": 8, "temperature": 0, "stopStrings": ["\n"], "topKSampling": 40,
                                          "top_p_sampling": false, "repeatPenalty": 1.1}))
        .unwrap();
        assert_eq!(
            p,
            json!({"max_tokens": 8, "temperature": 0, "stop_strings": ["\n"], "top_k": 40, "top_p": 1.0,
                   "repeat_penalty": 1.1})
        );
        assert_eq!(prediction_config(&json!({"maxTokens": false})).unwrap(), json!({}));
        assert_eq!(prediction_config(&json!({"maxTokens": -1})).unwrap(), json!({}));
        assert!(matches!(prediction_config(&json!({"draftModel": "x"})), Err(Error::NotSupported(_))));
        assert!(prediction_config(&json!({"structured": {"type": "none"}})).is_ok());
        assert!(matches!(prediction_config(&json!({"topKSampling": 1.5})), Err(Error::InvalidConfig(_))));
        assert!(matches!(prediction_config(&json!({"stopStrings": [1]})), Err(Error::InvalidConfig(_))));
        assert!(matches!(prediction_config(&json!({"temperature": true})), Err(Error::InvalidConfig(_))));
    }
}
