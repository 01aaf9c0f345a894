//! The lifecycle API and the server's behaviour under load, cancellation, stop, authentication and hostile
//! names, over real HTTP on 127.0.0.1 with the real models.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{error_of, models_dir, parse_sse, run, TestServer, EMB_KEY, LLM_FILE, LLM_KEY};
use modelhost_core::LoadConfig;
use modelhost_core::ModelKind;
use modelhost_core::Progress;
use modelhost_core::{Host, HostOptions, LoadRequest};
use modelhost_server::ServerConfig;
use serde_json::{json, Value};

const LIFE: &str = "/api/modelhost/v1";

fn decode_array(v: &Value) -> (Vec<usize>, Vec<f32>) {
    assert_eq!(v["dtype"], "float32");
    let shape = v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    let bytes = base64::engine::general_purpose::STANDARD.decode(v["data"].as_str().unwrap()).unwrap();
    (shape, bytes.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

#[test]
fn lifecycle_api() {
    run(async {
        let t = TestServer::start();
        let (status, health) = t.get(&format!("{LIFE}/health")).await;
        assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
        assert_eq!(health["pid"], std::process::id());

        let (_, downloaded) = t.get(&format!("{LIFE}/models/downloaded?kind=llm")).await;
        let models = downloaded["models"].as_array().unwrap();
        assert!(models.iter().all(|m| m["type"] == "llm"), "{models:?}");
        assert!(models.iter().any(|m| m["model_key"] == LLM_KEY), "{models:?}");
        let (status, body) = t.get(&format!("{LIFE}/models/downloaded?kind=nope")).await;
        assert_eq!((status, error_of(&body).0), (400, "InvalidConfigError"));

        // Get-or-load with progress: 0.0 first, increasing, 1.0 last, then done.
        let (status, events) = t
            .post_sse(
                &format!("{LIFE}/models/model"),
                json!({"kind": "llm", "key": "smollm2-135m-instruct", "ttl": null, "config": {"contextLength": 512}}),
            )
            .await;
        assert_eq!(status, 200);
        let progress: Vec<f64> = events
            .iter()
            .filter(|(n, _)| n == "model_load.progress")
            .map(|(_, d)| serde_json::from_str::<Value>(d).unwrap()["progress"].as_f64().unwrap())
            .collect();
        assert_eq!((progress.first(), progress.last()), (Some(&0.0), Some(&1.0)), "{progress:?}");
        assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
        let (name, done) = events.last().unwrap();
        assert_eq!(name, "model_load.done");
        let done: Value = serde_json::from_str(done).unwrap();
        let reference = done["info"]["instance_reference"].as_str().unwrap().to_string();
        assert_eq!(done["info"]["identifier"], LLM_KEY);
        assert_eq!(done["info"]["ttl"], Value::Null);
        assert_eq!(done["info"]["loaded_by"], "server");
        assert_eq!(done["load_config"]["context_length"], 512);
        // Loaded now: the same instance, no progress, config untouched.
        let (_, events) = t
            .post_sse(
                &format!("{LIFE}/models/model"),
                json!({"kind": "llm", "key": LLM_KEY, "config": {"contextLength": 64}}),
            )
            .await;
        assert_eq!(events.len(), 1);
        let again: Value = serde_json::from_str(&events[0].1).unwrap();
        assert_eq!(again["info"]["instance_reference"].as_str(), Some(reference.as_str()));
        assert_eq!(again["load_config"]["context_length"], 512);

        // Errors carry the exception class.
        let (status, body) = t.post(&format!("{LIFE}/models/model"), json!({"kind": "llm", "key": "nope"})).await;
        assert_eq!((status, error_of(&body).0), (404, "ModelNotFoundError"));
        let (status, body) =
            t.post(&format!("{LIFE}/models/model"), json!({"kind": "embedding", "key": LLM_KEY})).await;
        assert_eq!((status, error_of(&body).0), (404, "ModelKindError"));
        let (status, body) = t
            .post(
                &format!("{LIFE}/models/load_new_instance"),
                json!({"kind": "llm", "key": LLM_KEY, "identifier": LLM_KEY}),
            )
            .await;
        assert_eq!((status, error_of(&body).0), (409, "InstanceExistsError"));
        let (status, body) = t
            .post(
                &format!("{LIFE}/models/load_new_instance"),
                json!({"kind": "llm", "key": LLM_KEY, "config": {"flashAttention": true}}),
            )
            .await;
        assert_eq!((status, error_of(&body).0), (400, "NotSupportedError"));
        let (status, body) = t
            .post(
                &format!("{LIFE}/models/load_new_instance"),
                json!({"kind": "llm", "key": LLM_KEY, "config": {"nope": 1}}),
            )
            .await;
        assert_eq!((status, error_of(&body).0), (400, "InvalidConfigError"));
        let (status, body) = t.post(&format!("{LIFE}/models/model"), json!({"kind": "llm", "keyy": LLM_KEY})).await;
        assert_eq!((status, error_of(&body).0), (400, "ValueError"));
        let (status, body) = t.post(&format!("{LIFE}/models/model"), json!({"kind": "embedding", "key": null})).await;
        assert_eq!((status, error_of(&body).0), (404, "NoModelLoadedError"));

        // Instance calls.
        let target = json!({"identifier": LLM_KEY, "instance_reference": reference});
        let with = |extra: Value| {
            let mut b = target.clone();
            b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            b
        };
        let (_, tokens) = t.post(&format!("{LIFE}/instance/tokenize"), with(json!({"text": "Hello world"}))).await;
        let ids: Vec<u32> = serde_json::from_value(tokens["tokens"].clone()).unwrap();
        let local = t.host.instance(LLM_KEY).unwrap();
        assert_eq!(ids, local.tokenize("Hello world").unwrap());
        let (_, count) = t.post(&format!("{LIFE}/instance/count_tokens"), with(json!({"text": "Hello world"}))).await;
        assert_eq!(count["count"].as_u64().unwrap() as usize, ids.len());
        let (_, text) = t.post(&format!("{LIFE}/instance/detokenize"), with(json!({"tokens": ids}))).await;
        assert!(text["text"].as_str().unwrap().ends_with("Hello world"), "{text}");
        let (_, prompt) = t
            .post(
                &format!("{LIFE}/instance/apply_prompt_template"),
                with(json!({"messages": [{"role": "user", "content": "Hi"}]})),
            )
            .await;
        assert!(prompt["prompt"].as_str().unwrap().contains("Hi"));
        let (_, logits) = t.post(&format!("{LIFE}/instance/evaluate"), with(json!({"tokens": ids}))).await;
        let (shape, values) = decode_array(&logits);
        let (expected, vocab) = local.evaluate(&ids).unwrap();
        assert_eq!(shape, vec![ids.len(), vocab]);
        assert_eq!(values, expected);
        let (status, info) = t.post(&format!("{LIFE}/instance/info"), target.clone()).await;
        assert_eq!((status, info["context_length"].as_u64()), (200, Some(512)));
        assert_eq!(info["status"], "idle");
        let (_, cfg) = t.post(&format!("{LIFE}/instance/load_config"), target.clone()).await;
        assert_eq!(cfg["context_length"], 512);

        // respond: streamed fragments add up to the result, greedy as in-process.
        let (status, events) = t
            .post_sse(
                &format!("{LIFE}/instance/respond"),
                with(json!({"messages": [{"role": "user", "content": "Name a color."}],
                                  "config": {"temperature": 0, "maxTokens": 16}, "stream": true})),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(events[0].0, "prediction.started");
        let (last_name, last) = events.last().unwrap();
        assert_eq!(last_name, "prediction.result");
        let result: Value = serde_json::from_str(last).unwrap();
        let fragments: String = events
            .iter()
            .filter(|(n, _)| n == "prediction.fragment")
            .map(|(_, d)| serde_json::from_str::<Value>(d).unwrap()["content"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(fragments, result["content"].as_str().unwrap());
        assert_eq!(result["model_info"]["identifier"], LLM_KEY);
        let stats = &result["stats"];
        assert_eq!(
            stats["total_tokens_count"].as_u64(),
            Some(stats["prompt_tokens_count"].as_u64().unwrap() + stats["predicted_tokens_count"].as_u64().unwrap())
        );
        let (status, plain) = t
            .post(
                &format!("{LIFE}/instance/complete"),
                with(json!({"prompt": "Once upon a time", "config": {"temperature": 0, "maxTokens": 6}})),
            )
            .await;
        assert_eq!(status, 200, "{plain}");
        assert_eq!(plain["stats"]["stop_reason"], "maxPredictedTokensReached");
        assert_eq!(plain["tokens"].as_array().unwrap().len(), 6);

        // Cancel by id: the stream still ends with the result, stopped by the user.
        let r = t
            .client
            .post(t.url(&format!("{LIFE}/instance/complete")))
            .json(&with(json!({"prompt": "Once upon a time", "config": {"maxTokens": 400}, "stream": true})))
            .send()
            .await
            .unwrap();
        let mut r = r;
        let first = String::from_utf8(r.chunk().await.unwrap().unwrap().to_vec()).unwrap();
        let started: Value = serde_json::from_str(&parse_sse(&first)[0].1).unwrap();
        let (_, cancelled) =
            t.post(&format!("{LIFE}/prediction/cancel"), json!({"prediction_id": started["prediction_id"]})).await;
        assert_eq!(cancelled["cancelled"], true);
        let mut rest = first;
        while let Some(c) = r.chunk().await.unwrap() {
            rest.push_str(&String::from_utf8_lossy(&c));
        }
        let result: Value = serde_json::from_str(&parse_sse(&rest).last().unwrap().1).unwrap();
        assert_eq!(result["stats"]["stop_reason"], "userStopped");
        assert!(result["stats"]["predicted_tokens_count"].as_u64().unwrap() < 400);
        let (_, cancelled) = t.post(&format!("{LIFE}/prediction/cancel"), json!({"prediction_id": "pred-x"})).await;
        assert_eq!(cancelled["cancelled"], false);

        // Embeddings come back bit-exact.
        let (_, done) = t.post(&format!("{LIFE}/models/model"), json!({"kind": "embedding", "key": EMB_KEY})).await;
        let emb_target = json!({"identifier": EMB_KEY, "input": ["a", "b c"]});
        let (_, array) = t.post(&format!("{LIFE}/instance/embed"), emb_target).await;
        let (shape, values) = decode_array(&array);
        assert_eq!(shape, vec![2, 384]);
        let (expected, _) = t.host.instance(EMB_KEY).unwrap().embed(&["a", "b c"]).unwrap();
        assert_eq!(values, expected);
        assert_eq!(done["info"]["embedding_dimension"], 384);
        let (_, estimate) = t.post(&format!("{LIFE}/models/estimate"), json!({"kind": "llm", "key": LLM_KEY})).await;
        assert!(estimate["total_bytes"].as_u64().unwrap() > estimate["weights_bytes"].as_u64().unwrap());

        // Unload through a handle: once, then a no-op; a stale reference is a 410.
        let (_, u) = t.post(&format!("{LIFE}/instance/unload"), target.clone()).await;
        assert_eq!(u["unloaded"], true);
        let (_, u) = t.post(&format!("{LIFE}/instance/unload"), target.clone()).await;
        assert_eq!(u["unloaded"], false);
        let (status, body) = t.post(&format!("{LIFE}/instance/info"), target.clone()).await;
        assert_eq!((status, error_of(&body).0), (410, "ModelUnloadedError"));
        let (_, l) = t.post(&format!("{LIFE}/instance/is_loaded"), target.clone()).await;
        assert_eq!(l["loaded"], false);
        let (status, body) = t.post(&format!("{LIFE}/instance/info"), json!({"identifier": "nope"})).await;
        assert_eq!((status, error_of(&body).0), (404, "ModelNotFoundError"));
        // A new instance under the old identifier is not the old handle's.
        t.post(&format!("{LIFE}/models/model"), json!({"kind": "llm", "key": LLM_KEY})).await;
        let (status, _) = t.post(&format!("{LIFE}/instance/tokenize"), with(json!({"text": "x"}))).await;
        assert_eq!(status, 410);
        let (_, u) =
            t.post(&format!("{LIFE}/models/unload"), json!({"kind": "llm", "key": "smollm2-135m-instruct"})).await;
        assert_eq!(u["unloaded"], json!([LLM_KEY]));
        let (status, body) = t.post(&format!("{LIFE}/models/unload"), json!({"key": LLM_KEY})).await;
        assert_eq!((status, error_of(&body).0), (404, "ModelNotFoundError"));
    });
}

#[test]
fn clients_close_what_they_loaded() {
    run(async {
        let t = TestServer::start();
        let load = |id: &str, client: Option<&str>, no_hup: bool| json!({"kind": "llm", "key": LLM_KEY, "identifier": id, "client": client, "no_hup": no_hup});
        for (id, client, no_hup) in
            [("a1", Some("A"), false), ("a2", Some("A"), true), ("b1", Some("B"), false), ("s1", None, false)]
        {
            let (status, body) = t.post(&format!("{LIFE}/models/load_new_instance"), load(id, client, no_hup)).await;
            assert_eq!(status, 200, "{body}");
        }
        let (_, info) = t.post(&format!("{LIFE}/instance/info"), json!({"identifier": "a2"})).await;
        assert_eq!(
            (info["loaded_by"].as_str(), info["client_id"].as_str(), info["no_hup"].as_bool()),
            (Some("client"), Some("remote:A"), Some(true))
        );
        let (_, closed) = t.post(&format!("{LIFE}/client/close"), json!({"client": "A"})).await;
        assert_eq!(closed["unloaded"], json!(["a1"]));
        let left: Vec<String> = t.host.list_loaded(None).into_iter().map(|h| h.identifier).collect();
        assert_eq!(left, ["a2", "b1", "s1"]);

        // In-process: a shared host's close unloads only its own loads; the server's stay.
        let dir = models_dir();
        let first = Host::shared(dir.clone(), HostOptions::default()).unwrap();
        let second = Host::shared(dir, HostOptions::default()).unwrap();
        let req = || LoadRequest::new(None, LoadConfig::default(), Progress::new(None));
        let mine = first.load_new_instance(ModelKind::Llm, LLM_KEY, Some("mine"), req()).unwrap();
        let mut keep = req();
        keep.no_hup = true;
        first.load_new_instance(ModelKind::Llm, LLM_KEY, Some("kept"), keep).unwrap();
        let seen: Vec<String> = second.list_loaded(None).into_iter().map(|h| h.identifier).collect();
        assert!(seen.contains(&"mine".to_string()) && seen.contains(&"kept".to_string()), "{seen:?}");
        assert_eq!(second.model(ModelKind::Llm, Some("mine"), req()).unwrap().reference, mine.reference);
        let server = modelhost_server::RunningServer::start(&second, ServerConfig::default()).unwrap();
        let url = format!("{}/v1/chat/completions", server.url());
        let body = json!({"model": LLM_KEY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1});
        assert_eq!(t.client.post(&url).json(&body).send().await.unwrap().status(), 200);
        first.close();
        let seen: Vec<String> = second.list_loaded(None).into_iter().map(|h| h.identifier).collect();
        assert!(!seen.contains(&"mine".to_string()) && seen.contains(&"kept".to_string()), "{seen:?}");
        assert!(!mine.is_loaded());
        assert!(matches!(first.list_loaded(None).len(), 0));
        assert!(first.model(ModelKind::Llm, Some(LLM_KEY), req()).is_err());
        // The server's request found "kept" loaded and used it: no load of its own.
        second.unload(None, "kept").unwrap();
        assert!(second.list_loaded(None).is_empty());
        drop(server);
    });
}

#[test]
fn single_flight_queue_cancel_and_ttl() {
    run(async {
        let t = TestServer::with(ServerConfig { queue_limit: 2, ..ServerConfig::default() });
        // Eight cold requests at once: one instance, never `:2`.
        let body = json!({"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}],
                          "max_tokens": 2, "ttl": 5});
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (client, url, body) = (t.client.clone(), t.url("/v1/chat/completions"), body.clone());
            tasks.push(tokio::spawn(
                async move { client.post(url).json(&body).send().await.unwrap().status().as_u16() },
            ));
        }
        let mut statuses = Vec::new();
        for task in tasks {
            statuses.push(task.await.unwrap());
        }
        // The queue admits 2 at a time: the rest may be turned away, but never loaded twice.
        assert!(statuses.iter().all(|s| *s == 200 || *s == 503), "{statuses:?}");
        assert!(statuses.contains(&200));
        let loaded: Vec<String> = t.host.list_loaded(None).into_iter().map(|h| h.identifier).collect();
        assert_eq!(loaded, [LLM_KEY]);

        // A full queue is 503 with Retry-After; a client that disconnects frees its place.
        // Greedy counting goes on until max_tokens: these predictions hold their places until cancelled.
        let long = json!({"model": LLM_KEY, "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 2000, "stream": true,
                          "temperature": 0});
        let mut streams = Vec::new();
        for _ in 0..2 {
            let mut r = t.client.post(t.url("/v1/completions")).json(&long).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.chunk().await.unwrap();
            streams.push(r);
        }
        let r = t.client.post(t.url("/v1/completions")).json(&long).send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "1");
        let body: Value = r.json().await.unwrap();
        assert_eq!(error_of(&body).1, "queue_full");
        drop(streams);
        let started = Instant::now();
        let short = json!({"model": LLM_KEY, "prompt": "Hi", "max_tokens": 2});
        loop {
            let (status, _) = t.post("/v1/completions", short.clone()).await;
            if status == 200 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "the disconnected streams were never cancelled");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let handle = t.host.instance(LLM_KEY).unwrap();
        assert_eq!(handle.info().unwrap()["in_flight"], 0);

        // The request's ttl applied when it loaded: the instance goes after 5 idle seconds.
        assert_eq!(handle.info().unwrap()["ttl"], 5.0);
        let started = Instant::now();
        while handle.is_loaded() {
            assert!(started.elapsed() < Duration::from_secs(30), "TTL never expired");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

#[test]
fn stop_drains_in_flight_requests() {
    run(async {
        let t = TestServer::start();
        let mut r = t
            .client
            .post(t.url("/v1/completions"))
            .json(&json!({"model": LLM_KEY, "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 48, "temperature": 0,
                          "stream": true}))
            .send()
            .await
            .unwrap();
        let mut text = String::from_utf8(r.chunk().await.unwrap().unwrap().to_vec()).unwrap();
        let server = std::sync::Arc::new(t.server);
        let stopper = server.clone();
        let stopping = tokio::task::spawn_blocking(move || stopper.stop());
        while let Some(c) = r.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&c));
        }
        stopping.await.unwrap();
        let events = parse_sse(&text);
        assert_eq!(events.last().unwrap().1, "[DONE]");
        let last: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "length", "the stream was cut instead of drained");
        assert!(!server.is_running());
        assert!(t.client.get(format!("{}/v1/models", t.url)).send().await.is_err(), "still accepting connections");
    });
}

#[test]
fn tokens_hosts_and_cors() {
    run(async {
        let t = TestServer::with(ServerConfig { api_token: Some("s3cret".into()), ..ServerConfig::default() });
        for path in ["/v1/models", "/api/v0/models", "/api/modelhost/v1/health", "/nope"] {
            let r = t.client.get(t.url(path)).send().await.unwrap();
            assert_eq!(r.status(), 401, "{path}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
            let body: Value = r.json().await.unwrap();
            assert_eq!(error_of(&body).0, "authentication_error");
            let r = t.client.get(t.url(path)).bearer_auth("wrong").send().await.unwrap();
            assert_eq!(r.status(), 401);
        }
        let r = t.client.get(t.url("/v1/models")).bearer_auth("s3cret").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("access-control-allow-origin").is_none(), "CORS must be off by default");
        // DNS rebinding: a Host header that is not loopback is refused.
        let r = t
            .client
            .get(t.url("/v1/models"))
            .bearer_auth("s3cret")
            .header("host", "evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);

        let t = TestServer::with(ServerConfig { cors: true, ..ServerConfig::default() });
        let r = t.client.get(t.url("/v1/models")).header("origin", "http://app.example").send().await.unwrap();
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        let r = t
            .client
            .request(reqwest::Method::OPTIONS, t.url("/v1/chat/completions"))
            .header("origin", "http://app.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,authorization")
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    });
}

#[test]
fn nothing_outside_the_models_dir() {
    run(async {
        // A models dir of our own: one model inside (a hard link to the sample), one symlink leading outside.
        let root = std::path::PathBuf::from(std::env::var_os("HOME").unwrap())
            .join(".cache/modelhost/fixtures")
            .join(format!("server-confined-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let real = models_dir().join(LLM_KEY).join(LLM_FILE);
        std::fs::create_dir_all(root.join("pub/inside")).unwrap();
        std::fs::create_dir_all(root.join("pub/outside")).unwrap();
        if std::fs::hard_link(&real, root.join("pub/inside/m.gguf")).is_err() {
            std::fs::copy(&real, root.join("pub/inside/m.gguf")).unwrap();
        }
        std::os::unix::fs::symlink(&real, root.join("pub/outside/m.gguf")).unwrap();
        std::os::unix::fs::symlink(models_dir().join(LLM_KEY), root.join("pub/linkdir")).unwrap();

        let host = Host::new(root.clone(), HostOptions::default()).unwrap();
        // In-process the symlinks are models (the user's own choice) ...
        assert_eq!(host.catalog().list(None).len(), 3);
        let t = TestServer::over(host, ServerConfig::default());
        // ... over HTTP only the one inside exists, and the others are never opened.
        let (_, models) = t.get("/v1/models").await;
        let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["pub/inside"]);
        for name in ["pub/outside", "pub/linkdir", "outside", real.to_str().unwrap()] {
            let (status, body) =
                t.post("/v1/completions", json!({"model": name, "prompt": "Hi", "max_tokens": 1})).await;
            assert_eq!((status, error_of(&body).1), (404, "model_not_found"), "{name}");
            let (status, _) = t.get(&format!("/api/v0/models/{name}")).await;
            assert_eq!(status, 404, "{name}");
            let (status, _) = t.post("/api/v1/models/load", json!({"model": name})).await;
            assert_eq!(status, 404, "{name}");
            let (status, body) =
                t.post(&format!("{LIFE}/models/load_new_instance"), json!({"kind": "llm", "key": name})).await;
            assert_eq!((status, error_of(&body).0), (404, "ModelNotFoundError"), "{name}");
        }
        // An instance loaded in-process through the symlink is not visible over HTTP.
        let outside = t
            .host
            .load_new_instance(
                ModelKind::Llm,
                "pub/outside",
                Some("ext"),
                LoadRequest::new(None, LoadConfig::default(), Progress::new(None)),
            )
            .unwrap();
        let (_, loaded) = t.get(&format!("{LIFE}/models/loaded")).await;
        assert_eq!(loaded["instances"], json!([]));
        let (status, _) = t.post("/v1/completions", json!({"model": "ext", "prompt": "Hi", "max_tokens": 1})).await;
        assert_eq!(status, 404);
        outside.unload();
        let (status, body) =
            t.post("/v1/completions", json!({"model": "pub/inside", "prompt": "Hi", "max_tokens": 1})).await;
        assert_eq!(status, 200, "{body}");
        drop(t);
        std::fs::remove_dir_all(&root).unwrap();
    });
}

#[test]
fn never_evicts_in_flight_and_jit_loads_outlive_their_client() {
    run(async {
        let options = HostOptions { max_loaded: Some(1), auto_evict: true, ..HostOptions::default() };
        let t = TestServer::over(Host::new(models_dir(), options).unwrap(), ServerConfig::default());
        // A cold request whose client goes away while its load runs: the load goes on for the next request,
        // which gets the same instance (one load, never `:2`).
        let body = json!({"model": LLM_KEY, "prompt": "Hi", "max_tokens": 1}).to_string();
        let addr = t.server.local_addr();
        let raw = body.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut socket = std::net::TcpStream::connect(addr).unwrap();
            write!(
                socket,
                "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{raw}",
                raw.len()
            )
            .unwrap();
            // Long enough for the handler to start the load; the socket then closes without reading an answer.
            std::thread::sleep(Duration::from_millis(20));
        })
        .await
        .unwrap();
        let r = t.client.post(t.url("/v1/completions")).header("content-type", "application/json").body(body);
        assert_eq!(r.send().await.unwrap().status(), 200);
        let loaded: Vec<String> = t.host.list_loaded(None).into_iter().map(|h| h.identifier).collect();
        assert_eq!(loaded, [LLM_KEY]);

        // With room for one instance, a busy one is never evicted: the embedding load is refused instead.
        let long = json!({"model": LLM_KEY, "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 2000, "temperature": 0,
                          "stream": true});
        let mut stream = t.client.post(t.url("/v1/completions")).json(&long).send().await.unwrap();
        assert_eq!(stream.status(), 200);
        stream.chunk().await.unwrap();
        let (status, body) = t.post("/v1/embeddings", json!({"model": EMB_KEY, "input": "x"})).await;
        assert_eq!((status, error_of(&body).1), (507, "insufficient_memory"), "{body}");
        assert!(stream.chunk().await.unwrap().is_some(), "the stream stopped");
        assert!(t.host.instance(LLM_KEY).unwrap().is_loaded());
        // Idle again, it is evicted to make room.
        drop(stream);
        let started = Instant::now();
        loop {
            let (status, _) = t.post("/v1/embeddings", json!({"model": EMB_KEY, "input": "x"})).await;
            if status == 200 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "the idle instance was never evicted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let loaded: Vec<String> = t.host.list_loaded(None).into_iter().map(|h| h.identifier).collect();
        assert_eq!(loaded, [EMB_KEY]);
    });
}
