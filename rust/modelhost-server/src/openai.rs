//! OpenAI-compatible routes (`/v1/...`), which LM Studio's `/api/v0/...` routes extend with `stats`,
//! `model_info` and `runtime`. Models load just in time; fields we cannot honour are refused by name.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use modelhost_core::models::StopReason;
use modelhost_core::ChatMessage;
use modelhost_core::InstanceHandle;
use modelhost_core::ModelKind;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::run::{
    blocking, jit_model, json_event, prediction_events, sse_response, start_generation, Finished, GenEvent, PromptInput,
};
use crate::state::{unix_now, AppState};

/// Which API a completion route answers for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// OpenAI's `/v1`.
    OpenAi,
    /// LM Studio's `/api/v0`: OpenAI's answer plus `stats`, `model_info`, `runtime`.
    LmStudio,
}

/// `stop`: one string or several.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct MessageIn {
    role: String,
    content: Option<Value>,
    tool_calls: Option<Value>,
}

/// The body of `/chat/completions` and `/completions` (one struct: they share every sampling field).
#[derive(Deserialize)]
pub(crate) struct GenerateRequest {
    model: Option<String>,
    messages: Option<Vec<MessageIn>>,
    prompt: Option<Value>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    ttl: Option<f64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    min_p: Option<f64>,
    repeat_penalty: Option<f64>,
    seed: Option<i64>,
    stop: Option<Stop>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    // Recognised, refused unless at their defaults:
    tools: Option<Value>,
    functions: Option<Value>,
    tool_choice: Option<Value>,
    function_call: Option<Value>,
    response_format: Option<Value>,
    logprobs: Option<Value>,
    top_logprobs: Option<Value>,
    n: Option<u64>,
    best_of: Option<u64>,
    echo: Option<bool>,
    suffix: Option<Value>,
    logit_bias: Option<Value>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    audio: Option<Value>,
    modalities: Option<Value>,
}

fn is_empty_value(v: &Option<Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    }
}

impl GenerateRequest {
    /// 400 naming the first field we cannot honour; never silently ignored.
    fn refuse_unsupported(&self) -> Result<(), ApiError> {
        let refuse = |param: &str, why: &str| Err(ApiError::not_supported(param, format!("{param}: {why}")));
        if !is_empty_value(&self.tools) {
            return refuse("tools", "tool calling is not supported");
        }
        if !is_empty_value(&self.functions) {
            return refuse("functions", "function calling is not supported");
        }
        if !matches!(self.tool_choice.as_ref().and_then(Value::as_str), None | Some("none" | "auto"))
            && !is_empty_value(&self.tool_choice)
        {
            return refuse("tool_choice", "tool calling is not supported");
        }
        if !matches!(self.function_call.as_ref().and_then(Value::as_str), None | Some("none" | "auto"))
            && !is_empty_value(&self.function_call)
        {
            return refuse("function_call", "function calling is not supported");
        }
        if let Some(format) = self.response_format.as_ref().filter(|v| !v.is_null()) {
            if format.get("type").and_then(Value::as_str) != Some("text") {
                return refuse("response_format", "structured output is not supported (only {\"type\": \"text\"})");
            }
        }
        if self.logprobs.as_ref().is_some_and(|v| v.as_bool() == Some(true) || v.is_number()) {
            return refuse("logprobs", "log probabilities are not supported");
        }
        if !is_empty_value(&self.top_logprobs) {
            return refuse("top_logprobs", "log probabilities are not supported");
        }
        if self.n.is_some_and(|n| n != 1) {
            return refuse("n", "only one choice per request (n = 1) is supported");
        }
        if self.best_of.is_some_and(|n| n != 1) {
            return refuse("best_of", "only best_of = 1 is supported");
        }
        if self.echo == Some(true) {
            return refuse("echo", "echoing the prompt is not supported");
        }
        if !is_empty_value(&self.suffix) && self.suffix.as_ref().and_then(Value::as_str) != Some("") {
            return refuse("suffix", "suffixes (fill-in-the-middle) are not supported");
        }
        if !is_empty_value(&self.logit_bias) {
            return refuse("logit_bias", "logit bias is not supported");
        }
        if self.presence_penalty.is_some_and(|p| p != 0.0) {
            return refuse("presence_penalty", "only 0 is supported; use repeat_penalty");
        }
        if self.frequency_penalty.is_some_and(|p| p != 0.0) {
            return refuse("frequency_penalty", "only 0 is supported; use repeat_penalty");
        }
        if !is_empty_value(&self.audio) {
            return refuse("audio", "audio output is not supported");
        }
        if let Some(m) = self.modalities.as_ref().filter(|m| !m.is_null()) {
            if m != &json!(["text"]) {
                return refuse("modalities", "only [\"text\"] is supported");
            }
        }
        Ok(())
    }

