//! The server end to end: a real server on 127.0.0.1 port 0 with the neo-tiny fixture model,
//! a real HTTP client (hyper).

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use pixlm_engine::Engine;
use pixlm_models::LoadOptions;
use pixlm_server::{ServerConfig, ServerHandle};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn fixtures() -> Option<PathBuf> {
    let root = std::env::var_os("PIXLM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
        });
    let model = root.join("neo-tiny/model");
    if model.join("config.json").is_file() {
        Some(root)
    } else {
        eprintln!("skipping: no fixture model at {}", model.display());
        None
    }
}

fn start(f: impl FnOnce(&mut ServerConfig)) -> Option<ServerHandle> {
    let root = fixtures()?;
    let dir = root.join("neo-tiny/model");
    let engine = Engine::load(&dir, &LoadOptions::default()).expect("load the fixture model");
    let mut cfg = ServerConfig {
        port: 0,
        model_path: dir,
        served_name: Some("neo-tiny".into()),
        http_threads: 2,
        ..ServerConfig::default()
    };
    f(&mut cfg);
    Some(pixlm_server::spawn(engine, cfg).expect("start the server"))
}

/// The value of metric `name` (a sample line `name value`) in `/metrics` text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

fn png_data_url() -> String {
    let root = fixtures().expect("fixtures");
    let bytes = std::fs::read(root.join("neo-tiny/cases/single_image/image_1.png")).expect("png");
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

struct Resp {
    status: u16,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an OpenAI error body with this status; returns `error`.
    fn error(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        let e = v["error"].clone();
        for k in ["message", "type", "param", "code"] {
            assert!(e.get(k).is_some(), "error body without {k}: {v}");
        }
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        e
    }
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Resp {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .expect("request");
    let res = sender.send_request(req).await.expect("send");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes().to_vec();
    conn.abort();
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

async fn post(addr: SocketAddr, body: &Value) -> Resp {
    request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(body.to_string().into_bytes()),
    )
    .await
}

fn chat(text: &str, max_tokens: usize) -> Value {
    json!({"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0})
}

/// The `data:` payloads of an SSE body, `[DONE]` included.
fn sse_events(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8(body.to_vec()).expect("utf-8 stream");
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                .to_string()
        })
        .collect()
}

/// Parses a streamed answer: (text, finish reason, usage chunk if any).
fn parse_stream(r: &Resp) -> (String, String, Option<Value>) {
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = sse_events(&r.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    for (i, e) in events[..events.len() - 1].iter().enumerate() {
        let v: Value = serde_json::from_str(e).expect("chunk is JSON");
        assert_eq!(v["object"], "chat.completion.chunk", "{v}");
        let choices = v["choices"].as_array().expect("choices");
        if choices.is_empty() {
            usage = Some(v["usage"].clone());
            continue;
        }
        if i == 0 {
            assert_eq!(choices[0]["delta"]["role"], "assistant");
        }
        if let Some(t) = choices[0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if let Some(f) = choices[0]["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    (text, finish.expect("a chunk with finish_reason"), usage)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn stop(h: ServerHandle) {
    h.shutdown();
    h.wait().expect("clean shutdown");
}

#[test]
fn completions_streaming_images_and_info_endpoints() {
    let Some(h) = start(|c| c.response_cache = false) else {
        return;
    };
    let addr = h.addr;
    rt().block_on(async move {
        let r = post(addr, &chat("Describe a red circle.", 12)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert!(r.header("x-pixlm-cache").is_none());
        let v = r.json();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "neo-tiny");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        let text = v["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
            .to_string();
        let finish = v["choices"][0]["finish_reason"].as_str().expect("finish");
        assert!(finish == "stop" || finish == "length", "{finish}");
        let usage = &v["usage"];
        let prompt_tokens = usage["prompt_tokens"].as_u64().expect("prompt_tokens");
        let completion = usage["completion_tokens"]
            .as_u64()
            .expect("completion_tokens");
        assert!(prompt_tokens > 5);
        assert!((1..=12).contains(&completion));
        assert_eq!(
            usage["total_tokens"].as_u64(),
            Some(prompt_tokens + completion)
        );
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
        if finish == "length" {
            assert_eq!(completion, 12);
        }

        // The same request streamed: same text, same usage.
        let mut body = chat("Describe a red circle.", 12);
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let r = post(addr, &body).await;
        let (stext, sfinish, susage) = parse_stream(&r);
        assert_eq!(stext, text);
        assert_eq!(sfinish, finish);
        let susage = susage.expect("usage chunk");
        assert_eq!(susage["prompt_tokens"].as_u64(), Some(prompt_tokens));
        assert_eq!(susage["completion_tokens"].as_u64(), Some(completion));

        // max_completion_tokens, stop strings and a stream without usage.
        let mut body = json!({"messages": [{"role": "user", "content": "Count."}],
            "max_completion_tokens": 3, "temperature": 0, "stream": true});
        let (_, f, u) = parse_stream(&post(addr, &body).await);
        assert!(u.is_none());
        assert!(f == "stop" || f == "length");
        body["stream"] = json!(false);
        body["stop"] = json!(["\u{1}never"]);
        let v = post(addr, &body).await.json();
        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 3);

        // Sampling with a seed, penalties and top_p is accepted and reproducible.
        let seeded = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6,
            "temperature": 0.9, "top_p": 0.9, "seed": 42, "frequency_penalty": 0.5,
            "presence_penalty": 0.3});
        let a = post(addr, &seeded).await.json();
        let b = post(addr, &seeded).await.json();
        assert_eq!(
            a["choices"][0]["message"]["content"],
            b["choices"][0]["message"]["content"]
        );

        // An image as a data: URL: more prompt tokens than the text alone.
        let img = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": png_data_url()}},
            {"type": "text", "text": "What is in the picture?"}]}],
            "max_tokens": 4, "temperature": 0});
        let r = post(addr, &img).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let text_only = post(addr, &chat("What is in the picture?", 4)).await.json();
        let v = r.json();
        assert!(
            v["usage"]["prompt_tokens"].as_u64().unwrap()
                > text_only["usage"]["prompt_tokens"].as_u64().unwrap() + 16
        );

        let r = request(addr, "GET", "/v1/models", &[], None).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["data"][0]["id"], "neo-tiny");
        let r = request(addr, "GET", "/v1/models/neo-tiny", &[], None).await;
        assert_eq!(r.json()["id"], "neo-tiny");
        request(addr, "GET", "/v1/models/other", &[], None)
            .await
            .error(404);
        let r = request(addr, "GET", "/health", &[], None).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["status"], "ok");
        let r = request(addr, "GET", "/metrics", &[], None).await;
        assert_eq!(r.status, 200);
        let m = String::from_utf8(r.body).unwrap();
        for want in [
            "pixlm_requests_total{status=\"200\"}",
            "pixlm_queue_depth 0",
            "pixlm_running_sequences",
            "pixlm_prompt_tokens_total",
            "pixlm_generated_tokens_total",
            "pixlm_time_to_first_token_seconds_bucket{le=\"+Inf\"}",
            "pixlm_time_to_first_token_seconds_count",
            "pixlm_inter_token_latency_seconds_bucket{le=\"+Inf\"}",
            "pixlm_kv_running_tokens",
            "pixlm_kv_cache_bytes",
            "pixlm_kv_blocks_in_use",
        ] {
            assert!(m.contains(want), "metrics lack {want}:\n{m}");
        }
        // Requests above generated several tokens each: gaps between them were timed, and
        // the prefix cache holds their keys and values.
        assert!(metric(&m, "pixlm_inter_token_latency_seconds_count") > 0.0);
        assert!(metric(&m, "pixlm_kv_cache_bytes") > 0.0);
        assert!(metric(&m, "pixlm_kv_blocks_in_use") > 0.0);
    });
    stop(h);
}

