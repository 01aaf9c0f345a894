//! Shared by the HTTP tests: the real models, a server on 127.0.0.1 over a private host, a real HTTP client,
//! SSE parsing, and a time bound on every test.

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use modelhost_core::{Host, HostOptions};
use modelhost_server::{RunningServer, ServerConfig};
use serde_json::Value;

pub const LLM_KEY: &str = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF";
pub const LLM_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const EMB_KEY: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// No test may take longer than this.
pub const TEST_BOUND: Duration = Duration::from_secs(180);

/// The models dir with both sample models; a missing model fails the test (never skips it).
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("MODELHOST_MODELS_DIR").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/modelhost/models"),
        PathBuf::from,
    );
    for needed in [dir.join(LLM_KEY).join(LLM_FILE), dir.join(EMB_KEY).join("model.safetensors")] {
        assert!(needed.is_file(), "sample model missing: {} (run `make models`)", needed.display());
    }
    dir
}

/// A private host over the real models dir, and a server over it on a free port.
pub struct TestServer {
    pub server: RunningServer,
    pub host: Host,
    pub url: String,
    pub client: reqwest::Client,
}

impl TestServer {
    pub fn start() -> Self {
        Self::with(ServerConfig::default())
    }

    pub fn with(config: ServerConfig) -> Self {
        Self::over(Host::new(models_dir(), HostOptions::default()).expect("host"), config)
    }

    pub fn over(host: Host, config: ServerConfig) -> Self {
        let server = RunningServer::start(&host, config).expect("server starts");
        let url = server.url().to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().expect("client");
        TestServer { server, host, url, client }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// POST JSON; (status, body as JSON).
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.client.post(self.url(path)).json(&body).send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// GET; (status, body as JSON).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST and read the whole SSE answer: (status, events as (name, data)).
    pub async fn post_sse(&self, path: &str, body: Value) -> (u16, Vec<(String, String)>) {
        let r = self
            .client
            .post(self.url(path))
            .header("accept", "text/event-stream")
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, parse_sse(&r.text().await.expect("body")))
    }
}

/// Server-Sent Events as (event name, data); comments skipped.
pub fn parse_sse(text: &str) -> Vec<(String, String)> {
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let (mut name, mut data) = (String::from("message"), Vec::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
        if !data.is_empty() {
            events.push((name, data.join("\n")));
        }
    }
    events
}

/// Run a test body with a time bound.
pub fn run<F: Future<Output = ()>>(body: F) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        tokio::time::timeout(TEST_BOUND, body).await.expect("the test took longer than its bound");
    });
}

/// The error body's fields, checking its shape.
pub fn error_of(body: &Value) -> (&str, &str, Option<&str>, &str) {
    let e = &body["error"];
    assert!(e.is_object(), "not an error body: {body}");
    let message = e["message"].as_str().expect("message");
    assert!(!message.is_empty());
    (e["type"].as_str().expect("type"), e["code"].as_str().unwrap_or(""), e["param"].as_str(), message)
}