    /// The core's flat prediction config.
    fn prediction_config(&self) -> Map<String, Value> {
        let mut c = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                c.insert(k.to_string(), v);
            }
        };
        put("temperature", self.temperature.map(Value::from));
        put("top_p", self.top_p.map(Value::from));
        // LM Studio: a top_k of 0 or less switches it off, which is the core's 0.
        put("top_k", self.top_k.map(|k| Value::from(k.max(0))));
        put("min_p", self.min_p.map(Value::from));
        put("repeat_penalty", self.repeat_penalty.map(Value::from));
        put("seed", self.seed.map(Value::from));
        put(
            "stop_strings",
            self.stop.as_ref().map(|s| match s {
                Stop::One(s) => json!([s]),
                Stop::Many(v) => json!(v),
            }),
        );
        // -1 (LM Studio) or any negative: until the end of generation or the context.
        let max = self.max_completion_tokens.or(self.max_tokens).filter(|&n| n >= 0);
        put("max_tokens", max.map(Value::from));
        c
    }

    fn ttl(&self, state: &AppState) -> Result<Option<Duration>, ApiError> {
        match self.ttl {
            None => Ok(state.config.default_ttl),
            Some(t) if t.is_finite() && t >= 0.0 => Ok(Some(Duration::from_secs_f64(t))),
            Some(t) => Err(ApiError::invalid("ttl", format!("ttl must be a non-negative number of seconds, got {t}"))),
        }
    }

    fn model(&self) -> Result<&str, ApiError> {
        self.model.as_deref().ok_or_else(|| {
            ApiError::bad_request("the request needs a model: its key or an instance identifier").with_param("model")
        })
    }

    fn include_usage(&self) -> bool {
        self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false)
    }
}

/// OpenAI chat messages as the chat template takes them.
fn chat_messages(messages: &[MessageIn]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty").with_param("messages"));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "user" | "assistant" => m.role.clone(),
            // OpenAI's newer name for system instructions.
            "developer" => "system".to_string(),
            "tool" | "function" => {
                return Err(ApiError::not_supported(
                    &format!("messages[{i}].role"),
                    format!("messages[{i}]: {} messages are not supported (no tool calling)", m.role),
                ))
            }
            other => {
                return Err(ApiError::bad_request(format!("messages[{i}].role {other:?} is not a chat role"))
                    .with_param(&format!("messages[{i}].role")))
            }
        };
        if !is_empty_value(&m.tool_calls) {
            return Err(ApiError::not_supported(
                &format!("messages[{i}].tool_calls"),
                "tool calls are not supported".to_string(),
            ));
        }
        let content = match &m.content {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut texts = Vec::new();
                for (j, part) in parts.iter().enumerate() {
                    let param = format!("messages[{i}].content[{j}]");
                    match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(text)) => texts.push(text),
                        (Some("text"), None) => {
                            return Err(ApiError::bad_request(format!("{param} has no text")).with_param(&param))
                        }
                        (kind, _) => {
                            return Err(ApiError::not_supported(
                                &param,
                                format!(
                                    "{param}: content of type {:?} is not supported (text only)",
                                    kind.unwrap_or("?")
                                ),
                            ))
                        }
                    }
                }
                texts.join("\n")
            }
            Some(_) => {
                let param = format!("messages[{i}].content");
                return Err(
                    ApiError::bad_request(format!("{param} must be a string or a list of parts")).with_param(&param)
                );
            }
        };
        out.push(ChatMessage { role, content });
    }
    Ok(out)
}