#[test]
fn every_bad_request_gets_an_openai_error() {
    let Some(h) = start(|c| {
        c.api_key = Some("sekret".into());
        c.max_images = Some(1);
        c.max_image_side = Some(100);
        c.max_body_bytes = 1 << 20;
    }) else {
        return;
    };
    let addr = h.addr;
    let auth = [("authorization", "Bearer sekret")];
    rt().block_on(async move {
        let send = |body: Vec<u8>| request(addr, "POST", "/v1/chat/completions", &auth, Some(body));
        let ok = chat("hi", 1).to_string().into_bytes();

        // API key.
        let r = request(addr, "POST", "/v1/chat/completions", &[], Some(ok.clone())).await;
        assert_eq!(r.error(401)["code"], "invalid_api_key");
        let r = request(
            addr,
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer wrong")],
            Some(ok.clone()),
        )
        .await;
        r.error(401);
        r.error(401);
        assert_eq!(
            request(addr, "GET", "/v1/models", &[], None).await.status,
            401
        );
        assert_eq!(
            request(addr, "GET", "/v1/models", &auth, None).await.status,
            200
        );
        assert_eq!(send(ok.clone()).await.status, 200);

        // Malformed JSON and wrong types, naming the field.
        let e = send(b"{\"messages\": [".to_vec()).await.error(400);
        assert_eq!(e["code"], "invalid_json");
        send(b"[1, 2]".to_vec()).await.error(400);
        let bad = |patch: Value| {
            let mut v = chat("hi", 2);
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            v.to_string().into_bytes()
        };
        for (patch, param) in [
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"max_tokens": "many"}), "max_tokens"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"top_p": 0}), "top_p"),
            (json!({"temperature": 3}), "temperature"),
            (json!({"frequency_penalty": 5}), "frequency_penalty"),
            (json!({"seed": "x"}), "seed"),
            (json!({"stop": 3}), "stop"),
            (json!({"stop": ["a", 1]}), "stop[1]"),
            (json!({"stream": "yes"}), "stream"),
            (
                json!({"stream_options": {"include_usage": 1}}),
                "stream_options.include_usage",
            ),
            (json!({"model": 7}), "model"),
            (json!({"n": 0}), "n"),
            (json!({"n": 100}), "n"),
            (json!({"messages": "hi"}), "messages"),
            (json!({"messages": []}), "messages"),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "robot", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": []}]}),
                "messages[0].content",
            ),
            (
                json!({"response_format": {"type": "json_object"}}),
                "response_format",
            ),
            (json!({"response_format": "json"}), "response_format"),
        ] {
            let e = send(bad(patch.clone())).await.error(400);
            assert_eq!(e["param"], param, "{patch}: {e}");
        }
        let e = send(br#"{"max_tokens": 3}"#.to_vec()).await.error(400);
        assert_eq!(e["param"], "messages");
        // A plain-text response format is what the server does anyway.
        assert_eq!(
            send(bad(json!({"response_format": {"type": "text"}})))
                .await
                .status,
            200
        );
        // A known path with the wrong method: 405 with an error object and `Allow`.
        let r = request(addr, "GET", "/v1/chat/completions", &auth, None).await;
        assert_eq!(r.error(405)["code"], "method_not_allowed");
        let r = request(addr, "DELETE", "/v1/models", &auth, None).await;
        assert_eq!(r.error(405)["code"], "method_not_allowed");

        // Images: remote URLs, bad data, oversized, too many.
        let image = |urls: &[&str]| {
            let mut parts: Vec<Value> = urls
                .iter()
                .map(|u| json!({"type": "image_url", "image_url": {"url": u}}))
                .collect();
            parts.push(json!({"type": "text", "text": "what?"}));
            json!({"messages": [{"role": "user", "content": parts}], "max_tokens": 2})
                .to_string()
                .into_bytes()
        };
        let e = send(image(&["https://example.com/cat.png"]))
            .await
            .error(400);
        assert_eq!(e["code"], "remote_image_refused");
        assert!(e["message"].as_str().unwrap().contains("data:"));
        send(image(&["/etc/passwd"])).await.error(400);
        send(image(&["file:///etc/passwd"])).await.error(400);
        send(image(&["data:image/png;base64,AAAAAAAA"]))
            .await
            .error(400);
        send(image(&["data:image/png;base64,%%%"])).await.error(400);
        let png = png_data_url();
        let e = send(image(&[&png])).await.error(400);
        assert!(
            e["message"].as_str().unwrap().contains("image"),
            "oversized image: {e}"
        );
        let e = send(image(&[&png, &png])).await.error(400);
        assert_eq!(e["code"], "too_many_images");

        // Past the context (40960 tokens).
        let long = "word ".repeat(45_000);
        let e = send(chat(&long, 2).to_string().into_bytes())
            .await
            .error(400);
        assert_eq!(e["code"], "context_length_exceeded");
        let e = send(chat("hi", 50_000).to_string().into_bytes())
            .await
            .error(400);
        assert_eq!(e["code"], "context_length_exceeded");

        // Model names: served name, directory name, omitted; anything else 404.
        for name in ["neo-tiny", "model"] {
            let mut v = chat("hi", 1);
            v["model"] = json!(name);
            assert_eq!(send(v.to_string().into_bytes()).await.status, 200, "{name}");
        }
        let mut v = chat("hi", 1);
        v["model"] = json!("gpt-4o");
        let e = send(v.to_string().into_bytes()).await.error(404);
        assert_eq!(e["code"], "model_not_found");
        assert_eq!(e["param"], "model");

        // Body too large.
        let big = format!(
            "{{\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
            "x".repeat(2 << 20)
        );
        let e = send(big.into_bytes()).await.error(413);
        assert_eq!(e["code"], "request_too_large");

        // Unknown route.
        request(addr, "GET", "/v1/nothing", &auth, None)
            .await
            .error(404);

        // Still healthy.
        assert_eq!(request(addr, "GET", "/health", &[], None).await.status, 200);
        let m = String::from_utf8(request(addr, "GET", "/metrics", &[], None).await.body).unwrap();
        assert!(m.contains("pixlm_requests_total{status=\"400\"}"));
        assert!(m.contains("pixlm_requests_total{status=\"401\"}"));
    });
    stop(h);
}

