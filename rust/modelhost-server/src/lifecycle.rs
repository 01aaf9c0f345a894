//! `/api/modelhost/v1/...`: every lifecycle call of the in-process API, for the remote `Client`
//! (docs/http-api.md). Errors name the modelhost exception class in `type`, so the client re-raises it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use modelhost_core::ChatMessage;
use modelhost_core::LoadConfig;
use modelhost_core::Progress;
use modelhost_core::{BoxError, Error};
use modelhost_core::{CatalogEntry, ModelKind};
use modelhost_core::{Host, InstanceHandle, LoadRequest, LoadedBy};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::lms_config;
use crate::run::{
    blocking, check_model_name, json_event, prediction_events, sse_response, start_generation, Finished, GenEvent,
    PromptInput,
};
use crate::state::AppState;

/// Where the lifecycle routes live.
pub(crate) const PREFIX: &str = "/api/modelhost/v1";
/// The in-process default TTL (python/modelhost/config.py `DEFAULT_TTL`): what an absent `ttl` means.
const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Load progress events buffered before the load waits for its reader.
const PROGRESS_BUFFER: usize = 16;

/// The lifecycle routes (mounted under `PREFIX`).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/server/stop", post(server_stop))
        .route("/models/downloaded", get(downloaded))
        .route("/models/loaded", get(loaded))
        .route("/models/model", post(get_or_load))
        .route("/models/load_new_instance", post(load_new_instance))
        .route("/models/unload", post(unload_models))
        .route("/models/estimate", post(estimate))
        .route("/client/close", post(client_close))
        .route("/instance/info", post(info))
        .route("/instance/is_loaded", post(is_loaded))
        .route("/instance/load_config", post(load_config))
        .route("/instance/unload", post(unload_instance))
        .route("/instance/tokenize", post(tokenize))
        .route("/instance/detokenize", post(detokenize))
        .route("/instance/count_tokens", post(count_tokens))
        .route("/instance/apply_prompt_template", post(apply_prompt_template))
        .route("/instance/evaluate", post(evaluate))
        .route("/instance/embed", post(embed))
        .route("/instance/respond", post(respond))
        .route("/instance/complete", post(complete))
        .route("/prediction/cancel", post(cancel_prediction))
}

fn parse_kind(kind: &str) -> Result<ModelKind, ApiError> {
    ModelKind::parse(kind).map_err(|e| ApiError::from(e).with_param("kind"))
}

/// `?kind=llm|embedding` (absent: both).
fn query_kind(query: Option<&str>) -> Result<Option<ModelKind>, ApiError> {
    let value = query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(k, v)| (k == "kind").then_some(v));
    value.filter(|v| !v.is_empty()).map(parse_kind).transpose()
}

async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok", "version": env!("CARGO_PKG_VERSION"), "pid": std::process::id(),
        "models_dir": state.host.catalog().dir().display().to_string(),
    }))
}

async fn server_stop(State(state): State<AppState>) -> Response {
    state.request_stop();
    (StatusCode::ACCEPTED, Json(json!({"stopping": true}))).into_response()
}

fn entry_dict(e: &CatalogEntry) -> Value {
    json!({
        "model_key": e.model_key, "type": e.kind.as_str(), "format": e.format.as_str(),
        "path": e.path.display().to_string(), "size_bytes": e.size_bytes, "architecture": e.architecture,
        "params_string": e.params_string, "quantization": e.quantization,
        "max_context_length": e.max_context_length, "display_name": e.display_name,
        "trained_for_tool_use": e.trained_for_tool_use,
    })
}