/// `/completions`' prompt: a string, a list of one string, or token ids.
fn completion_prompt(prompt: Option<&Value>) -> Result<PromptInput, ApiError> {
    let bad = |msg: &str| Err(ApiError::bad_request(msg.to_string()).with_param("prompt"));
    match prompt {
        None | Some(Value::Null) => bad("the request needs a prompt"),
        Some(Value::String(s)) => Ok(PromptInput::Text(s.clone())),
        Some(Value::Array(items)) if items.is_empty() => bad("the prompt is empty"),
        Some(Value::Array(items)) if items.iter().all(Value::is_u64) => {
            let ids = items.iter().filter_map(Value::as_u64).map(u32::try_from).collect::<Result<Vec<u32>, _>>();
            ids.map(PromptInput::Tokens).or_else(|_| bad("token ids must fit in 32 bits"))
        }
        Some(Value::Array(items)) if items.len() == 1 => completion_prompt(items.first()),
        Some(Value::Array(_)) => {
            Err(ApiError::not_supported("prompt", "prompt: only one prompt per request is supported".to_string()))
        }
        Some(_) => bad("the prompt must be a string, a list of one string, or a list of token ids"),
    }
}

fn finish_reason(stop: StopReason) -> &'static str {
    match stop {
        StopReason::MaxPredictedTokensReached | StopReason::ContextLengthReached => "length",
        StopReason::EosFound | StopReason::StopStringFound | StopReason::UserStopped => "stop",
    }
}

fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
           "total_tokens": prompt_tokens + completion_tokens})
}

/// LM Studio's extra fields of a `/api/v0` answer.
fn lmstudio_fields(out: &mut Value, finished: &Finished, info: &Value) {
    out["stats"] = json!({
        "tokens_per_second": finished.stats.tokens_per_second,
        "time_to_first_token": finished.stats.time_to_first_token_sec,
        "generation_time": finished.generation_time(),
        "stop_reason": finished.stats.stop_reason.as_str(),
    });
    out["model_info"] = json!({
        "arch": info["architecture"], "quant": info["quantization"], "format": info["format"],
        "context_length": info["context_length"],
    });
    out["runtime"] = runtime();
}

/// What runs the models (LM Studio's `runtime` field).
pub(crate) fn runtime() -> Value {
    json!({"name": "modelhost", "version": env!("CARGO_PKG_VERSION"), "supported_formats": ["gguf", "safetensors"]})
}

/// POST `/v1/chat/completions`.
pub(crate) async fn chat_completions(state: State<AppState>, body: ApiJson<GenerateRequest>) -> Response {
    generate(state, body, Flavor::OpenAi, true).await.unwrap_or_else(IntoResponse::into_response)
}

/// POST `/v1/completions`.
pub(crate) async fn completions(state: State<AppState>, body: ApiJson<GenerateRequest>) -> Response {
    generate(state, body, Flavor::OpenAi, false).await.unwrap_or_else(IntoResponse::into_response)
}

/// POST `/api/v0/chat/completions`.
pub(crate) async fn v0_chat_completions(state: State<AppState>, body: ApiJson<GenerateRequest>) -> Response {
    generate(state, body, Flavor::LmStudio, true).await.unwrap_or_else(IntoResponse::into_response)
}

/// POST `/api/v0/completions`.
pub(crate) async fn v0_completions(state: State<AppState>, body: ApiJson<GenerateRequest>) -> Response {
    generate(state, body, Flavor::LmStudio, false).await.unwrap_or_else(IntoResponse::into_response)
}

