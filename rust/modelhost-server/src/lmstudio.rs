//! Model lists and management: OpenAI's `GET /v1/models`, LM Studio's REST v0 model routes and v1 management
//! (`GET /api/v1/models`, `POST /api/v1/models/load|unload`), with LM Studio's field names.

use std::collections::HashMap;
use std::time::{Instant, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use modelhost_core::LoadConfig;
use modelhost_core::Progress;
use modelhost_core::{CatalogEntry, ModelKind};
use modelhost_core::{LoadRequest, LoadedBy};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::run::{blocking, check_model_name};
use crate::state::AppState;

/// The catalog and the infos of the loaded instances, read on a blocking thread.
async fn snapshot(state: &AppState) -> Result<(Vec<CatalogEntry>, Vec<Value>), ApiError> {
    let host = state.host.clone();
    blocking(move || {
        let entries = host.catalog().list(None);
        // An instance unloaded between the listing and its info is simply left out.
        let infos = host.list_loaded(None).iter().filter_map(|h| h.info().ok()).collect();
        Ok((entries, infos))
    })
    .await
}

fn publisher(key: &str) -> &str {
    key.split('/').next().unwrap_or(key)
}

/// Loaded instances of each catalog file, in load order.
fn by_path(infos: &[Value]) -> HashMap<&str, Vec<&Value>> {
    let mut map: HashMap<&str, Vec<&Value>> = HashMap::new();
    for info in infos {
        map.entry(info["path"].as_str().unwrap_or("")).or_default().push(info);
    }
    map
}

fn modified_secs(entry: &CatalogEntry) -> u64 {
    std::fs::metadata(&entry.path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// GET `/v1/models`: every downloaded model (a request can load it just in time) and every loaded instance
/// whose identifier is not a model key.
pub(crate) async fn openai_models(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (entries, infos) = snapshot(&state).await?;
    let mut data: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({"id": e.model_key, "object": "model", "created": modified_secs(e),
                   "owned_by": publisher(&e.model_key)})
        })
        .collect();
    for info in &infos {
        let (id, key) = (info["identifier"].as_str().unwrap_or(""), info["model_key"].as_str().unwrap_or(""));
        if id != key {
            data.push(json!({"id": id, "object": "model", "created": 0, "owned_by": publisher(key)}));
        }
    }
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

fn v0_model(entry: &CatalogEntry, loaded: Option<&Vec<&Value>>) -> Value {
    let kind = match entry.kind {
        ModelKind::Llm => "llm",
        ModelKind::Embedding => "embeddings",
    };
    let mut out = json!({
        "id": entry.model_key, "object": "model", "type": kind, "publisher": publisher(&entry.model_key),
        "arch": entry.architecture, "compatibility_type": entry.format.as_str(), "quantization": entry.quantization,
        "state": if loaded.is_some() { "loaded" } else { "not-loaded" },
        "max_context_length": entry.max_context_length,
    });
    if let Some(first) = loaded.and_then(|l| l.first()) {
        out["loaded_context_length"] = first["context_length"].clone();
    }
    out
}

/// GET `/api/v0/models`.
pub(crate) async fn v0_models(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (entries, infos) = snapshot(&state).await?;
    let loaded = by_path(&infos);
    let data: Vec<Value> =
        entries.iter().map(|e| v0_model(e, loaded.get(e.path.display().to_string().as_str()))).collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

/// GET `/api/v0/models/{*model}`: the key keeps its slashes in the path; an alias or an identifier works too.
pub(crate) async fn v0_model_one(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    check_model_name(&model)?;
    let host = state.host.clone();
    let (entry, infos) = blocking(move || {
        let entry = match host.catalog().resolve(&model) {
            Ok(entry) => entry,
            Err(e) => match host.instance(&model) {
                Some(h) => host.catalog().resolve(&h.model_key)?,
                None => return Err(e.into()),
            },
        };
        let infos: Vec<Value> = host.list_loaded(Some(entry.kind)).iter().filter_map(|h| h.info().ok()).collect();
        Ok((entry, infos))
    })
    .await?;
    let loaded = by_path(&infos);
    Ok(Json(v0_model(&entry, loaded.get(entry.path.display().to_string().as_str()))).into_response())
}

/// Bits per weight of a quantization name ("Q4_K_M" → 4, "BF16" → 16).
fn bits_per_weight(quantization: &str) -> Option<u32> {
    let q = quantization.to_ascii_uppercase();
    let digits = q.trim_start_matches("BF").trim_start_matches(['Q', 'F', 'I']);
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// LM Studio's view of an instance's load config.
fn v1_load_config(kind: ModelKind, applied: &Value) -> Value {
    match kind {
        ModelKind::Llm => json!({
            "context_length": applied["context_length"], "eval_batch_size": applied["eval_batch_size"],
            "flash_attention": false, "offload_kv_cache_to_gpu": true,
        }),
        ModelKind::Embedding => json!({"context_length": applied["context_length"]}),
    }
}

/// GET `/api/v1/models`.
pub(crate) async fn v1_models(State(state): State<AppState>) -> Result<Response, ApiError> {
    let host = state.host.clone();
    let (entries, loaded) = blocking(move || {
        let entries = host.catalog().list(None);
        let loaded: Vec<(Value, Value)> =
            host.list_loaded(None).iter().filter_map(|h| Some((h.info().ok()?, h.load_config().ok()?))).collect();
        Ok((entries, loaded))
    })
    .await?;
    let models: Vec<Value> = entries
        .iter()
        .map(|e| {
            let path = e.path.display().to_string();
            let instances: Vec<Value> = loaded
                .iter()
                .filter(|(info, _)| info["path"].as_str() == Some(path.as_str()))
                .map(|(info, applied)| json!({"id": info["identifier"], "config": v1_load_config(e.kind, applied)}))
                .collect();
            let mut m = json!({
                "type": e.kind.as_str(), "publisher": publisher(&e.model_key), "key": e.model_key,
                "display_name": e.display_name,
                "quantization": {"name": e.quantization, "bits_per_weight": bits_per_weight(&e.quantization)},
                "size_bytes": e.size_bytes, "params_string": e.params_string, "loaded_instances": instances,
                "max_context_length": e.max_context_length, "format": e.format.as_str(),
            });
            if e.kind == ModelKind::Llm {
                m["architecture"] = json!(e.architecture);
                m["capabilities"] = json!({"vision": false, "trained_for_tool_use": e.trained_for_tool_use});
                m["description"] = Value::Null;
            }
            m
        })
        .collect();
    Ok(Json(json!({"models": models})).into_response())
}

/// LM Studio's load fields (top level, or under `config` as its older docs have them).
#[derive(Deserialize, Default)]
pub(crate) struct V1LoadFields {
    context_length: Option<u64>,
    eval_batch_size: Option<u64>,
    flash_attention: Option<bool>,
    num_experts: Option<Value>,
    offload_kv_cache_to_gpu: Option<bool>,
}

/// The body of `POST /api/v1/models/load`.
#[derive(Deserialize)]
pub(crate) struct V1LoadRequest {
    model: Option<String>,
    echo_load_config: Option<bool>,
    ttl: Option<f64>,
    config: Option<V1LoadFields>,
    context_length: Option<u64>,
    eval_batch_size: Option<u64>,
    flash_attention: Option<bool>,
    num_experts: Option<Value>,
    offload_kv_cache_to_gpu: Option<bool>,
}

impl V1LoadRequest {
    /// The core's flat load config for a model of `kind`; fields we cannot honour are refused.
    fn load_config(&self, kind: ModelKind) -> Result<LoadConfig, ApiError> {
        let nested = self.config.as_ref();
        let pick = |top: Option<u64>, f: fn(&V1LoadFields) -> Option<u64>| top.or_else(|| nested.and_then(f));
        let context_length = pick(self.context_length, |c| c.context_length);
        let eval_batch_size = pick(self.eval_batch_size, |c| c.eval_batch_size);
        let flash = self.flash_attention.or_else(|| nested.and_then(|c| c.flash_attention));
        let offload = self.offload_kv_cache_to_gpu.or_else(|| nested.and_then(|c| c.offload_kv_cache_to_gpu));
        let experts = self.num_experts.clone().or_else(|| nested.and_then(|c| c.num_experts.clone()));
        if flash == Some(true) {
            return Err(ApiError::not_supported("flash_attention", "flash_attention: only false is supported"));
        }
        if offload == Some(false) {
            return Err(ApiError::not_supported(
                "offload_kv_cache_to_gpu",
                "offload_kv_cache_to_gpu: the KV cache always lives with its layer (only true is supported)",
            ));
        }
        if experts.is_some_and(|v| !v.is_null()) {
            return Err(ApiError::not_supported(
                "num_experts",
                "num_experts: mixture-of-experts models are not supported",
            ));
        }
        if kind == ModelKind::Embedding && eval_batch_size.is_some() {
            return Err(ApiError::not_supported("eval_batch_size", "eval_batch_size applies to LLMs only"));
        }
        let flat = json!({"context_length": context_length, "eval_batch_size": eval_batch_size});
        LoadConfig::from_json(&flat).map_err(ApiError::from)
    }
}

/// POST `/api/v1/models/load`: a new instance, as `lms load` (`key:2` when one is loaded).
pub(crate) async fn v1_load(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<V1LoadRequest>,
) -> Result<Response, ApiError> {
    let model =
        req.model.clone().ok_or_else(|| ApiError::bad_request("the request needs a model").with_param("model"))?;
    check_model_name(&model).map_err(|e| e.with_param("model"))?;
    let ttl = match req.ttl {
        None => None,
        Some(t) if t.is_finite() && t >= 0.0 => Some(std::time::Duration::from_secs_f64(t)),
        Some(t) => return Err(ApiError::invalid("ttl", format!("ttl must be a non-negative number, got {t}"))),
    };
    let host = state.host.clone();
    let echo = req.echo_load_config == Some(true);
    let (kind, id, applied, seconds) = blocking(move || {
        let entry = host.catalog().resolve(&model).map_err(|e| ApiError::from(e).with_param("model"))?;
        let config = req.load_config(entry.kind)?;
        let started = Instant::now();
        let mut load = LoadRequest::new(ttl, config, Progress::new(None));
        load.loaded_by = Some(LoadedBy::Server);
        let handle = host.load_new_instance(entry.kind, &entry.model_key, None, load)?;
        let seconds = started.elapsed().as_secs_f64();
        Ok((entry.kind, handle.identifier.clone(), handle.load_config()?, seconds))
    })
    .await?;
    let mut out = json!({
        "type": kind.as_str(), "instance_id": id, "model_instance_id": id,
        "load_time_seconds": seconds, "status": "loaded",
    });
    if echo {
        out["load_config"] = v1_load_config(kind, &applied);
    }
    Ok(Json(out).into_response())
}

/// The body of `POST /api/v1/models/unload`.
#[derive(Deserialize)]
pub(crate) struct V1UnloadRequest {
    instance_id: String,
}

/// POST `/api/v1/models/unload`: by instance identifier only.
pub(crate) async fn v1_unload(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<V1UnloadRequest>,
) -> Result<Response, ApiError> {
    check_model_name(&req.instance_id).map_err(|e| e.with_param("instance_id"))?;
    let host = state.host.clone();
    let id = req.instance_id.clone();
    blocking(move || match host.instance(&id) {
        Some(handle) => {
            handle.unload();
            Ok(())
        }
        None => {
            let loaded: Vec<String> = host.list_loaded(None).into_iter().map(|h| h.identifier).collect();
            Err(ApiError::model_not_found(format!(
                "no loaded instance has the identifier {id:?}; loaded: {}",
                if loaded.is_empty() { "none".to_string() } else { loaded.join(", ") }
            ))
            .with_param("instance_id"))
        }
    })
    .await?;
    Ok(Json(json!({"instance_id": req.instance_id})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantization_bits() {
        assert_eq!(bits_per_weight("Q4_1"), Some(4));
        assert_eq!(bits_per_weight("Q4_K_M"), Some(4));
        assert_eq!(bits_per_weight("Q8_0"), Some(8));
        assert_eq!(bits_per_weight("F16"), Some(16));
        assert_eq!(bits_per_weight("BF16"), Some(16));
        assert_eq!(bits_per_weight("F32"), Some(32));
        assert_eq!(bits_per_weight("IQ2_XS"), Some(2));
        assert_eq!(bits_per_weight("mixed"), None);
    }
}