#[test]
fn response_cache_returns_the_stored_answer() {
    let Some(h) = start(|_| {}) else {
        return;
    };
    let addr = h.addr;
    rt().block_on(async move {
        let body = chat("Tell me about squares.", 8);
        let a = post(addr, &body).await;
        assert_eq!(a.status, 200);
        assert!(a.header("x-pixlm-cache").is_none());
        let b = post(addr, &body).await;
        assert_eq!(b.header("x-pixlm-cache"), Some("hit"));
        let (a, b) = (a.json(), b.json());
        assert_eq!(a["choices"], b["choices"]);
        assert_eq!(
            a["usage"]["completion_tokens"],
            b["usage"]["completion_tokens"]
        );
        assert_eq!(
            b["usage"]["prompt_tokens_details"]["cached_tokens"],
            b["usage"]["prompt_tokens"]
        );

        // Streamed, the hit gives the same text.
        let mut sb = body.clone();
        sb["stream"] = json!(true);
        let r = post(addr, &sb).await;
        assert_eq!(r.header("x-pixlm-cache"), Some("hit"));
        let (text, _, _) = parse_stream(&r);
        assert_eq!(
            text,
            a["choices"][0]["message"]["content"].as_str().unwrap()
        );

        // A different max_tokens is a different request.
        let r = post(addr, &chat("Tell me about squares.", 7)).await;
        assert!(r.header("x-pixlm-cache").is_none());

        // Seeded sampling is cached; unseeded sampling is not.
        let seeded = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
            "temperature": 0.8, "seed": 7});
        assert!(post(addr, &seeded).await.header("x-pixlm-cache").is_none());
        assert_eq!(
            post(addr, &seeded).await.header("x-pixlm-cache"),
            Some("hit")
        );
        let random = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5});
        assert!(post(addr, &random).await.header("x-pixlm-cache").is_none());
        assert!(post(addr, &random).await.header("x-pixlm-cache").is_none());
    });
    stop(h);

    // --no-response-cache
    let Some(h) = start(|c| c.response_cache = false) else {
        return;
    };
    let addr = h.addr;
    rt().block_on(async move {
        let body = chat("Tell me about squares.", 4);
        post(addr, &body).await;
        assert!(post(addr, &body).await.header("x-pixlm-cache").is_none());
    });
    stop(h);
}