async fn downloaded(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Json<Value>, ApiError> {
    let kind = query_kind(query.as_deref())?;
    let host = state.host.clone();
    let entries = blocking(move || Ok(host.catalog().list(kind))).await?;
    Ok(Json(json!({"models": entries.iter().map(entry_dict).collect::<Vec<_>>()})))
}

async fn loaded(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Json<Value>, ApiError> {
    let kind = query_kind(query.as_deref())?;
    let host = state.host.clone();
    let infos: Vec<Value> =
        blocking(move || Ok(host.list_loaded(kind).iter().filter_map(|h| h.info().ok()).collect())).await?;
    Ok(Json(json!({"instances": infos})))
}

/// `ttl`: absent → `None` (the default), null → `Some(None)` (never), a number → `Some(Some(seconds))`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(d).map(Some)
}

fn ttl_of(ttl: Option<Option<f64>>) -> Result<Option<Duration>, ApiError> {
    match ttl {
        None => Ok(Some(DEFAULT_TTL)),
        Some(None) => Ok(None),
        Some(Some(t)) if t.is_finite() && t >= 0.0 => Ok(Some(Duration::from_secs_f64(t))),
        Some(Some(t)) => {
            Err(ApiError::invalid("ttl", format!("ttl must be a non-negative number of seconds or null, got {t}")))
        }
    }
}

/// Whose a load is: a remote client's own (its id, prefixed so it never names an in-process client), else
/// the server's (never unloaded by a client's close).
fn loaded_by(client: Option<&str>) -> LoadedBy {
    match client {
        Some(c) => LoadedBy::Client(format!("remote:{c}")),
        None => LoadedBy::Server,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelBody {
    kind: String,
    key: Option<String>,
    #[serde(default, deserialize_with = "present")]
    ttl: Option<Option<f64>>,
    config: Option<Value>,
    no_hup: Option<bool>,
    client: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewInstanceBody {
    kind: String,
    key: String,
    identifier: Option<String>,
    #[serde(default, deserialize_with = "present")]
    ttl: Option<Option<f64>>,
    config: Option<Value>,
    no_hup: Option<bool>,
    client: Option<String>,
}

/// What a load reports to its handler.
enum LoadEvent {
    Progress(f32),
    Done(Value),
    Failed(ApiError),
}

/// The load request of a lifecycle body, checked before anything runs.
struct LoadPlan {
    kind: ModelKind,
    ttl: Option<Duration>,
    config: LoadConfig,
    loaded_by: LoadedBy,
    no_hup: bool,
}

impl LoadPlan {
    fn new(
        kind: &str,
        ttl: Option<Option<f64>>,
        config: Option<&Value>,
        client: Option<&str>,
        no_hup: Option<bool>,
    ) -> Result<Self, ApiError> {
        let kind = parse_kind(kind)?;
        let flat = lms_config::load_config(kind, config.unwrap_or(&Value::Null))
            .map_err(|e| ApiError::from(e).or_param("config"))?;
        let config = LoadConfig::from_json(&flat).map_err(|e| ApiError::from(e).or_param("config"))?;
        if client.is_some_and(|c| c.trim().is_empty()) {
            return Err(ApiError::bad_request("client must not be empty").with_param("client"));
        }
        Ok(LoadPlan { kind, ttl: ttl_of(ttl)?, config, loaded_by: loaded_by(client), no_hup: no_hup.unwrap_or(false) })
    }
}

async fn get_or_load(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ModelBody>,
) -> Result<Response, ApiError> {
    if let Some(key) = &body.key {
        check_model_name(key).map_err(|e| e.with_param("key"))?;
    }
    let plan = LoadPlan::new(&body.kind, body.ttl, body.config.as_ref(), body.client.as_deref(), body.no_hup)?;
    let key = body.key;
    run_load(&state, &headers, move |host, progress| {
        let kind = plan.kind;
        let mut req = LoadRequest::new(plan.ttl, plan.config, progress);
        req.loaded_by = Some(plan.loaded_by);
        req.no_hup = plan.no_hup;
        host.model(kind, key.as_deref(), req)
    })
    .await
}

async fn load_new_instance(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewInstanceBody>,
) -> Result<Response, ApiError> {
    check_model_name(&body.key).map_err(|e| e.with_param("key"))?;
    if let Some(id) = &body.identifier {
        check_model_name(id).map_err(|e| e.with_param("identifier"))?;
    }
    let plan = LoadPlan::new(&body.kind, body.ttl, body.config.as_ref(), body.client.as_deref(), body.no_hup)?;
    let (key, identifier) = (body.key, body.identifier);
    run_load(&state, &headers, move |host, progress| {
        let kind = plan.kind;
        let mut req = LoadRequest::new(plan.ttl, plan.config, progress);
        req.loaded_by = Some(plan.loaded_by);
        req.no_hup = plan.no_hup;
        host.load_new_instance(kind, &key, identifier.as_deref(), req)
    })
    .await
}

fn wants_events(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/event-stream"))
}

/// Run a load on a blocking thread, reporting progress; SSE or plain JSON as the client asked. A load whose
/// client went away is cancelled at its next progress step.
async fn run_load(
    state: &AppState,
    headers: &HeaderMap,
    load: impl FnOnce(&Host, Progress<'_>) -> Result<InstanceHandle, Error> + Send + 'static,
) -> Result<Response, ApiError> {
    let (tx, mut rx) = mpsc::channel(PROGRESS_BUFFER);
    let host = state.host.clone();
    tokio::task::spawn_blocking(move || {
        let progress_tx = tx.clone();
        let mut report = move |fraction: f32| -> Result<(), BoxError> {
            progress_tx.blocking_send(LoadEvent::Progress(fraction)).map_err(|_| "the client disconnected".into())
        };
        let loaded = load(&host, Progress::new(Some(&mut report)));
        let event = match loaded.and_then(|h| Ok(json!({"info": h.info()?, "load_config": h.load_config()?}))) {
            Ok(done) => LoadEvent::Done(done),
            Err(e) => LoadEvent::Failed(e.into()),
        };
        let _ = tx.blocking_send(event);
    });
    let lost = || ApiError::internal("the load stopped without a result");
    let first = rx.recv().await.ok_or_else(lost)?;
    if !wants_events(headers) {
        let mut event = first;
        loop {
            match event {
                LoadEvent::Progress(_) => event = rx.recv().await.ok_or_else(lost)?,
                LoadEvent::Done(done) => return Ok(Json(done).into_response()),
                LoadEvent::Failed(e) => return Err(e),
            }
        }
    }
    if let LoadEvent::Failed(e) = first {
        return Err(e);
    }
    let events = futures_util::stream::unfold((Some(first), rx, false), |(pending, mut rx, ended)| async move {
        if ended {
            return None;
        }
        let event = match pending {
            Some(e) => e,
            None => rx.recv().await.unwrap_or_else(|| LoadEvent::Failed(ApiError::internal("the load stopped"))),
        };
        let (sse, last) = match event {
            LoadEvent::Progress(p) => (json_event(Some("model_load.progress"), &json!({"progress": p})), false),
            LoadEvent::Done(done) => (json_event(Some("model_load.done"), &done), true),
            LoadEvent::Failed(e) => (json_event(Some("error"), &e.body(true)), true),
        };
        Some((vec![sse], (None, rx, last)))
    });
    Ok(sse_response(events))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnloadModelsBody {
    kind: Option<String>,
    key: String,
}

async fn unload_models(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<UnloadModelsBody>,
) -> Result<Json<Value>, ApiError> {
    check_model_name(&body.key).map_err(|e| e.with_param("key"))?;
    let kind = body.kind.as_deref().map(parse_kind).transpose()?;
    let host = state.host.clone();
    let unloaded = blocking(move || Ok(host.unload(kind, &body.key)?)).await?;
    Ok(Json(json!({"unloaded": unloaded})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EstimateBody {
    kind: String,
    key: String,
    config: Option<Value>,
}

async fn estimate(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<EstimateBody>,
) -> Result<Json<Value>, ApiError> {
    check_model_name(&body.key).map_err(|e| e.with_param("key"))?;
    let plan = LoadPlan::new(&body.kind, None, body.config.as_ref(), None, None)?;
    let host = state.host.clone();
    let e = blocking(move || Ok(host.estimate(plan.kind, &body.key, &plan.config)?)).await?;
    let per_device: serde_json::Map<String, Value> = e.per_device.iter().map(|(d, b)| (d.clone(), json!(b))).collect();
    Ok(Json(json!({
        "weights_bytes": e.weights_bytes, "kv_cache_bytes": e.kv_cache_bytes, "scratch_bytes": e.scratch_bytes,
        "total_bytes": e.total_bytes, "per_device": per_device,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientBody {
    client: String,
}

async fn client_close(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ClientBody>,
) -> Result<Json<Value>, ApiError> {
    let host = state.host.clone();
    let id = match loaded_by(Some(&body.client)) {
        LoadedBy::Client(id) => id,
        _ => return Err(ApiError::internal("a client id without a client")),
    };
    let unloaded = blocking(move || Ok(host.unload_client_instances(&id))).await?;
    Ok(Json(json!({"unloaded": unloaded})))
}

/// Find the instance `identifier` names; with a reference, it must be that very instance (a handle's view).
fn resolve(host: &Host, identifier: &str, reference: Option<&str>) -> Result<InstanceHandle, ApiError> {
    check_model_name(identifier).map_err(|e| e.with_param("identifier"))?;
    match (host.instance(identifier), reference) {
        (Some(h), Some(r)) if h.reference != r => Err(gone(identifier)),
        (Some(h), _) => Ok(h),
        (None, Some(_)) => Err(gone(identifier)),
        (None, None) => {
            let loaded: Vec<String> = host.list_loaded(None).into_iter().map(|h| h.identifier).collect();
            Err(ApiError::from(Error::ModelNotFound { key: identifier.to_string(), suggestions: loaded })
                .with_param("identifier"))
        }
    }
}

fn gone(identifier: &str) -> ApiError {
    Error::ModelUnloaded { identifier: identifier.to_string(), reason: None }.into()
}

/// An instance, as addressed in every `/instance/...` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    identifier: String,
    instance_reference: Option<String>,
}

/// Run `f` on the addressed instance, on a blocking thread.
async fn on_instance<T: Send + 'static>(
    state: &AppState,
    identifier: String,
    reference: Option<String>,
    f: impl FnOnce(InstanceHandle) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let host = state.host.clone();
    blocking(move || f(resolve(&host, &identifier, reference.as_deref())?)).await
}

async fn info(State(state): State<AppState>, ApiJson(t): ApiJson<Target>) -> Result<Json<Value>, ApiError> {
    Ok(Json(on_instance(&state, t.identifier, t.instance_reference, |h| Ok(h.info()?)).await?))
}

async fn is_loaded(State(state): State<AppState>, ApiJson(t): ApiJson<Target>) -> Result<Json<Value>, ApiError> {
    let host = state.host.clone();
    let loaded = blocking(move || {
        Ok(resolve(&host, &t.identifier, t.instance_reference.as_deref()).is_ok_and(|h| h.is_loaded()))
    })
    .await?;
    Ok(Json(json!({"loaded": loaded})))
}

async fn load_config(State(state): State<AppState>, ApiJson(t): ApiJson<Target>) -> Result<Json<Value>, ApiError> {
    Ok(Json(on_instance(&state, t.identifier, t.instance_reference, |h| Ok(h.load_config()?)).await?))
}

async fn unload_instance(State(state): State<AppState>, ApiJson(t): ApiJson<Target>) -> Result<Json<Value>, ApiError> {
    let host = state.host.clone();
    let unloaded = blocking(move || match resolve(&host, &t.identifier, t.instance_reference.as_deref()) {
        Ok(h) => {
            h.unload();
            Ok(true)
        }
        // A handle unloading an instance that is already gone: a no-op, as in-process.
        Err(e) if e.code == "model_unloaded" => Ok(false),
        Err(e) => Err(e),
    })
    .await?;
    Ok(Json(json!({"unloaded": unloaded})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextBody {
    identifier: String,
    instance_reference: Option<String>,
    text: String,
}

async fn tokenize(State(state): State<AppState>, ApiJson(b): ApiJson<TextBody>) -> Result<Json<Value>, ApiError> {
    let tokens = on_instance(&state, b.identifier, b.instance_reference, move |h| Ok(h.tokenize(&b.text)?)).await?;
    Ok(Json(json!({"tokens": tokens})))
}

async fn count_tokens(State(state): State<AppState>, ApiJson(b): ApiJson<TextBody>) -> Result<Json<Value>, ApiError> {
    let n = on_instance(&state, b.identifier, b.instance_reference, move |h| Ok(h.tokenize(&b.text)?.len())).await?;
    Ok(Json(json!({"count": n})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensBody {
    identifier: String,
    instance_reference: Option<String>,
    tokens: Vec<u32>,
}

async fn detokenize(State(state): State<AppState>, ApiJson(b): ApiJson<TokensBody>) -> Result<Json<Value>, ApiError> {
    let text = on_instance(&state, b.identifier, b.instance_reference, move |h| Ok(h.detokenize(&b.tokens)?)).await?;
    Ok(Json(json!({"text": text})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    role: String,
    content: String,
}

fn messages(m: Vec<MessageBody>) -> Vec<ChatMessage> {
    m.into_iter().map(|m| ChatMessage { role: m.role, content: m.content }).collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateBody {
    identifier: String,
    instance_reference: Option<String>,
    messages: Vec<MessageBody>,
    add_generation_prompt: Option<bool>,
}

async fn apply_prompt_template(
    State(state): State<AppState>,
    ApiJson(b): ApiJson<TemplateBody>,
) -> Result<Json<Value>, ApiError> {
    let (msgs, add) = (messages(b.messages), b.add_generation_prompt.unwrap_or(true));
    let prompt =
        on_instance(&state, b.identifier, b.instance_reference, move |h| Ok(h.apply_template(&msgs, add)?)).await?;
    Ok(Json(json!({"prompt": prompt})))
}

/// A float32 array: shape, dtype, and its little-endian bytes in base64 (an exact round trip).
fn array(values: &[f32], rows: usize, cols: usize) -> Value {
    let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    json!({"shape": [rows, cols], "dtype": "float32", "data": base64::engine::general_purpose::STANDARD.encode(bytes)})
}

async fn evaluate(State(state): State<AppState>, ApiJson(b): ApiJson<TokensBody>) -> Result<Json<Value>, ApiError> {
    let st = state.clone();
    let out = on_instance(&state, b.identifier, b.instance_reference, move |h| {
        let _permit = st.admit(&h)?;
        let (logits, vocab) = h.evaluate(&b.tokens)?;
        Ok(array(&logits, b.tokens.len(), vocab))
    })
    .await?;
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedBody {
    identifier: String,
    instance_reference: Option<String>,
    input: Vec<String>,
}

async fn embed(State(state): State<AppState>, ApiJson(b): ApiJson<EmbedBody>) -> Result<Json<Value>, ApiError> {
    let st = state.clone();
    let out = on_instance(&state, b.identifier, b.instance_reference, move |h| {
        let _permit = st.admit(&h)?;
        let refs: Vec<&str> = b.input.iter().map(String::as_str).collect();
        let (vectors, dim) = h.embed(&refs)?;
        Ok(array(&vectors, refs.len(), dim))
    })
    .await?;
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RespondBody {
    identifier: String,
    instance_reference: Option<String>,
    messages: Vec<MessageBody>,
    config: Option<Value>,
    stream: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteBody {
    identifier: String,
    instance_reference: Option<String>,
    prompt: Value,
    config: Option<Value>,
    stream: Option<bool>,
}

async fn respond(State(state): State<AppState>, ApiJson(b): ApiJson<RespondBody>) -> Result<Response, ApiError> {
    let input = PromptInput::Chat(messages(b.messages));
    predict(state, b.identifier, b.instance_reference, input, b.config, b.stream.unwrap_or(false)).await
}

async fn complete(State(state): State<AppState>, ApiJson(b): ApiJson<CompleteBody>) -> Result<Response, ApiError> {
    let input = match b.prompt {
        Value::String(s) => PromptInput::Text(s),
        Value::Array(items) => {
            let ids: Option<Vec<u32>> = items.iter().map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok())).collect();
            PromptInput::Tokens(ids.ok_or_else(|| {
                ApiError::bad_request("prompt must be a string or a list of token ids").with_param("prompt")
            })?)
        }
        _ => return Err(ApiError::bad_request("prompt must be a string or a list of token ids").with_param("prompt")),
    };
    predict(state, b.identifier, b.instance_reference, input, b.config, b.stream.unwrap_or(false)).await
}

fn result_value(f: &Finished, snapshot: &Value) -> Value {
    let s = &f.stats;
    json!({
        "content": f.content, "tokens": f.tokens,
        "stats": {
            "prompt_tokens_count": s.prompt_tokens_count, "predicted_tokens_count": s.predicted_tokens_count,
            "total_tokens_count": s.prompt_tokens_count + s.predicted_tokens_count,
            "time_to_first_token_sec": s.time_to_first_token_sec, "tokens_per_second": s.tokens_per_second,
            "stop_reason": s.stop_reason.as_str(),
        },
        "model_info": snapshot["info"], "load_config": snapshot["load_config"],
    })
}

async fn predict(
    state: AppState,
    identifier: String,
    reference: Option<String>,
    input: PromptInput,
    config: Option<Value>,
    stream: bool,
) -> Result<Response, ApiError> {
    let config = lms_config::prediction_config(config.as_ref().unwrap_or(&Value::Null))
        .map_err(|e| ApiError::from(e).or_param("config"))?;
    // Snapshots first: a finished prediction's instance may be evicted right after it.
    let (handle, snapshot) = on_instance(&state, identifier, reference, |h| {
        let snapshot = json!({"info": h.info()?, "load_config": h.load_config()?});
        Ok((h, snapshot))
    })
    .await?;
    let permit = state.admit(&handle)?;
    let entry = state.register_prediction();
    let mut generation = start_generation(&state, handle, input, config, permit, entry.cancel.clone());
    generation.ready().await?;
    if !stream {
        let finished = generation.finish().await?;
        return Ok(Json(result_value(&finished, &snapshot)).into_response());
    }
    let started =
        json!({"prediction_id": entry.id, "model_info": snapshot["info"], "load_config": snapshot["load_config"]});
    // The id goes out at once, so the client can cancel while the prediction waits for its turn.
    let started =
        futures_util::stream::once(std::future::ready(vec![json_event(Some("prediction.started"), &started)]));
    let events = prediction_events(generation, Arc::new(entry), move |event| match event {
        GenEvent::Ready { .. } => (Vec::new(), false),
        GenEvent::Fragment(f) => {
            (vec![json_event(Some("prediction.fragment"), &json!({"content": f.content, "tokens": f.tokens}))], false)
        }
        GenEvent::Done(f) => (vec![json_event(Some("prediction.result"), &result_value(&f, &snapshot))], true),
        GenEvent::Failed(e) => (vec![json_event(Some("error"), &e.body(true))], true),
    });
    let events = futures_util::StreamExt::chain(started, events);
    Ok(sse_response(events))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    prediction_id: String,
}

async fn cancel_prediction(State(state): State<AppState>, ApiJson(b): ApiJson<CancelBody>) -> Json<Value> {
    Json(json!({"cancelled": state.cancel_prediction(&b.prediction_id)}))
}