async fn generate(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<GenerateRequest>,
    flavor: Flavor,
    chat: bool,
) -> Result<Response, ApiError> {
    let model = req.model()?.to_string();
    req.refuse_unsupported()?;
    let input = if chat {
        chat_messages(
            req.messages
                .as_deref()
                .ok_or_else(|| ApiError::bad_request("the request needs messages").with_param("messages"))?,
        )?
        .into()
    } else {
        completion_prompt(req.prompt.as_ref())?
    };
    let ttl = req.ttl(&state)?;
    let handle = jit_model(&state, ModelKind::Llm, &model, ttl).await?;
    let permit = state.admit(&handle)?;
    let info = if flavor == Flavor::LmStudio {
        let h = handle.clone();
        blocking(move || Ok(h.info()?)).await?
    } else {
        Value::Null
    };
    let config = Value::Object(req.prediction_config());
    let mut stream = start_generation(&state, handle.clone(), input, config, permit, Arc::new(AtomicBool::new(false)));
    let prompt_tokens = stream.ready().await.map_err(|e| match e.code {
        "context_length_exceeded" => e.or_param(if chat { "messages" } else { "prompt" }),
        _ => e,
    })?;
    let id = state.new_id(if chat { "chatcmpl" } else { "cmpl" });
    let reply = Reply { id, created: unix_now(), model: handle.identifier.clone(), chat, flavor, info };
    if req.stream != Some(true) {
        let finished = stream.finish().await?;
        return Ok(Json(reply.complete(prompt_tokens, &finished)).into_response());
    }
    let include_usage = req.include_usage();
    let mut sent_role = false;
    let events = prediction_events(stream, (), move |event| match event {
        GenEvent::Ready { .. } => (Vec::new(), false),
        GenEvent::Fragment(f) => {
            let mut out = Vec::new();
            if chat && !sent_role {
                sent_role = true;
                out.push(reply.chunk(json!({"role": "assistant", "content": ""}), None, include_usage));
            }
            out.push(reply.chunk(reply.delta(&f.content), None, include_usage));
            (out, false)
        }
        GenEvent::Done(finished) => {
            let mut out = Vec::new();
            if chat && !sent_role {
                out.push(reply.chunk(json!({"role": "assistant", "content": ""}), None, include_usage));
            }
            let mut last = reply.chunk_value(json!({}), Some(&finished), include_usage);
            if reply.flavor == Flavor::LmStudio {
                lmstudio_fields(&mut last, &finished, &reply.info);
            }
            out.push(json_event(None, &last));
            if include_usage {
                let mut usage_chunk = reply.envelope("chunk");
                usage_chunk["choices"] = json!([]);
                usage_chunk["usage"] = usage(prompt_tokens, finished.stats.predicted_tokens_count);
                out.push(json_event(None, &usage_chunk));
            }
            out.push(Event::default().data("[DONE]"));
            (out, true)
        }
        GenEvent::Failed(e) => (vec![json_event(None, &e.body(false)), Event::default().data("[DONE]")], true),
    });
    Ok(sse_response(events))
}

impl From<Vec<ChatMessage>> for PromptInput {
    fn from(messages: Vec<ChatMessage>) -> Self {
        PromptInput::Chat(messages)
    }
}

/// What every answer or chunk of one completion shares.
struct Reply {
    id: String,
    created: u64,
    model: String,
    chat: bool,
    flavor: Flavor,
    info: Value,
}