#[test]
fn bounded_queue_answers_everyone() {
    let Some(h) = start(|c| {
        c.queue_size = 4;
        c.max_running = 4;
        c.response_cache = false;
    }) else {
        return;
    };
    let addr = h.addr;
    rt().block_on(async move {
        let mut tasks = Vec::new();
        for i in 0..40 {
            tasks.push(tokio::spawn(async move {
                let mut body = chat(&format!("Request number {i}, say something."), 8);
                if i % 3 == 0 {
                    body["stream"] = json!(true);
                }
                post(addr, &body).await
            }));
        }
        let (mut ok, mut busy) = (0, 0);
        for t in tasks {
            let r = t.await.expect("task");
            match r.status {
                200 => {
                    ok += 1;
                    if r.header("content-type") == Some("text/event-stream") {
                        parse_stream(&r);
                    } else {
                        assert!(r.json()["choices"][0]["message"]["content"].is_string());
                    }
                }
                429 => {
                    busy += 1;
                    assert_eq!(r.header("retry-after"), Some("1"));
                    assert_eq!(r.error(429)["code"], "rate_limit_exceeded");
                }
                s => panic!(
                    "unexpected status {s}: {}",
                    String::from_utf8_lossy(&r.body)
                ),
            }
        }
        assert_eq!(ok + busy, 40);
        assert!(ok >= 4, "only {ok} answered");
        let r = request(addr, "GET", "/health", &[], None).await;
        assert_eq!(r.status, 200);
        // A client has its whole answer before the scheduler finishes the step that freed its
        // sequence, so the gauge reaches 0 a moment later: wait for it (bounded).
        let mut m = String::new();
        for _ in 0..50 {
            m = String::from_utf8(request(addr, "GET", "/metrics", &[], None).await.body).unwrap();
            if m.contains("pixlm_running_sequences 0") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(
            m.contains(&format!("pixlm_requests_total{{status=\"200\"}} {ok}")),
            "{m}"
        );
        assert!(m.contains("pixlm_running_sequences 0"), "{m}");
        // Several sequences shared forward passes: fewer steps than tokens generated.
        assert!(
            metric(&m, "pixlm_forward_steps_total") < metric(&m, "pixlm_generated_tokens_total"),
            "{m}"
        );
    });
    stop(h);
}

#[test]
fn disconnect_cancels_and_shutdown_drains() {
    let Some(h) = start(|c| {
        c.response_cache = false;
        // Long enough for the 400-token answer below on a machine busy with other work (a
        // starved run once took more than 20 s); a fast run waits only for the answer.
        c.grace = Duration::from_secs(120);
        c.default_max_tokens = 100_000;
    }) else {
        return;
    };
    let addr = h.addr;
    let rt = rt();
    rt.block_on(async move {
        // A long streamed answer whose client goes away after the first chunk.
        let body = json!({"messages": [{"role": "user", "content": "Go on forever."}],
            "max_tokens": 30_000, "temperature": 0, "stream": true,
            "frequency_penalty": -2.0});
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method("POST")
            .uri("/v1/chat/completions")
            .header("host", addr.to_string())
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        assert_eq!(res.status(), 200);
        let mut b = res.into_body();
        let first = b.frame().await.expect("a frame").expect("frame ok");
        assert!(first.data_ref().is_some());
        drop(b);
        drop(sender);
        conn.abort();
        let t0 = Instant::now();
        loop {
            let m =
                String::from_utf8(request(addr, "GET", "/metrics", &[], None).await.body).unwrap();
            if m.contains("pixlm_cancelled_total 1") && m.contains("pixlm_running_sequences 0") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the sequence was not cancelled:\n{m}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Shutdown: a running request finishes, new ones get 503, then the server stops.
    let running = rt.spawn(async move { post(addr, &chat("Last words?", 400)).await });
    rt.block_on(async move {
        // Wait until that request runs.
        let t0 = Instant::now();
        loop {
            let v = request(addr, "GET", "/health", &[], None).await.json();
            if v["running"].as_u64().unwrap_or(0) + v["waiting"].as_u64().unwrap_or(0) > 0 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the request never ran"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    h.shutdown();
    let late = rt.block_on(async move {
        let t0 = Instant::now();
        loop {
            let r = request(addr, "GET", "/health", &[], None).await;
            if r.status == 503 {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        post(addr, &chat("Too late", 2)).await
    });
    late.error(503);
    let r = rt.block_on(running).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["usage"]["completion_tokens"], 400);
    h.wait().expect("clean shutdown");
}

#[test]
fn batched_answers_equal_sequential_ones() {
    let Some(h) = start(|c| {
        c.response_cache = false;
        c.max_running = 8;
    }) else {
        return;
    };
    let addr = h.addr;
    rt().block_on(async move {
        let mut bodies: Vec<Value> = (0..5)
            .map(|i| chat(&"Tell me more about triangles. ".repeat(i + 1), 16 + 4 * i))
            .collect();
        bodies.push(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": png_data_url()}},
            {"type": "text", "text": "What is in the picture?"}]}],
            "max_tokens": 16, "temperature": 0}));
        let mut alone = Vec::new();
        for b in &bodies {
            let v = post(addr, b).await.json();
            alone.push(v["choices"][0]["message"]["content"].clone());
        }
        // All at once, staggered so that prompts join while others decode.
        let mut tasks = Vec::new();
        for (i, b) in bodies.iter().enumerate() {
            let b = b.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(3 * i as u64)).await;
                post(addr, &b).await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(
                r.json()["choices"][0]["message"]["content"],
                alone[i],
                "request {i}"
            );
        }
    });
    stop(h);
}

#[test]
fn several_choices_are_sampled_each_on_its_own() {
    let Some(h) = start(|c| c.response_cache = false) else {
        return;
    };
    let addr = h.addr;
    rt().block_on(async move {
        let body = |seed: u64, stream: bool| {
            json!({"messages": [{"role": "user", "content": "Tell me about shapes."}],
                "max_tokens": 8, "temperature": 1.0, "seed": seed, "n": 3, "stream": stream,
                "stream_options": {"include_usage": true}})
        };
        // Choice i of a seeded request is the one-choice request with seed + i.
        let v = post(addr, &body(40, false)).await.json();
        let choices = v["choices"].as_array().expect("choices").clone();
        assert_eq!(choices.len(), 3, "{v}");
        let mut completion = 0;
        for (i, c) in choices.iter().enumerate() {
            assert_eq!(c["index"], i);
            let mut one = body(40 + i as u64, false);
            one["n"] = json!(1);
            let alone = post(addr, &one).await.json();
            assert_eq!(c["message"], alone["choices"][0]["message"], "choice {i}");
            completion += alone["usage"]["completion_tokens"].as_u64().unwrap();
            if i == 0 {
                assert_eq!(v["usage"]["prompt_tokens"], alone["usage"]["prompt_tokens"]);
            }
        }
        // The prompt counts once, the completions add up.
        assert_eq!(v["usage"]["completion_tokens"].as_u64(), Some(completion));

        // Streamed: every chunk names its choice; each choice's text and finish match.
        let r = post(addr, &body(40, true)).await;
        assert_eq!(r.status, 200);
        let events = sse_events(&r.body);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let mut texts = vec![String::new(); 3];
        let mut finishes = vec![0; 3];
        let mut usage = None;
        for e in &events[..events.len() - 1] {
            let v: Value = serde_json::from_str(e).unwrap();
            let Some(c) = v["choices"].as_array().and_then(|c| c.first()) else {
                usage = Some(v["usage"].clone());
                continue;
            };
            let i = c["index"].as_u64().unwrap() as usize;
            if let Some(t) = c["delta"]["content"].as_str() {
                texts[i].push_str(t);
            }
            if c["finish_reason"].is_string() {
                finishes[i] += 1;
            }
        }
        assert_eq!(finishes, [1, 1, 1]);
        for (i, c) in choices.iter().enumerate() {
            assert_eq!(
                c["message"]["content"].as_str(),
                Some(texts[i].as_str()),
                "{i}"
            );
        }
        assert_eq!(
            usage.expect("usage chunk")["completion_tokens"].as_u64(),
            Some(completion)
        );
    });
    stop(h);
}

#[test]
fn second_turn_over_the_same_image_reuses_the_first_turns_cache() {
    let turn1 = json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_url()}},
        {"type": "text", "text": "What is in the picture?"}]}],
        "max_tokens": 8, "temperature": 0});
    let turn2 = |answer: &Value| {
        json!({"messages": [
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": png_data_url()}},
                {"type": "text", "text": "What is in the picture?"}]},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "And what colour is it?"}],
            "max_tokens": 8, "temperature": 0})
    };
    // Without the prefix cache: the reference answers.
    let Some(h) = start(|c| {
        c.response_cache = false;
        c.prefix_entries = 0;
    }) else {
        return;
    };
    let addr = h.addr;
    let t1 = turn1.clone();
    let (a1, a2) = rt().block_on(async move {
        let r1 = post(addr, &t1).await.json();
        let a1 = r1["choices"][0]["message"]["content"].clone();
        let r2 = post(addr, &turn2(&a1)).await.json();
        assert_eq!(r2["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        (a1, r2["choices"][0]["message"]["content"].clone())
    });
    stop(h);

    let Some(h) = start(|c| c.response_cache = false) else {
        return;
    };
    let addr = h.addr;
    rt().block_on(async move {
        let r1 = post(addr, &turn1).await.json();
        assert_eq!(r1["choices"][0]["message"]["content"], a1);
        assert_eq!(r1["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        let p1 = r1["usage"]["prompt_tokens"].as_u64().unwrap();
        // The second turn starts with the whole first one: its image is not encoded again.
        let r2 = post(addr, &turn2(&a1)).await.json();
        assert_eq!(r2["choices"][0]["message"]["content"], a2);
        let cached = r2["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
        // (The boundary between the first prompt and its answer may tokenize differently
        // once the answer follows it, so the last token or two can be prefilled again.)
        assert!(cached + 2 >= p1, "cached {cached} of a first turn of {p1}");
        assert!(cached < r2["usage"]["prompt_tokens"].as_u64().unwrap());
        // Streamed, the same.
        let mut s2 = turn2(&a1);
        s2["stream"] = json!(true);
        s2["stream_options"] = json!({"include_usage": true});
        let (text, _, usage) = parse_stream(&post(addr, &s2).await);
        assert_eq!(text, a2.as_str().unwrap());
        assert!(usage.unwrap()["prompt_tokens_details"]["cached_tokens"].as_u64() >= Some(p1 - 2));
        // A different image shares only the text before it.
        let other = {
            let root = fixtures().unwrap();
            let bytes = std::fs::read(root.join("neo-tiny/cases/two_images/image_2.png")).unwrap();
            format!(
                "data:image/png;base64,{}",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            )
        };
        let mut t = turn2(&a1);
        t["messages"][0]["content"][0]["image_url"]["url"] = json!(other);
        let r = post(addr, &t).await.json();
        let cached = r["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
        eprintln!(
            "first turn {p1} tokens; other image: {cached} cached of {}",
            r["usage"]["prompt_tokens"]
        );
        assert!(cached < 16, "a different image reused {cached} tokens");
        let m = request(addr, "GET", "/metrics", &[], None).await;
        let text = String::from_utf8_lossy(&m.body).into_owned();
        assert!(
            text.contains("pixlm_prefix_cache_hits_total 2"),
            "metrics: {text}"
        );
    });
    stop(h);
}

/// A local HTTP server for remote-image tests: `/img.png` (the fixture PNG), `/slow.png`
/// (answers after 3 s), `/big.png` (1 MiB), anything else 404.
async fn image_host() -> SocketAddr {
    use axum::routing::get;
    let png = std::fs::read(
        fixtures()
            .unwrap()
            .join("neo-tiny/cases/single_image/image_1.png"),
    )
    .unwrap();
    let app = axum::Router::new()
        .route("/img.png", get(move || async move { png.clone() }))
        .route(
            "/slow.png",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                vec![0u8; 16]
            }),
        )
        .route("/big.png", get(|| async { vec![7u8; 1 << 20] }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[test]
fn remote_images_are_fetched_within_limits_when_allowed() {
    let Some(h) = start(|c| {
        c.remote_images = Some(pixlm_server::remote::RemoteLimits {
            max_bytes: 256 << 10,
            timeout: Duration::from_secs(1),
        });
    }) else {
        return;
    };
    let addr = h.addr;
    rt().block_on(async move {
        let host = image_host().await;
        let ask = |url: String| {
            json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "What is in the picture?"}]}],
                "max_tokens": 6, "temperature": 0})
        };
        // The same answer as the image sent inline.
        let inline = post(addr, &ask(png_data_url())).await.json();
        let remote = post(addr, &ask(format!("http://{host}/img.png"))).await;
        assert_eq!(
            remote.status,
            200,
            "{}",
            String::from_utf8_lossy(&remote.body)
        );
        // Keyed by the image's bytes: the inline request's stored answer serves it.
        assert_eq!(remote.header("x-pixlm-cache"), Some("hit"));
        assert_eq!(remote.json()["choices"], inline["choices"]);

        let r = post(addr, &ask(format!("http://{host}/missing.png"))).await;
        let e = r.error(400);
        assert_eq!(e["code"], "image_fetch_failed");
        assert!(e["message"].as_str().unwrap().contains("HTTP 404"), "{e}");
        assert_eq!(e["param"], "messages[0].content[0].image_url.url");

        let t = Instant::now();
        let e = post(addr, &ask(format!("http://{host}/slow.png")))
            .await
            .error(400);
        assert_eq!(e["code"], "image_fetch_failed");
        assert!(
            t.elapsed() < Duration::from_millis(2800),
            "{:?}",
            t.elapsed()
        );

        let e = post(addr, &ask(format!("http://{host}/big.png")))
            .await
            .error(400);
        assert_eq!(e["code"], "image_too_large", "{e}");

        // Nothing listens there.
        let e = post(addr, &ask("http://127.0.0.1:9/x.png".into()))
            .await
            .error(400);
        assert_eq!(e["code"], "image_fetch_failed");
        // The server is fine afterwards.
        assert_eq!(post(addr, &chat("Hi", 2)).await.status, 200);
    });
    stop(h);
}

