//! The OpenAI-compatible and LM Studio routes, over real HTTP on 127.0.0.1 with the real models.

mod common;

use base64::Engine as _;
use common::{error_of, parse_sse, run, TestServer, EMB_KEY, LLM_KEY};
use modelhost_core::ChatMessage;
use modelhost_core::LoadConfig;
use modelhost_core::ModelKind;
use modelhost_core::Progress;
use modelhost_core::{LoadRequest, Prompt};
use serde_json::{json, Value};

fn chat_body(model: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "system", "content": "You are concise."},
                     {"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0, "max_tokens": 24,
    });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

#[test]
fn model_lists() {
    run(async {
        let t = TestServer::start();
        let (status, body) = t.get("/v1/models").await;
        assert_eq!(status, 200);
        let ids: Vec<&str> = body["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert!(ids.contains(&LLM_KEY) && ids.contains(&EMB_KEY), "{ids:?}");
        assert_eq!(body["object"], "list");

        let (status, body) = t.get("/api/v0/models").await;
        assert_eq!(status, 200);
        let llm = body["data"].as_array().unwrap().iter().find(|m| m["id"] == LLM_KEY).unwrap().clone();
        assert_eq!(llm["state"], "not-loaded");
        assert_eq!(llm["type"], "llm");
        assert_eq!(llm["publisher"], "HuggingFaceTB");
        assert_eq!(llm["arch"], "llama");
        assert_eq!(llm["compatibility_type"], "gguf");
        assert_eq!(llm["quantization"], "Q4_1");
        assert!(llm["max_context_length"].as_u64().unwrap() >= 2048);

        // The key's slashes stay in the path, as LM Studio's ids do; an alias works too.
        let (status, one) = t.get(&format!("/api/v0/models/{LLM_KEY}")).await;
        assert_eq!((status, one["id"].as_str()), (200, Some(LLM_KEY)));
        let (status, one) = t.get("/api/v0/models/all-minilm-l6-v2").await;
        assert_eq!((status, one["type"].as_str()), (200, Some("embeddings")));
        let (status, body) = t.get("/api/v0/models/HuggingFaceTB/nope").await;
        assert_eq!(status, 404);
        assert_eq!(error_of(&body).1, "model_not_found");

        let (status, body) = t
            .post(
                "/api/v1/models/load",
                json!({"model": LLM_KEY, "context_length": 1024,
                                                                   "echo_load_config": true}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["type"], "llm");
        assert_eq!(body["status"], "loaded");
        assert_eq!(body["instance_id"], LLM_KEY);
        assert_eq!(body["load_config"]["context_length"], 1024);
        assert!(body["load_time_seconds"].as_f64().unwrap() > 0.0);
        // A second load is a new instance, as `lms load`.
        let (_, second) = t.post("/api/v1/models/load", json!({"model": "smollm2-135m-instruct"})).await;
        assert_eq!(second["instance_id"], format!("{LLM_KEY}:2"));
        assert!(second.get("load_config").is_none());

        let (_, body) = t.get("/api/v1/models").await;
        let llm = body["models"].as_array().unwrap().iter().find(|m| m["key"] == LLM_KEY).unwrap().clone();
        assert_eq!(llm["loaded_instances"].as_array().unwrap().len(), 2);
        assert_eq!(llm["loaded_instances"][0]["config"]["context_length"], 1024);
        assert_eq!(llm["quantization"], json!({"name": "Q4_1", "bits_per_weight": 4}));
        assert_eq!(llm["format"], "gguf");
        assert_eq!(llm["capabilities"]["vision"], false);
        let (_, v0) = t.get("/api/v0/models").await;
        let state = v0["data"].as_array().unwrap().iter().find(|m| m["id"] == LLM_KEY).unwrap()["state"].clone();
        assert_eq!(state, "loaded");
        let (_, openai) = t.get("/v1/models").await;
        assert!(openai["data"].as_array().unwrap().iter().any(|m| m["id"] == format!("{LLM_KEY}:2")));

        let (status, body) = t.post("/api/v1/models/unload", json!({"instance_id": format!("{LLM_KEY}:2")})).await;
        assert_eq!((status, body["instance_id"].as_str()), (200, Some(format!("{LLM_KEY}:2").as_str())));
        let (status, body) = t.post("/api/v1/models/unload", json!({"instance_id": "nope"})).await;
        assert_eq!((status, error_of(&body).0), (404, "invalid_request_error"));
        let (status, body) = t.post("/api/v1/models/load", json!({"model": LLM_KEY, "flash_attention": true})).await;
        assert_eq!((status, error_of(&body).2), (400, Some("flash_attention")));
        assert_eq!(t.host.list_loaded(None).len(), 1);
    });
}

#[test]
fn chat_and_completion_greedy_equal_in_process() {
    run(async {
        let t = TestServer::start();
        // Two fresh instances, one per path, so neither reuses the other's cache.
        let (status, _) = t
            .post(
                "/api/modelhost/v1/models/load_new_instance",
                json!({"kind": "llm", "key": LLM_KEY, "identifier": "http"}),
            )
            .await;
        assert_eq!(status, 200);
        let local = t
            .host
            .load_new_instance(
                ModelKind::Llm,
                LLM_KEY,
                Some("local"),
                LoadRequest::new(None, LoadConfig::default(), Progress::new(None)),
            )
            .unwrap();

        let (status, body) = t.post("/v1/chat/completions", chat_body("http", json!({}))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "http");
        assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
        let choice = &body["choices"][0];
        assert_eq!(choice["message"]["role"], "assistant");
        let http_text = choice["message"]["content"].as_str().unwrap().to_string();

        let messages = vec![
            ChatMessage { role: "system".into(), content: "You are concise.".into() },
            ChatMessage { role: "user".into(), content: "What is the capital of France?".into() },
        ];
        let prompt = local.apply_template(&messages, true).unwrap();
        let mut g = local.generate(Prompt::Text(prompt), &json!({"temperature": 0, "max_tokens": 24})).unwrap();
        g.finish(None).unwrap();
        assert_eq!(http_text, g.content(), "greedy chat over HTTP differs from in-process");
        assert!(http_text.contains("Paris"), "{http_text}");
        let usage = &body["usage"];
        assert_eq!(usage["completion_tokens"].as_u64().unwrap() as usize, g.stats().predicted_tokens_count);
        assert_eq!(usage["prompt_tokens"].as_u64().unwrap() as usize, g.stats().prompt_tokens_count);
        assert_eq!(
            usage["total_tokens"].as_u64().unwrap(),
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        );

        // Completions, with LM Studio's v0 extras; a stop string ends it with "stop".
        let (status, body) = t
            .post(
                "/api/v0/completions",
                json!({"model": "http", "prompt": "The capital of France is", "temperature": 0,
                                                "max_tokens": 12, "stop": "\n"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["object"], "text_completion");
        let mut g = local
            .generate(
                Prompt::Text("The capital of France is".into()),
                &json!({"temperature": 0, "max_tokens": 12, "stop_strings": ["\n"]}),
            )
            .unwrap();
        g.finish(None).unwrap();
        assert_eq!(body["choices"][0]["text"].as_str().unwrap(), g.content());
        let stats = &body["stats"];
        assert_eq!(stats["stop_reason"].as_str().unwrap(), g.stats().stop_reason.as_str());
        assert!(stats["tokens_per_second"].is_number() && stats["time_to_first_token"].is_number());
        assert!(stats["generation_time"].is_number());
        assert_eq!(body["model_info"]["arch"], "llama");
        assert_eq!(body["model_info"]["format"], "gguf");
        assert_eq!(body["runtime"]["name"], "modelhost");
        let finish = body["choices"][0]["finish_reason"].as_str().unwrap();
        assert_eq!(
            finish,
            if g.stats().stop_reason.as_str() == "maxPredictedTokensReached" { "length" } else { "stop" }
        );

        // Token-id prompts and max_tokens: -1 (until the end of generation).
        let ids = local.tokenize("Hello").unwrap();
        let (status, body) =
            t.post("/v1/completions", json!({"model": "http", "prompt": ids, "max_tokens": 4, "temperature": 0})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["usage"]["prompt_tokens"].as_u64().unwrap() as usize, ids.len());
        let (status, body) = t.post("/v1/chat/completions", chat_body("http", json!({"max_tokens": -1}))).await;
        assert_eq!(status, 200, "{body}");
        assert_ne!(body["choices"][0]["finish_reason"], "length");
    });
}

#[test]
fn streaming_chunks() {
    run(async {
        let t = TestServer::start();
        let r = t
            .client
            .post(t.url("/v1/chat/completions"))
            .json(&chat_body(LLM_KEY, json!({"stream": true, "stream_options": {"include_usage": true}})))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        let events = parse_sse(&r.text().await.unwrap());
        assert_eq!(events.last().unwrap().1, "[DONE]");
        let chunks: Vec<Value> =
            events[..events.len() - 1].iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
        assert!(chunks.len() >= 4, "{chunks:?}");
        let id = chunks[0]["id"].as_str().unwrap();
        assert!(chunks.iter().all(|c| c["id"] == id && c["object"] == "chat.completion.chunk"));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let (finish, usage_chunk) = (&chunks[chunks.len() - 2], &chunks[chunks.len() - 1]);
        assert!(finish["choices"][0]["finish_reason"].is_string());
        assert_eq!(finish["choices"][0]["delta"], json!({}));
        assert!(chunks[..chunks.len() - 2].iter().all(|c| c["choices"][0]["finish_reason"].is_null()));
        assert!(chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null() && c.get("usage").is_some()));
        assert_eq!(usage_chunk["choices"], json!([]));
        let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
        assert_eq!(usage_chunk["usage"]["completion_tokens"].as_u64().unwrap() > 0, !text.is_empty());

        // Without include_usage there is no usage chunk and no usage field.
        let r = t
            .client
            .post(t.url("/v1/completions"))
            .json(&json!({"model": LLM_KEY, "prompt": "Once upon a time", "max_tokens": 5, "stream": true}))
            .send()
            .await
            .unwrap();
        let events = parse_sse(&r.text().await.unwrap());
        let chunks: Vec<Value> =
            events[..events.len() - 1].iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
        assert!(chunks.iter().all(|c| c.get("usage").is_none() && c["object"] == "text_completion"));
        assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "length");
    });
}

#[test]
fn embeddings_float_and_base64() {
    run(async {
        let t = TestServer::start();
        let input = json!(["a sentence", "another one", ""]);
        let (status, floats) = t.post("/v1/embeddings", json!({"model": "all-minilm-l6-v2", "input": input})).await;
        assert_eq!(status, 200, "{floats}");
        let (status, b64) =
            t.post("/api/v0/embeddings", json!({"model": EMB_KEY, "input": input, "encoding_format": "base64"})).await;
        assert_eq!(status, 200, "{b64}");
        assert_eq!(floats["data"].as_array().unwrap().len(), 3);
        for (f, b) in floats["data"].as_array().unwrap().iter().zip(b64["data"].as_array().unwrap()) {
            let from_float: Vec<f32> =
                f["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            let bytes = base64::engine::general_purpose::STANDARD.decode(b["embedding"].as_str().unwrap()).unwrap();
            let from_b64: Vec<f32> = bytes.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            assert_eq!(from_float.len(), 384);
            assert_eq!(from_float, from_b64);
            assert_eq!(f["index"], b["index"]);
        }
        assert!(floats["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
        // The same vectors as in-process, for the same batch.
        let local = t.host.instance(EMB_KEY).unwrap();
        let (vectors, dim) = local.embed(&["a sentence", "another one", ""]).unwrap();
        let http: Vec<f32> = floats["data"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|d| d["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
            .collect();
        assert_eq!((http, dim), (vectors, 384));

        let (status, body) = t.post("/v1/embeddings", json!({"model": EMB_KEY, "input": [[1, 2, 3]]})).await;
        assert_eq!((status, error_of(&body).2), (400, Some("input")));
        let (status, body) = t.post("/v1/embeddings", json!({"model": EMB_KEY, "input": "x", "dimensions": 8})).await;
        assert_eq!((status, error_of(&body).2), (400, Some("dimensions")));
        let (status, body) = t.post("/v1/embeddings", json!({"model": LLM_KEY, "input": "x"})).await;
        assert_eq!((status, error_of(&body).1), (404, "wrong_model_kind"));
        let (status, body) = t.post("/v1/chat/completions", chat_body(EMB_KEY, json!({}))).await;
        assert_eq!((status, error_of(&body).1), (404, "wrong_model_kind"));
    });
}

#[test]
fn refused_requests() {
    run(async {
        let t = TestServer::start();
        let url = t.url("/v1/chat/completions");
        // Not JSON, no content type, wrong types: 400 with OpenAI's body.
        let r = t.client.post(&url).header("content-type", "application/json").body("{not json").send().await.unwrap();
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await.unwrap();
        assert_eq!(error_of(&body).0, "invalid_request_error");
        let r = t.client.post(&url).body(chat_body(LLM_KEY, json!({})).to_string()).send().await.unwrap();
        assert_eq!(r.status(), 400);
        assert!(error_of(&r.json::<Value>().await.unwrap()).3.contains("Content-Type"));
        let (status, body) = t.post("/v1/chat/completions", chat_body(LLM_KEY, json!({"temperature": "hot"}))).await;
        assert_eq!((status, error_of(&body).2), (400, Some("temperature")));
        let (status, body) = t.post("/v1/chat/completions", json!({"model": LLM_KEY, "messages": "hi"})).await;
        assert_eq!((status, error_of(&body).2), (400, Some("messages")));
        let (status, body) = t.post("/v1/chat/completions", json!({"messages": []})).await;
        assert_eq!((status, error_of(&body).2), (400, Some("model")));
        // Out of range: the core's check.
        let (status, body) = t.post("/v1/chat/completions", chat_body(LLM_KEY, json!({"top_p": 3}))).await;
        assert_eq!((status, error_of(&body).1), (400, "invalid_config"));

        // Fields we cannot honour are named, never ignored.
        for (field, value) in [
            ("tools", json!([{"type": "function", "function": {"name": "f"}}])),
            ("response_format", json!({"type": "json_object"})),
            ("logprobs", json!(true)),
            ("n", json!(2)),
            ("presence_penalty", json!(0.5)),
            ("logit_bias", json!({"1": 5})),
        ] {
            let (status, body) = t.post("/v1/chat/completions", chat_body(LLM_KEY, json!({field: value}))).await;
            let (kind, code, param, _) = error_of(&body);
            assert_eq!((status, kind, code, param), (400, "invalid_request_error", "not_supported", Some(field)));
        }
        // Their defaults are fine.
        let defaults = json!({"tools": [], "n": 1, "logprobs": false, "response_format": {"type": "text"},
                              "presence_penalty": 0, "frequency_penalty": 0, "user": "x", "max_tokens": 2});
        let (status, body) = t.post("/v1/chat/completions", chat_body(LLM_KEY, defaults)).await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = t
            .post(
                "/v1/chat/completions",
                json!({"model": LLM_KEY, "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            )
            .await;
        assert_eq!((status, error_of(&body).2), (400, Some("messages[0].content[0]")));

        // Unknown models: 404 with close matches, never a substitute; paths are never opened.
        let (status, body) = t.post("/v1/chat/completions", chat_body("smollm2-135m-instruc", json!({}))).await;
        let (_, code, param, message) = error_of(&body);
        assert_eq!((status, code, param), (404, "model_not_found", Some("model")));
        assert!(message.contains(LLM_KEY), "{message}");
        let real = common::models_dir().join(LLM_KEY).join(common::LLM_FILE);
        for name in [real.display().to_string(), format!("{LLM_KEY}/../{LLM_KEY}"), "../models".into(), "~/x".into()] {
            let (status, body) = t.post("/v1/chat/completions", chat_body(&name, json!({}))).await;
            assert_eq!((status, error_of(&body).1), (404, "model_not_found"), "{name}");
        }
        assert!(t.host.list_loaded(None).iter().all(|h| h.identifier == LLM_KEY));

        // A prompt past the context: 400, never truncated.
        let (status, _) = t
            .post(
                "/api/modelhost/v1/models/load_new_instance",
                json!({"kind": "llm", "key": LLM_KEY, "identifier": "small", "config": {"contextLength": 32}}),
            )
            .await;
        assert_eq!(status, 200);
        let long = "word ".repeat(100);
        let (status, body) = t
            .post("/v1/chat/completions", json!({"model": "small", "messages": [{"role": "user", "content": long}]}))
            .await;
        assert_eq!((status, error_of(&body).1, error_of(&body).2), (400, "context_length_exceeded", Some("messages")));
        let (status, body) = t.post("/v1/completions", json!({"model": "small", "prompt": long, "stream": true})).await;
        assert_eq!((status, error_of(&body).1), (400, "context_length_exceeded"));

        // Body limit, unknown routes, wrong methods.
        // On a client of its own: the server answers 413 and closes the connection while the body is still
        // being sent, and a pooled connection reused after that fails the next request.
        let big = json!({"model": LLM_KEY, "prompt": "x".repeat(17 << 20)});
        let r = reqwest::Client::new().post(t.url("/v1/completions")).json(&big).send().await.expect("request");
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!((status, error_of(&body).1), (413, "body_too_large"));
        let (status, body) = t.get("/v2/nothing").await;
        assert_eq!((status, error_of(&body).1), (404, "unknown_route"));
        let (status, body) = t.get("/v1/chat/completions").await;
        assert_eq!((status, error_of(&body).1), (405, "method_not_allowed"));
    });
}