impl Reply {
    fn envelope(&self, kind: &str) -> Value {
        let object = match (self.chat, kind) {
            (true, "chunk") => "chat.completion.chunk",
            (true, _) => "chat.completion",
            (false, _) => "text_completion",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model})
    }

    fn delta(&self, content: &str) -> Value {
        json!({"content": content})
    }

    fn choice(&self, delta: Value, finished: Option<&Finished>) -> Value {
        let reason = finished.map(|f| finish_reason(f.stats.stop_reason));
        if self.chat {
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": reason})
        } else {
            let text = delta.get("content").cloned().unwrap_or(json!(""));
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": reason})
        }
    }

    fn chunk_value(&self, delta: Value, finished: Option<&Finished>, include_usage: bool) -> Value {
        let mut chunk = self.envelope("chunk");
        chunk["choices"] = json!([self.choice(delta, finished)]);
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    fn chunk(&self, delta: Value, finished: Option<&Finished>, include_usage: bool) -> Event {
        json_event(None, &self.chunk_value(delta, finished, include_usage))
    }

    fn complete(&self, prompt_tokens: usize, finished: &Finished) -> Value {
        let mut out = self.envelope("complete");
        let reason = finish_reason(finished.stats.stop_reason);
        out["choices"] = if self.chat {
            json!([{"index": 0, "message": {"role": "assistant", "content": finished.content},
                    "logprobs": null, "finish_reason": reason}])
        } else {
            json!([{"index": 0, "text": finished.content, "logprobs": null, "finish_reason": reason}])
        };
        out["usage"] = usage(prompt_tokens, finished.stats.predicted_tokens_count);
        if self.flavor == Flavor::LmStudio {
            lmstudio_fields(&mut out, finished, &self.info);
        }
        out
    }
}

/// The body of `/embeddings`.
#[derive(Deserialize)]
pub(crate) struct EmbeddingRequest {
    model: Option<String>,
    input: Option<Value>,
    encoding_format: Option<String>,
    dimensions: Option<u64>,
    ttl: Option<f64>,
}

/// POST `/v1/embeddings` and `/api/v0/embeddings`.
pub(crate) async fn embeddings(state: State<AppState>, body: ApiJson<EmbeddingRequest>) -> Response {
    embed(state, body).await.unwrap_or_else(IntoResponse::into_response)
}

async fn embed(State(state): State<AppState>, ApiJson(req): ApiJson<EmbeddingRequest>) -> Result<Response, ApiError> {
    let model =
        req.model.clone().ok_or_else(|| ApiError::bad_request("the request needs a model").with_param("model"))?;
    let texts: Vec<String> = match &req.input {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ApiError::bad_request("input must not be empty").with_param("input"))
        }
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            items.iter().filter_map(Value::as_str).map(str::to_string).collect()
        }
        Some(Value::Array(_)) => {
            return Err(ApiError::not_supported(
                "input",
                "input: token-id input is not supported; send text".to_string(),
            ))
        }
        _ => return Err(ApiError::bad_request("input must be a string or a list of strings").with_param("input")),
    };
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("encoding_format {other:?} is not float or base64"),
            ))
        }
    };
    let ttl = match req.ttl {
        None => state.config.default_ttl,
        Some(t) if t.is_finite() && t >= 0.0 => Some(Duration::from_secs_f64(t)),
        Some(t) => return Err(ApiError::invalid("ttl", format!("ttl must be a non-negative number, got {t}"))),
    };
    let handle = jit_model(&state, ModelKind::Embedding, &model, ttl).await?;
    let permit = state.admit(&handle)?;
    let identifier = handle.identifier.clone();
    let dimensions = req.dimensions;
    let (vectors, dim, tokens) = blocking(move || embed_texts(&handle, &texts, dimensions, permit)).await?;
    let data: Vec<Value> = vectors
        .chunks(dim.max(1))
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list", "data": data, "model": identifier,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response())
}

fn embed_texts(
    handle: &InstanceHandle,
    texts: &[String],
    dimensions: Option<u64>,
    _permit: crate::state::Permit,
) -> Result<(Vec<f32>, usize, usize), ApiError> {
    if let Some(d) = dimensions {
        let dim = handle.info()?["embedding_dimension"].as_u64().unwrap_or(0);
        if d != dim {
            return Err(ApiError::not_supported(
                "dimensions",
                format!("dimensions: this model's vectors have {dim} dimensions; {d} is not supported"),
            ));
        }
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    // The tokens the model sees (truncated at its max_seq_length, as sentence-transformers does).
    let mut tokens = 0;
    for t in &refs {
        tokens += handle.tokenize(t)?.len();
    }
    let (vectors, dim) = handle.embed(&refs)?;
    Ok((vectors, dim, tokens))
}