#[test]
fn chunked_prefill_gives_the_same_answers() {
    let bodies: Vec<Value> = vec![
        chat(&"Tell me more about triangles. ".repeat(6), 12),
        json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "Look at this:"},
            {"type": "image_url", "image_url": {"url": png_data_url()}},
            {"type": "text", "text": "What is in the picture?"}]}],
            "max_tokens": 12, "temperature": 0}),
    ];
    let answers = |budget: usize, together: bool| {
        let h = start(|c| {
            c.response_cache = false;
            c.prefix_entries = 0;
            c.prefill_token_budget = budget;
        })?;
        let addr = h.addr;
        let bodies = bodies.clone();
        let out = rt().block_on(async move {
            let mut out = Vec::new();
            if together {
                let tasks: Vec<_> = bodies
                    .into_iter()
                    .map(|b| tokio::spawn(async move { post(addr, &b).await }))
                    .collect();
                for t in tasks {
                    out.push(t.await.unwrap().json());
                }
            } else {
                for b in &bodies {
                    out.push(post(addr, b).await.json());
                }
            }
            out
        });
        let m = rt().block_on(async move {
            String::from_utf8(request(addr, "GET", "/metrics", &[], None).await.body).unwrap()
        });
        stop(h);
        Some((out, m))
    };
    let Some((whole, _)) = answers(4096, false) else {
        return;
    };
    // A budget of 7 tokens a step: every prompt goes in several chunks, the image whole.
    let (chunked, metrics) = answers(7, true).unwrap();
    for (a, b) in whole.iter().zip(&chunked) {
        assert_eq!(a["choices"], b["choices"]);
        assert_eq!(a["usage"], b["usage"]);
    }
    let steps = metric(&metrics, "pixlm_forward_steps_total");
    let prompt = whole[0]["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        steps > (prompt / 7) as f64,
        "{steps} forward steps for a {prompt}-token prompt"
    );
}

#[test]
fn kv_budget_queues_what_does_not_fit_and_refuses_what_never_can() {
    let Some(root) = fixtures() else { return };
    let engine = Engine::load(&root.join("neo-tiny/model"), &LoadOptions::default())
        .expect("load the fixture model");
    let per_token = engine.warm_up().expect("warm-up").kv_bytes_per_token;
    assert!(per_token > 0);
    const BUDGET: usize = 100;
    let Some(h) = start(|c| {
        c.kv_cache_bytes = Some(per_token * BUDGET);
        c.response_cache = false;
    }) else {
        return;
    };
    let addr = h.addr;
    rt().block_on(async move {
        let r = request(addr, "GET", "/v1/models", &[], None).await;
        assert_eq!(r.json()["data"][0]["max_model_len"], BUDGET);
        // A prompt and max_tokens past the budget: refused, naming the budget.
        let e = post(addr, &chat("Tell me a story.", BUDGET))
            .await
            .error(400);
        assert_eq!(e["code"], "context_length_exceeded");
        assert_eq!(e["param"], "max_tokens");
        assert!(
            e["message"].as_str().unwrap().contains("--kv-cache-mb"),
            "{e}"
        );
        let long = "story ".repeat(2 * BUDGET);
        let e = post(
            addr,
            &json!({"messages": [{"role": "user", "content": long}]}),
        )
        .await
        .error(400);
        assert_eq!(e["code"], "context_length_exceeded");
        // Requests that fit one at a time but not two together: every one is answered, and
        // they ran one after another (each step ran one sequence: no fewer steps than tokens).
        let one = post(addr, &chat("Story 0.", 1)).await.json();
        let prompt = one["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
        let max_tokens = BUDGET - 10 - prompt;
        assert!(
            prompt + max_tokens > BUDGET / 2,
            "prompt of {prompt} tokens"
        );
        let mut tasks = Vec::new();
        for i in 1..=4 {
            let body = chat(&format!("Story {i}."), max_tokens);
            tasks.push(tokio::spawn(async move { post(addr, &body).await }));
        }
        let mut generated = 0;
        for t in tasks {
            let r = t.await.expect("task");
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            generated += r.json()["usage"]["completion_tokens"].as_u64().unwrap();
        }
        assert!(
            generated > 8,
            "the answers were too short to overlap: {generated}"
        );
        let m = String::from_utf8(request(addr, "GET", "/metrics", &[], None).await.body).unwrap();
        assert_eq!(metric(&m, "pixlm_kv_budget_tokens"), BUDGET as f64);
        assert!(
            metric(&m, "pixlm_forward_steps_total") >= metric(&m, "pixlm_generated_tokens_total"),
            "{m}"
        );
    });
    stop(h);
}
