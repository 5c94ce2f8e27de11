//! Chat completions end to end: `local/chat`, and OpenAI and OpenRouter through their
//! fakes (their documented JSON, SSE streams and errors). Plain and streamed answers,
//! usage, keep-alives, errors mid-stream, fallback across providers and models, the
//! breaker, tools passed through byte for byte, a client that leaves, bad input; then
//! the official `openai` Python package and `curl -N` against a running mediagate.
//! Chat touches no queue, so these run on the embedded backend, but for one that writes
//! usage rows on both.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mediagate::config::{Config, ProviderConfig};
use mediagate_engine::db::chat_usage::ChatUsage;
use serde_json::{Value, json};

use crate::fakes::{self, Behaviour, Fake};
use crate::support::{self, Backend, TestApp, answer};
use crate::{on_both_backends, on_embedded};

// Usage rows are written to the backend's database.
on_both_backends!(local_chat_answers_plain_and_streamed);

on_embedded!(
    openai_and_openrouter_answers_are_rewritten_and_usage_recorded,
    tools_reach_the_upstream_byte_for_byte,
    keep_alives_flow_before_the_first_token,
    an_error_mid_stream_is_one_event_and_the_end,
    outages_fall_back_across_providers,
    unreachable_upstreams_fall_back,
    operator_hosts_speak_openai,
    outages_fall_back_across_models,
    the_breaker_skips_a_failing_provider,
    refusals_and_last_failures_keep_their_status,
    a_client_that_leaves_cancels_the_upstream,
    bad_requests_name_their_field,
    provider_preferences_order_filter_and_price,
    the_openai_sdk_drives_chat,
    curl_sees_tokens_arrive_one_by_one,
);

pub(crate) const USER: &str = "tell me about red foxes";

pub(crate) fn messages() -> Value {
    json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": USER}])
}

pub(crate) fn provider(base: &str) -> ProviderConfig {
    ProviderConfig {
        base_url: Some(base.to_owned()),
        api_key_env: Some(fakes::KEY_VAR.to_owned()),
        timeout_ms: 5_000,
        ..ProviderConfig::default()
    }
}

/// An app whose `openai` and `openrouter` are the given fakes (either may be absent).
pub(crate) async fn app_with(
    openai: Option<&Fake>,
    openrouter: Option<&Fake>,
    tweak: impl FnOnce(&mut Config),
) -> TestApp {
    let openai = openai.map(|f| f.base.clone());
    let openrouter = openrouter.map(|f| f.base.clone());
    TestApp::start_with(Backend::Embedded, move |c| {
        if let Some(base) = openai {
            c.providers.insert("openai".into(), provider(&base));
        }
        if let Some(base) = openrouter {
            c.providers.insert("openrouter".into(), provider(&base));
        }
        c.chat.usage_flush = Duration::from_millis(20);
        c.chat.keep_alive = Duration::from_millis(200);
        c.chat.first_token_timeout = Duration::from_millis(1500);
        c.chat.timeout = Duration::from_millis(3000);
        tweak(c);
    })
    .await
}

/// POSTs a chat request; returns the status, headers and body text.
pub(crate) async fn chat(app: &TestApp, body: &Value) -> (u16, reqwest::header::HeaderMap, String) {
    let res = app
        .post("/v1/chat/completions")
        .json(body)
        .send()
        .await
        .expect("request");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.text().await.expect("body"))
}

/// Starts a streamed request for `openai/gpt-4o-mini`, its body not read yet.
async fn send_stream(app: &TestApp) -> reqwest::Response {
    app.post("/v1/chat/completions")
        .json(&json!({"model": "openai/gpt-4o-mini", "messages": messages(), "stream": true}))
        .send()
        .await
        .expect("request")
}

pub(crate) async fn chat_ok(app: &TestApp, body: &Value) -> Value {
    let (status, _, text) = chat(app, body).await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("JSON")
}

/// The SSE stream of a request, read whole: its comments, and its data events
/// (`[DONE]` as the string "[DONE]").
pub(crate) struct Sse {
    pub comments: Vec<String>,
    pub events: Vec<Value>,
    /// The order lines came in: 'c' comment, 'd' data.
    pub order: String,
}

pub(crate) fn read_sse(text: &str) -> Sse {
    let mut sse = Sse {
        comments: Vec::new(),
        events: Vec::new(),
        order: String::new(),
    };
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix(':') {
            sse.comments.push(comment.trim().to_owned());
            sse.order.push('c');
        } else if let Some(data) = line.strip_prefix("data: ") {
            sse.order.push('d');
            sse.events.push(if data == "[DONE]" {
                json!("[DONE]")
            } else {
                serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"))
            });
        } else {
            panic!("not SSE: {line:?} in {text}");
        }
    }
    sse
}

pub(crate) async fn stream_ok(app: &TestApp, body: &Value) -> Sse {
    let (status, headers, text) = chat(app, body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["content-type"], "text/event-stream");
    read_sse(&text)
}

/// Whether no event of a stream carries usage.
pub(crate) fn no_usage(sse: &Sse) -> bool {
    sse.events
        .iter()
        .all(|e| e.get("usage").is_none_or(Value::is_null))
}

/// The text the content deltas of a stream add up to.
pub(crate) fn streamed_text(sse: &Sse) -> String {
    sse.events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// Waits for the app's account to have `n` usage rows; returns them, oldest first.
pub(crate) async fn usage_rows(app: &TestApp, n: usize) -> Vec<ChatUsage> {
    let account = app.account_id().await;
    let start = Instant::now();
    loop {
        let rows =
            mediagate_engine::db::chat_usage::for_account(app.engine().db.pool(), &account, 100)
                .await
                .unwrap();
        if rows.len() >= n {
            return rows.into_iter().rev().collect();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "usage rows: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The chat requests a fake received, as JSON.
fn chat_requests(fake: &Fake) -> Vec<Value> {
    fake.state
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect()
}

async fn local_chat_answers_plain_and_streamed(backend: Backend) {
    let app =
        TestApp::start_with(backend, |c| c.chat.usage_flush = Duration::from_millis(20)).await;
    let body = json!({"model": "local/chat", "messages": messages()});
    let plain = chat_ok(&app, &body).await;
    assert_eq!(plain["object"], "chat.completion");
    assert_eq!(plain["model"], "local/chat");
    assert_eq!(plain["provider"], "local");
    assert!(
        plain["id"].as_str().unwrap().starts_with("chatcmpl-"),
        "{plain}"
    );
    let content = plain["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.contains(USER), "{content}");
    assert_eq!(plain["choices"][0]["finish_reason"], "stop");
    let words = content.split(' ').count() as u64;
    assert_eq!(plain["usage"]["completion_tokens"], words);
    // OpenRouter's path answers the same.
    let res = answer(app.post("/api/v1/chat/completions").json(&body))
        .await
        .expect(200);
    assert_eq!(
        res["choices"][0]["message"]["content"], content,
        "deterministic"
    );

    let streamed = stream_ok(
        &app,
        &json!({"model": "local/chat", "messages": messages(), "stream": true,
                "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(
        streamed_text(&streamed),
        content,
        "the stream says what the answer says"
    );
    let n = streamed.events.len();
    assert_eq!(streamed.events[n - 1], "[DONE]");
    let usage = &streamed.events[n - 2];
    assert_eq!(usage["choices"], json!([]), "{usage}");
    assert_eq!(usage["usage"]["completion_tokens"], words);
    for chunk in &streamed.events[..n - 1] {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "local/chat");
        assert_eq!(chunk["id"], streamed.events[0]["id"], "one id per request");
    }
    assert_eq!(
        streamed.events[0]["choices"][0]["delta"]["role"],
        "assistant"
    );
    // Without include_usage there is no usage chunk.
    let bare = stream_ok(
        &app,
        &json!({"model": "local/chat", "messages": messages(), "stream": true}),
    )
    .await;
    assert!(no_usage(&bare), "{:?}", bare.events);
    assert_eq!(streamed_text(&bare), content);

    let rows = usage_rows(&app, 4).await;
    for (row, stream) in rows.iter().zip([0, 0, 1, 1]) {
        assert_eq!(
            (
                row.model.as_str(),
                row.provider.as_str(),
                row.status.as_str()
            ),
            ("local/chat", "local", "completed")
        );
        assert_eq!(row.stream, stream);
        assert_eq!(row.completion_tokens, words as i64);
        assert!(row.prompt_tokens > 0 && row.attempts == 1);
        assert_eq!(row.cost_micros, 0);
    }
    assert_eq!(rows[2].id, streamed.events[0]["id"].as_str().unwrap());
    assert!(rows[2].first_token_ms.is_some());
}

async fn openai_and_openrouter_answers_are_rewritten_and_usage_recorded(_: Backend) {
    let openai = fakes::openai::start(Behaviour::default()).await;
    let openrouter = fakes::openrouter::start(Behaviour::default()).await;
    let app = app_with(Some(&openai), Some(&openrouter), |_| {}).await;
    let plain = chat_ok(
        &app,
        &json!({"model": "openai/gpt-4o-mini", "messages": messages()}),
    )
    .await;
    assert_eq!(plain["model"], "openai/gpt-4o-mini");
    assert_eq!(plain["provider"], "openai");
    assert_eq!(
        plain["choices"][0]["message"]["content"],
        fakes::chat::DEFAULT_REPLY
    );
    assert_eq!(
        plain["system_fingerprint"], "fp_fake",
        "fields we do not know pass through"
    );
    let sent = chat_requests(&openai);
    assert_eq!(
        sent[0]["model"], "gpt-4o-mini",
        "the upstream's name for the model"
    );
    assert!(
        sent[0].get("stream_options").is_none(),
        "only streams take stream_options"
    );
    // OpenRouter serves it when asked to, and says so.
    let via = chat_ok(
        &app,
        &json!({"model": "openai/gpt-4o-mini", "messages": messages(), "provider": {"order": ["openrouter"]}}),
    )
    .await;
    assert_eq!(
        (via["model"].as_str(), via["provider"].as_str()),
        (Some("openai/gpt-4o-mini"), Some("openrouter"))
    );
    assert_eq!(chat_requests(&openrouter)[0]["model"], "openai/gpt-4o-mini");

    // Streams: the final usage chunk is asked of every upstream, and reaches only the
    // clients that asked for it, in OpenAI's shape (OpenRouter's repeats the finish
    // reason in a choice).
    for (order, fake) in [("openai", &openai), ("openrouter", &openrouter)] {
        let body = json!({"model": "openai/gpt-4o-mini", "messages": messages(), "stream": true,
            "stream_options": {"include_usage": true}, "provider": {"order": [order]}});
        let sse = stream_ok(&app, &body).await;
        assert_eq!(streamed_text(&sse), fakes::chat::DEFAULT_REPLY, "{order}");
        let n = sse.events.len();
        assert_eq!(sse.events[n - 1], "[DONE]");
        assert_eq!(
            sse.events[n - 2]["choices"],
            json!([]),
            "{order}: {}",
            sse.events[n - 2]
        );
        assert_eq!(
            sse.events[n - 2]["usage"]["completion_tokens"],
            10,
            "{order}"
        );
        let finishes = sse
            .events
            .iter()
            .filter(|e| e["choices"][0]["finish_reason"] == "stop")
            .count();
        assert_eq!(finishes, 1, "{order}: one finish reason");
        for chunk in &sse.events[..n - 1] {
            assert_eq!(chunk["model"], "openai/gpt-4o-mini");
            assert_eq!(chunk["provider"], order);
        }
        let sent = chat_requests(fake);
        assert_eq!(
            sent.last().unwrap()["stream_options"]["include_usage"],
            true
        );
        let bare = json!({"model": "openai/gpt-4o-mini", "messages": messages(), "stream": true,
            "provider": {"order": [order]}});
        let sse = stream_ok(&app, &bare).await;
        assert!(no_usage(&sse), "{order}: {:?}", sse.events);
        assert_eq!(
            chat_requests(fake).last().unwrap()["stream_options"]["include_usage"],
            true,
            "asked anyway: we record usage"
        );
    }
    let rows = usage_rows(&app, 6).await;
    let last = rows.last().unwrap();
    assert_eq!(
        (last.provider.as_str(), last.status.as_str()),
        ("openrouter", "completed")
    );
    assert_eq!(
        last.completion_tokens, 10,
        "recorded although the client did not ask"
    );
    // $0.15 and $0.60 per million tokens, rounded up to a millionth of a dollar.
    assert_eq!(
        last.cost_micros,
        1 + (last.prompt_tokens * 150_000 + 10 * 600_000 + 999_999) / 1_000_000 - 1
    );
}

async fn tools_reach_the_upstream_byte_for_byte(_: Backend) {
    let openai = fakes::openai::start(Behaviour::default()).await;
    let app = app_with(Some(&openai), None, |_| {}).await;
    // Key order, number spelling and escapes a JSON round trip would change.
    let tools = r#"[ {"type":"function","function":{"name":"get_weather","description":"Caf\u00e9 \"weather\"","parameters":{"type":"object","required":["city"],"properties":{"city":{"type":"string"}},"x-weight":1.50,"x-big":1e3}}} ]"#;
    let response_format = r#"{"type":"json_object"}"#;
    let image = r#"[{"type":"text","text":"what is this?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo=","detail":"low"}}]"#;
    for stream in [false, true] {
        let body = format!(
            r#"{{"model":"openai/gpt-4o-mini","messages":[{{"role":"user","content":{image}}}],"tools":{tools},"tool_choice":"auto","response_format":{response_format},"parallel_tool_calls":false,"stream":{stream}}}"#
        );
        let res = app
            .post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let text = res.text().await.unwrap();
        let received = openai.state.requests().last().unwrap().body.clone();
        for part in [
            format!(r#""tools":{tools}"#),
            format!(r#""response_format":{response_format}"#),
            format!(r#""content":{image}"#),
            r#""tool_choice":"auto""#.to_owned(),
            r#""parallel_tool_calls":false"#.to_owned(),
        ] {
            assert!(received.contains(&part), "{part} not in {received}");
        }
        if stream {
            let sse = read_sse(&text);
            let args: String = sse
                .events
                .iter()
                .filter_map(|e| {
                    e["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
                })
                .collect();
            assert_eq!(args, r#"{"city":"Paris"}"#);
            assert!(
                sse.events
                    .iter()
                    .any(|e| e["choices"][0]["finish_reason"] == "tool_calls")
            );
        } else {
            let answer: Value = serde_json::from_str(&text).unwrap();
            let call = &answer["choices"][0]["message"]["tool_calls"][0];
            assert_eq!(call["function"]["name"], "get_weather", "{answer}");
            assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
        }
    }
}

async fn keep_alives_flow_before_the_first_token(_: Backend) {
    let slow = Behaviour {
        chat_first_token_delay: Duration::from_millis(900),
        ..Behaviour::default()
    };
    let openai = fakes::openai::start(slow).await;
    let app = app_with(Some(&openai), None, |_| {}).await;
    let start = Instant::now();
    let res = send_stream(&app).await;
    assert_eq!(res.status(), 200);
    let headers_after = start.elapsed();
    assert!(
        headers_after < Duration::from_millis(800),
        "the 200 went out at the first keep-alive: {headers_after:?}"
    );
    let sse = read_sse(&res.text().await.unwrap());
    assert!(sse.comments.len() >= 3, "{:?}", sse.comments);
    assert!(sse.comments.iter().all(|c| c == "keep-alive"));
    assert!(
        sse.order.starts_with("ccc") && sse.order.ends_with('d'),
        "{}",
        sse.order
    );
    assert_eq!(streamed_text(&sse), fakes::chat::DEFAULT_REPLY);

    // OpenRouter's own comments are not passed on; ours are.
    let slow = Behaviour {
        chat_first_token_delay: Duration::from_millis(500),
        ..Behaviour::default()
    };
    let openrouter = fakes::openrouter::start(slow).await;
    let app = app_with(None, Some(&openrouter), |_| {}).await;
    let sse = stream_ok(
        &app,
        &json!({"model": "openai/gpt-4o-mini", "messages": messages(), "stream": true}),
    )
    .await;
    assert!(
        !sse.comments.is_empty() && sse.comments.iter().all(|c| c == "keep-alive"),
        "{:?}",
        sse.comments
    );
    assert_eq!(streamed_text(&sse), fakes::chat::DEFAULT_REPLY);
}

async fn an_error_mid_stream_is_one_event_and_the_end(_: Backend) {
    let breaks = Behaviour {
        chat_break_after: Some(3),
        ..Behaviour::default()
    };
    let openai = fakes::openai::start(breaks.clone()).await;
    let openrouter = fakes::openrouter::start(breaks).await;
    let app = app_with(Some(&openai), Some(&openrouter), |_| {}).await;
    for order in ["openai", "openrouter"] {
        let body = json!({"model": "openai/gpt-4o-mini", "messages": messages(), "stream": true,
            "provider": {"order": [order]}});
        let sse = stream_ok(&app, &body).await;
        let last = sse.events.last().unwrap();
        assert_eq!(last["error"]["type"], "api_error", "{order}: {last}");
        assert_eq!(last["error"]["code"], "upstream_error", "{order}: {last}");
        assert!(
            last["error"]["message"].as_str().unwrap().contains(order),
            "{last}"
        );
        assert_eq!(
            sse.events
                .iter()
                .filter(|e| e.get("error").is_some())
                .count(),
            1
        );
        assert!(
            !sse.events.contains(&json!("[DONE]")),
            "{order}: the stream just ends"
        );
        assert_eq!(
            streamed_text(&sse),
            "Hello from the",
            "{order}: what came before stays"
        );
    }
    let rows = usage_rows(&app, 2).await;
    assert!(
        rows.iter()
            .all(|r| r.status == "failed" && r.error_code.as_deref() == Some("upstream_error")),
        "{rows:?}"
    );
}

async fn outages_fall_back_across_providers(_: Backend) {
    // OpenAI fails each way an outage looks (a 500, a 429, a hang); OpenRouter answers.
    for (how, behaviour) in [
        (
            "500",
            Behaviour {
                fail_submits: vec![500, 500],
                ..Behaviour::default()
            },
        ),
        (
            "429",
            Behaviour {
                fail_submits: vec![429, 429],
                retry_after: Some(30),
                ..Behaviour::default()
            },
        ),
        (
            "hang",
            Behaviour {
                chat_hang: true,
                ..Behaviour::default()
            },
        ),
    ] {
        let openai = fakes::openai::start(behaviour).await;
        let openrouter = fakes::openrouter::start(Behaviour::default()).await;
        let app = app_with(Some(&openai), Some(&openrouter), |c| {
            c.chat.first_token_timeout = Duration::from_millis(400);
            c.chat.timeout = Duration::from_millis(400);
        })
        .await;
        let plain = chat_ok(
            &app,
            &json!({"model": "openai/gpt-4o-mini", "messages": messages()}),
        )
        .await;
        assert_eq!(
            (plain["model"].as_str(), plain["provider"].as_str()),
            (Some("openai/gpt-4o-mini"), Some("openrouter")),
            "{how}"
        );
        let sse = stream_ok(
            &app,
            &json!({"model": "openai/gpt-4o-mini", "messages": messages(), "stream": true}),
        )
        .await;
        assert_eq!(streamed_text(&sse), fakes::chat::DEFAULT_REPLY, "{how}");
        assert!(
            sse.events
                .iter()
                .filter(|e| e.is_object())
                .all(|e| e["provider"] == "openrouter"),
            "{how}"
        );
        assert_eq!(chat_requests(&openai).len(), 2, "{how}: tried first");
        let rows = usage_rows(&app, 2).await;
        assert!(
            rows.iter()
                .all(|r| r.attempts == 2 && r.provider == "openrouter"),
            "{how}: {rows:?}"
        );
    }
}

/// A host of the operator's own: `[providers.NAME] api = "openai"`, its base URL as its
/// clients take it, and its models in the operator's catalog file.
async fn operator_hosts_speak_openai(_: Backend) {
    let host = fakes::openai::start(Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("models.toml");
    std::fs::write(
        &catalog,
        r#"
[[models]]
id = "meta/llama-3.3-70b"
name = "Llama 3.3 70B"
modality = "text"
context_length = 131072
price = { unit = "million_tokens", usd = "0.59", output_usd = "0.79" }
providers = [{ provider = "groq", model = "llama-3.3-70b-versatile" }]
"#,
    )
    .unwrap();
    let base = format!("{}/v1", host.base);
    let app = app_with(None, None, move |c| {
        c.catalog = Some(catalog);
        c.providers.insert(
            "groq".into(),
            ProviderConfig {
                api: Some("openai".into()),
                ..provider(&base)
            },
        );
    })
    .await;
    let answer = chat_ok(&app, &json!({"model": "meta/llama-3.3-70b", "messages": messages(), "provider": {"only": ["groq"]}})).await;
    assert_eq!(
        (answer["model"].as_str(), answer["provider"].as_str()),
        (Some("meta/llama-3.3-70b"), Some("groq"))
    );
    assert_eq!(chat_requests(&host)[0]["model"], "llama-3.3-70b-versatile");
    assert_eq!(host.state.requests()[0].path, "/v1/chat/completions");
    let listed = app.get_json("/v1/models?output_modality=text").await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in [
        "meta/llama-3.3-70b",
        "local/chat",
        "openai/gpt-4o-mini",
        "anthropic/claude-sonnet-4.5",
    ] {
        assert!(ids.contains(&id), "{id} not in {ids:?}");
    }
    let llama = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "meta/llama-3.3-70b")
        .unwrap();
    assert_eq!(llama["object"], "model");
    assert_eq!(llama["context_length"], 131072);
    assert_eq!(
        llama["pricing"],
        json!({"unit": "million_tokens", "usd": "0.59", "output_usd": "0.79"})
    );
    drop(dir);
}

/// An upstream that cannot be reached at all (nothing listens there) is an outage too.
async fn unreachable_upstreams_fall_back(_: Backend) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let openrouter = fakes::openrouter::start(Behaviour::default()).await;
    let app = app_with(None, Some(&openrouter), move |c| {
        c.providers.insert("openai".into(), provider(&nowhere));
    })
    .await;
    for stream in [false, true] {
        let body = json!({"model": "openai/gpt-4o-mini", "messages": messages(), "stream": stream});
        let (status, _, text) = chat(&app, &body).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains(r#""provider":"openrouter""#), "{text}");
    }
    let only = json!({"model": "openai/gpt-4o-mini", "messages": messages(), "provider": {"only": ["openai"]}});
    let (status, _, text) = chat(&app, &only).await;
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("upstream_unreachable"), "{text}");
}

async fn outages_fall_back_across_models(_: Backend) {
    let openai = fakes::openai::start(Behaviour {
        fail_submits: vec![503; 4],
        ..Behaviour::default()
    })
    .await;
    let app = app_with(Some(&openai), None, |_| {}).await;
    for stream in [false, true] {
        let body = json!({"models": ["openai/gpt-4o-mini", "local/chat"], "messages": messages(), "stream": stream});
        let (status, _, text) = chat(&app, &body).await;
        assert_eq!(status, 200, "{text}");
        let first: Value = if stream {
            read_sse(&text).events[0].clone()
        } else {
            serde_json::from_str(&text).unwrap()
        };
        assert_eq!(
            (first["model"].as_str(), first["provider"].as_str()),
            (Some("local/chat"), Some("local"))
        );
    }
    // A simulated outage of local/chat moves to the next model too.
    let body = json!({"model": "local/chat", "models": ["openai/gpt-4o-mini"], "messages": messages(),
        "simulate": {"fail": "transient"}});
    let (status, _, text) = chat(&app, &body).await;
    // openai is down as well (two 503s left): the last failure is answered.
    assert_eq!(status, 502, "{text}");
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["code"], "upstream_error");
    assert_eq!(chat_requests(&openai).len(), 3);
}

async fn the_breaker_skips_a_failing_provider(_: Backend) {
    let openai = fakes::openai::start(Behaviour {
        fail_submits: vec![500; 100],
        ..Behaviour::default()
    })
    .await;
    let openrouter = fakes::openrouter::start(Behaviour::default()).await;
    let app = app_with(Some(&openai), Some(&openrouter), |c| {
        c.routing.breaker_threshold = 2;
        c.routing.breaker_cooldown = Duration::from_secs(60);
    })
    .await;
    let body = json!({"model": "openai/gpt-4o-mini", "messages": messages()});
    for _ in 0..4 {
        assert_eq!(chat_ok(&app, &body).await["provider"], "openrouter");
    }
    assert_eq!(
        chat_requests(&openai).len(),
        2,
        "skipped once its breaker opened"
    );
    assert_eq!(chat_requests(&openrouter).len(), 4);
    // With nothing after it, a skipped provider is still tried: there is no one else.
    let only = json!({"model": "openai/gpt-4o-mini", "messages": messages(), "provider": {"only": ["openai"]}});
    let (status, _, _) = chat(&app, &only).await;
    assert_eq!(status, 502);
    assert_eq!(chat_requests(&openai).len(), 3);
}

async fn refusals_and_last_failures_keep_their_status(_: Backend) {
    // The upstream refuses the request: that answer, no fallback (another would too).
    let openai = fakes::openai::start(Behaviour {
        fail_submits: vec![400, 429, 429],
        retry_after: Some(7),
        ..Behaviour::default()
    })
    .await;
    let openrouter = fakes::openrouter::start(Behaviour {
        fail_submits: vec![429],
        retry_after: Some(7),
        ..Behaviour::default()
    })
    .await;
    let app = app_with(Some(&openai), Some(&openrouter), |_| {}).await;
    let body = json!({"model": "openai/gpt-4o-mini", "messages": messages()});
    let (status, headers, text) = chat(&app, &body).await;
    assert_eq!(status, 400, "{text}");
    assert!(headers.contains_key("x-request-id"));
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["code"], "upstream_rejected");
    assert!(chat_requests(&openrouter).is_empty());
    // Rate limited everywhere: a 429 with the upstream's Retry-After, streamed or not.
    let (status, headers, text) = chat(&app, &body).await;
    assert_eq!(status, 429, "{text}");
    assert_eq!(headers["retry-after"], "7");
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (
            error["error"]["type"].as_str(),
            error["error"]["code"].as_str()
        ),
        (Some("rate_limit_error"), Some("upstream_rate_limited"))
    );
    let (status, _, text) = chat(&app, &json!({"model": "openai/gpt-4o-mini", "messages": messages(), "stream": true, "provider": {"only": ["openai"]}})).await;
    assert_eq!(
        status, 429,
        "an error before the stream began keeps its status: {text}"
    );
}

async fn a_client_that_leaves_cancels_the_upstream(_: Backend) {
    let long = Behaviour {
        chat_reply: Some("word ".repeat(200).trim().to_owned()),
        chat_token_interval: Duration::from_millis(30),
        ..Behaviour::default()
    };
    let openai = fakes::openai::start(long).await;
    let app = app_with(Some(&openai), None, |_| {}).await;
    let res = send_stream(&app).await;
    let mut body = res.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(body);
    let start = Instant::now();
    while openai.state.streams_cancelled.load(Ordering::SeqCst) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the upstream stream is still read"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(openai.state.streams_finished.load(Ordering::SeqCst), 0);
    let rows = usage_rows(&app, 1).await;
    assert_eq!(rows[0].status, "cancelled");
}

async fn bad_requests_name_their_field(backend: Backend) {
    let app = TestApp::start(backend).await;
    let cases = [
        (json!({"messages": messages()}), "model", "unknown_model"),
        (
            json!({"model": "nobody/nothing", "messages": messages()}),
            "model",
            "unknown_model",
        ),
        (
            json!({"models": ["local/chat", "nobody/x"], "messages": messages()}),
            "models[1]",
            "unknown_model",
        ),
        (
            json!({"model": "local/image", "messages": messages()}),
            "model",
            "unknown_model",
        ),
        (json!({"model": "local/chat"}), "messages", "invalid_field"),
        (
            json!({"model": "local/chat", "messages": [{"role": "robot", "content": "x"}]}),
            "messages[0].role",
            "invalid_field",
        ),
        (
            json!({"model": "local/chat", "messages": messages(), "stream": "yes"}),
            "stream",
            "invalid_field",
        ),
        (
            json!({"model": "local/chat", "messages": messages(), "provider": {"order": ["nobody"]}}),
            "provider.order[0]",
            "invalid_field",
        ),
        (
            json!({"model": "local/chat", "messages": messages(), "provider": {"sorting": "price"}}),
            "provider.sorting",
            "parameter_unknown",
        ),
        (
            json!({"model": "local/chat", "messages": messages(), "simulate": {"latency": 5}}),
            "simulate.latency",
            "parameter_unknown",
        ),
        (
            json!({"model": "openai/gpt-4o-mini", "messages": messages(), "simulate": {"latency_ms": 5}}),
            "simulate",
            "invalid_field",
        ),
        (
            json!({"model": "openai/gpt-4o-mini", "messages": messages()}),
            "model",
            "unknown_model",
        ),
    ];
    for (body, param, code) in cases {
        let (status, headers, text) = chat(&app, &body).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(headers.contains_key("x-request-id"));
        let error: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(error["error"]["param"], param, "{body}: {text}");
        assert_eq!(error["error"]["code"], code, "{body}: {text}");
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }
    let res = app
        .post("/v1/chat/completions")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = app
        .client
        .post(format!("{}/v1/chat/completions", app.url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // A chat model is not a job.
    let err = app
        .post_job(&json!({"model": "local/chat", "input": {"prompt": "x"}}))
        .await
        .bad_request();
    assert_eq!(err["error"]["param"], "model");
}

async fn provider_preferences_order_filter_and_price(_: Backend) {
    let openai = fakes::openai::start(Behaviour::default()).await;
    let openrouter = fakes::openrouter::start(Behaviour::default()).await;
    let app = app_with(Some(&openai), Some(&openrouter), |_| {}).await;
    let ask = |extra: Value| {
        let mut body =
            json!({"models": ["openai/gpt-4o", "openai/gpt-4o-mini"], "messages": messages()});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let served = |v: &Value| {
        (
            v["model"].as_str().unwrap().to_owned(),
            v["provider"].as_str().unwrap().to_owned(),
        )
    };
    let pair = |m: &str, p: &str| (m.to_owned(), p.to_owned());
    assert_eq!(
        served(&chat_ok(&app, &ask(json!({}))).await),
        pair("openai/gpt-4o", "openai")
    );
    assert_eq!(
        served(&chat_ok(&app, &ask(json!({"provider": {"sort": "price"}}))).await),
        pair("openai/gpt-4o-mini", "openai")
    );
    assert_eq!(
        served(&chat_ok(&app, &ask(json!({"provider": {"ignore": ["openai"]}}))).await),
        pair("openai/gpt-4o", "openrouter")
    );
    assert_eq!(
        served(
            &chat_ok(
                &app,
                &ask(json!({"provider": {"max_price": {"prompt": 1, "completion": 1}}}))
            )
            .await
        ),
        pair("openai/gpt-4o-mini", "openai")
    );
    let (status, _, text) = chat(
        &app,
        &ask(json!({"provider": {"max_price": {"prompt": 0.01}}})),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("provider.max_price"), "{text}");
    // allow_fallbacks: false keeps one provider per model: a failing openai moves to the
    // next model, not to OpenRouter.
    let failing = fakes::openai::start(Behaviour {
        fail_submits: vec![500; 4],
        ..Behaviour::default()
    })
    .await;
    let app = app_with(Some(&failing), Some(&openrouter), |_| {}).await;
    let before = chat_requests(&openrouter).len();
    let body = json!({"models": ["openai/gpt-4o", "local/chat"], "messages": messages(), "provider": {"allow_fallbacks": false}});
    assert_eq!(
        served(&chat_ok(&app, &body).await),
        pair("local/chat", "local")
    );
    assert_eq!(chat_requests(&openrouter).len(), before);
}

/// Runs `chat_openai_sdk.py` against the app: the official SDK's chat calls.
async fn the_openai_sdk_drives_chat(_: Backend) {
    let openai = fakes::openai::start(Behaviour {
        fail_submits: vec![503, 503],
        ..Behaviour::default()
    })
    .await;
    let openrouter = fakes::openrouter::start(Behaviour::default()).await;
    let anthropic = fakes::anthropic::start(Behaviour::default()).await;
    let anthropic_base = anthropic.base.clone();
    let google = fakes::google::start(Behaviour::default()).await;
    let google_base = google.base.clone();
    let app = app_with(Some(&openai), Some(&openrouter), move |c| {
        c.providers
            .insert("anthropic".into(), provider(&anthropic_base));
        c.providers.insert("google".into(), provider(&google_base));
    })
    .await;
    let out = support::run_openai_sdk_script(&app, "chat_openai_sdk.py").await;
    let report: Value = serde_json::from_str(&out).expect("the script prints JSON");
    assert!(
        report["plain"].as_str().unwrap().contains("red foxes"),
        "{report}"
    );
    assert_eq!(report["streamed"], report["plain"]);
    assert!(
        report["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(
        report["fallback"],
        json!({"model": "openai/gpt-4o-mini", "provider": "openrouter"})
    );
    assert_eq!(
        report["tool"],
        json!({"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"})
    );
    assert_eq!(report["streamed_tool"], report["tool"]);
    assert_eq!(
        report["model_fallback"],
        json!({"model": "openai/gpt-4o-mini", "provider": "openai"})
    );
    assert_eq!(
        report["bad_request"],
        json!({"status": 400, "param": "model"})
    );
    assert_eq!(report["unauthorized"], 401);
    assert_eq!(
        report["claude"],
        json!({"provider": "anthropic", "content": fakes::chat::DEFAULT_REPLY,
            "finish_reason": "stop", "streamed_text": fakes::anthropic::TOOL_PREAMBLE,
            "streamed_tool": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9,
                "completion_tokens_details": null, "prompt_tokens_details": null}})
    );
    // One word a token, and the fake model's thoughts counted as answer tokens.
    let thoughts = fakes::gemini::THOUGHTS;
    assert_eq!(
        report["gemini"],
        json!({"provider": "google", "content": fakes::chat::DEFAULT_REPLY,
            "finish_reason": "stop", "streamed_text": fakes::chat::DEFAULT_REPLY,
            "usage": {"prompt_tokens": 5, "completion_tokens": 10 + thoughts,
                "reasoning_tokens": thoughts}})
    );
    assert_eq!(
        report["gemini_tool"],
        json!({"signature": {"google": {"thought_signature": fakes::gemini::THOUGHT_SIGNATURE}},
            "answer": "The get_weather tool said {\"output\":\"sunny\"}"})
    );
    let sent: Value = serde_json::from_str(&google.state.requests().last().unwrap().body).unwrap();
    assert_eq!(
        sent["contents"][1]["parts"][1]["thoughtSignature"],
        fakes::gemini::THOUGHT_SIGNATURE,
        "{sent}"
    );
    // The first tool call went to OpenRouter (OpenAI's second failure), the streamed one
    // to OpenAI, each with the tools as the SDK sent them.
    for fake in [&openai, &openrouter] {
        assert!(
            fake.state
                .requests()
                .iter()
                .any(|r| r.body.contains(r#""name":"get_weather""#))
        );
    }
}

/// `curl -N` reads a streamed answer as it comes: each token on its own, spread over time.
async fn curl_sees_tokens_arrive_one_by_one(backend: Backend) {
    if Command::new("curl").arg("--version").output().is_err() {
        panic!("curl is not installed (apt-get install curl)");
    }
    let app = TestApp::start(backend).await;
    let body = json!({"model": "local/chat", "messages": messages(), "stream": true,
        "simulate": {"token_interval_ms": 60}})
    .to_string();
    let (url, key) = (format!("{}/v1/chat/completions", app.url), app.key.clone());
    let lines = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("curl")
            .args(["-N", "-s", "-H", "content-type: application/json", "-H"])
            .arg(format!("authorization: Bearer {key}"))
            .args(["--data-binary", "@-"])
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("curl runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let start = Instant::now();
        let lines: Vec<(Duration, String)> = BufReader::new(child.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.starts_with("data: "))
            .map(|l| (start.elapsed(), l))
            .collect();
        child.wait().unwrap();
        lines
    })
    .await
    .unwrap();
    let tokens: Vec<&(Duration, String)> = lines
        .iter()
        .filter(|(_, l)| l.contains("\"content\":\" "))
        .collect();
    assert!(tokens.len() >= 8, "{lines:?}");
    // 60 ms apart: had they been buffered, they would all come at the end.
    for pair in tokens.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(30),
            "tokens {pair:?} came {gap:?} apart"
        );
    }
    let spread = tokens.last().unwrap().0 - tokens[0].0;
    assert!(
        spread >= Duration::from_millis(40 * (tokens.len() as u64 - 1)),
        "{spread:?}"
    );
    assert_eq!(lines.last().unwrap().1, "data: [DONE]");
}

// Anthropic's Messages API, through its fake, translated both ways.

on_embedded!(
    anthropic_answers_are_translated_plain_and_streamed,
    anthropic_tool_calls_go_both_ways,
    an_overloaded_anthropic_falls_back_to_openrouter,
    anthropic_refuses_what_it_cannot_translate,
);

/// An app whose `anthropic` (and maybe `openrouter`) are the given fakes.
async fn app_with_anthropic(anthropic: &Fake, openrouter: Option<&Fake>) -> TestApp {
    app_with_provider("anthropic", anthropic, openrouter).await
}

/// An app whose provider `name` (and maybe `openrouter`) are the given fakes.
pub(crate) async fn app_with_provider(
    name: &'static str,
    fake: &Fake,
    openrouter: Option<&Fake>,
) -> TestApp {
    let base = fake.base.clone();
    app_with(None, openrouter, move |c| {
        c.providers.insert(name.into(), provider(&base));
    })
    .await
}

/// A translating adapter's outages fall back to OpenRouter before the first token: its
/// fake (`start`) answers each of `statuses` to its first two calls (plain, then
/// streamed), or breaks off before its first word; OpenRouter serves `model` each time.
pub(crate) async fn outages_fall_back_to_openrouter<F: Future<Output = Fake>>(
    name: &'static str,
    model: &str,
    statuses: &[u16],
    start: impl Fn(Behaviour) -> F,
) {
    for &status in statuses {
        let fake = start(Behaviour {
            fail_submits: vec![status, status],
            retry_after: Some(30),
            ..Behaviour::default()
        })
        .await;
        let openrouter = fakes::openrouter::start(Behaviour::default()).await;
        let app = app_with_provider(name, &fake, Some(&openrouter)).await;
        let plain = chat_ok(&app, &json!({"model": model, "messages": messages()})).await;
        assert_eq!(plain["provider"], "openrouter", "{status}");
        let sse = stream_ok(
            &app,
            &json!({"model": model, "messages": messages(), "stream": true}),
        )
        .await;
        assert_eq!(streamed_text(&sse), fakes::chat::DEFAULT_REPLY, "{status}");
        assert_eq!(sse.events[0]["provider"], "openrouter", "{status}");
        assert_eq!(fake.state.requests().len(), 2, "{status}");
        let asked: Value = serde_json::from_str(&openrouter.state.requests()[0].body).unwrap();
        assert_eq!(asked["model"], model);
    }
    // Overloaded before any text: nothing reached the client, so the stream still falls
    // back.
    let fake = start(Behaviour {
        chat_break_after: Some(0),
        ..Behaviour::default()
    })
    .await;
    let openrouter = fakes::openrouter::start(Behaviour::default()).await;
    let app = app_with_provider(name, &fake, Some(&openrouter)).await;
    let sse = stream_ok(
        &app,
        &json!({"model": model, "messages": messages(), "stream": true}),
    )
    .await;
    assert_eq!(streamed_text(&sse), fakes::chat::DEFAULT_REPLY);
    assert!(
        sse.events.iter().all(|e| e.get("error").is_none()),
        "{:?}",
        sse.events
    );
    assert_eq!(sse.events[0]["provider"], "openrouter");
}

/// A translated answer of `model` by `provider`: the fake's reply, finished with `stop`.
pub(crate) fn assert_plain_reply(plain: &Value, model: &str, provider: &str) {
    assert_eq!(plain["object"], "chat.completion");
    assert_eq!(
        (plain["model"].as_str(), plain["provider"].as_str()),
        (Some(model), Some(provider))
    );
    assert_eq!(
        plain["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": fakes::chat::DEFAULT_REPLY,
            "refusal": null}, "logprobs": null, "finish_reason": "stop"}])
    );
}

/// A translated stream of the fake's reply, asked with `include_usage`: chunks of `model`
/// by `provider` under one id, the role first, a word a chunk, the finish, then the usage
/// chunk (`usage`, the only one with usage), and `[DONE]`.
pub(crate) fn assert_streamed_reply(sse: &Sse, model: &str, provider: &str, usage: &Value) {
    assert_eq!(sse.events.last(), Some(&json!("[DONE]")));
    let chunks = &sse.events[..sse.events.len() - 1];
    for c in chunks {
        assert_eq!(
            (c["object"].as_str(), c["model"].as_str()),
            (Some("chat.completion.chunk"), Some(model)),
            "{c}"
        );
        assert_eq!(c["id"], chunks[0]["id"]);
        assert_eq!(c["provider"], provider);
    }
    let mut expected = vec![
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""},
        "logprobs": null, "finish_reason": null}]),
    ];
    let words = fakes::chat::DEFAULT_REPLY.split(' ').enumerate();
    expected.extend(words.map(|(i, w)| {
        let w = if i == 0 {
            w.to_owned()
        } else {
            format!(" {w}")
        };
        json!([{"index": 0, "delta": {"content": w}, "logprobs": null, "finish_reason": null}])
    }));
    expected.push(json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]));
    expected.push(json!([]));
    let got: Vec<Value> = chunks.iter().map(|c| c["choices"].clone()).collect();
    assert_eq!(got, expected);
    assert_eq!(&chunks.last().unwrap()["usage"], usage);
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c.get("usage").is_none_or(Value::is_null))
    );
}

const CLAUDE: &str = "anthropic/claude-sonnet-4.5";

async fn anthropic_answers_are_translated_plain_and_streamed(_: Backend) {
    let anthropic = fakes::anthropic::start(Behaviour::default()).await;
    let app = app_with_anthropic(&anthropic, None).await;
    let plain = chat_ok(
        &app,
        &json!({"model": CLAUDE, "messages": messages(), "max_tokens": 50}),
    )
    .await;
    assert_plain_reply(&plain, CLAUDE, "anthropic");
    // One message (the system prompt goes apart), five tokens in the fake; a token a word.
    assert_eq!(plain["usage"]["prompt_tokens"], 5);
    assert_eq!(plain["usage"]["completion_tokens"], 10);
    assert_eq!(plain["usage"]["total_tokens"], 15);
    let sent = anthropic.state.requests().last().unwrap().clone();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), fakes::key());
    assert_eq!(sent.header("anthropic-version"), "2023-06-01");
    let body: Value = serde_json::from_str(&sent.body).unwrap();
    assert_eq!(
        body,
        json!({"model": "claude-sonnet-4-5", "max_tokens": 50, "system": "be brief",
            "messages": [{"role": "user", "content": [{"type": "text", "text": USER}]}]})
    );

    let sse = stream_ok(
        &app,
        &json!({"model": CLAUDE, "messages": messages(), "stream": true,
            "stream_options": {"include_usage": true}}),
    )
    .await;
    let sent: Value =
        serde_json::from_str(&anthropic.state.requests().last().unwrap().body).unwrap();
    assert_eq!(
        (sent["stream"].clone(), sent["max_tokens"].clone()),
        (json!(true), json!(4096))
    );
    assert_streamed_reply(
        &sse,
        CLAUDE,
        "anthropic",
        &json!({"prompt_tokens": 5, "completion_tokens": 10, "total_tokens": 15}),
    );

    // Without include_usage the usage chunk is not sent, yet usage is recorded.
    let sse = stream_ok(
        &app,
        &json!({"model": CLAUDE, "messages": messages(), "stream": true}),
    )
    .await;
    assert!(no_usage(&sse));
    assert_eq!(streamed_text(&sse), fakes::chat::DEFAULT_REPLY);
    let rows = usage_rows(&app, 3).await;
    assert!(
        rows.iter()
            .all(|r| r.provider == "anthropic" && r.prompt_tokens == 5),
        "{rows:?}"
    );

    // The catalog shows a chat-only provider as serving its models when it is set up.
    let listed = app.get_expect("/v1/models?output_modality=text", 200).await;
    let claude = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == CLAUDE)
        .unwrap();
    let served: Vec<(&str, bool)> = claude["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["available"] == true))
        .collect();
    assert!(served.contains(&("anthropic", true)), "{claude}");
    assert_eq!(claude["available"], true, "{claude}");
    let openrouter = app.get_expect("/api/v1/models", 200).await;
    assert!(
        openrouter["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == CLAUDE),
        "{openrouter}"
    );
}

async fn anthropic_tool_calls_go_both_ways(_: Backend) {
    let anthropic = fakes::anthropic::start(Behaviour::default()).await;
    let app = app_with_anthropic(&anthropic, None).await;
    let tools = json!([{"type": "function", "function": {"name": "weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let conversation = json!([
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_0", "type": "function",
            "function": {"name": "weather", "arguments": "{\"city\":\"Lyon\"}"}}]},
        {"role": "tool", "tool_call_id": "toolu_0", "content": "rain"},
    ]);
    let plain = chat_ok(
        &app,
        &json!({"model": CLAUDE, "messages": conversation, "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "weather"}}}),
    )
    .await;
    let sent: Value =
        serde_json::from_str(&anthropic.state.requests().last().unwrap().body).unwrap();
    assert_eq!(
        sent["tools"],
        json!([{"name": "weather", "description": "The weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}])
    );
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "weather"})
    );
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_0", "name": "weather",
                "input": {"city": "Lyon"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_0", "content": "rain"}]},
        ])
    );
    let message = &plain["choices"][0]["message"];
    assert_eq!(message["content"], fakes::anthropic::TOOL_PREAMBLE);
    assert_eq!(
        message["tool_calls"],
        json!([{"id": "toolu_fake1", "type": "function",
            "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}])
    );
    assert_eq!(plain["choices"][0]["finish_reason"], "tool_calls");

    let sse = stream_ok(
        &app,
        &json!({"model": CLAUDE, "messages": conversation, "tools": tools,
        "stream": true}),
    )
    .await;
    let calls: Vec<Value> = sse
        .events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"].get("tool_calls").cloned())
        .collect();
    assert_eq!(
        calls,
        vec![
            json!([{"index": 0, "id": "toolu_fake1", "type": "function",
                "function": {"name": "weather", "arguments": ""}}]),
            json!([{"index": 0, "function": {"arguments": "{\"city\""}}]),
            json!([{"index": 0, "function": {"arguments": ":\"Par"}}]),
            json!([{"index": 0, "function": {"arguments": "is\"}"}}]),
        ]
    );
    assert_eq!(streamed_text(&sse), fakes::anthropic::TOOL_PREAMBLE);
    let finish: Vec<&str> = sse
        .events
        .iter()
        .filter_map(|e| e["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["tool_calls"]);
}

async fn an_overloaded_anthropic_falls_back_to_openrouter(_: Backend) {
    // Overloaded (529) right after message_start: the role chunk is held back, so
    // nothing has reached the client yet.
    outages_fall_back_to_openrouter("anthropic", CLAUDE, &[529, 500, 429], |b| {
        fakes::anthropic::start(b)
    })
    .await;
    // Alone, an overloaded Anthropic is a 502 with its words; a mid-stream error event
    // ends the stream with one error event.
    let anthropic = fakes::anthropic::start(Behaviour {
        fail_submits: vec![529],
        chat_break_after: Some(3),
        ..Behaviour::default()
    })
    .await;
    let app = app_with_anthropic(&anthropic, None).await;
    let (status, _, text) = chat(&app, &json!({"model": CLAUDE, "messages": messages()})).await;
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("Overloaded"), "{text}");
    a_break_after_three_words_is_one_error_event(&app, CLAUDE, "Overloaded").await;
}

/// A stream of `model` that its upstream breaks off after three words (`chat_break_after:
/// Some(3)`) ends with one error event saying `says`, after the words.
pub(crate) async fn a_break_after_three_words_is_one_error_event(
    app: &TestApp,
    model: &str,
    says: &str,
) {
    let sse = stream_ok(
        app,
        &json!({"model": model, "messages": messages(), "stream": true}),
    )
    .await;
    let last = sse.events.last().unwrap();
    assert_eq!(last["error"]["code"], "upstream_error", "{last}");
    assert!(
        last["error"]["message"].as_str().unwrap().contains(says),
        "{last}"
    );
    assert_eq!(streamed_text(&sse), "Hello from the");
}

async fn anthropic_refuses_what_it_cannot_translate(_: Backend) {
    let anthropic = fakes::anthropic::start(Behaviour::default()).await;
    let openrouter = fakes::openrouter::start(Behaviour::default()).await;
    let app = app_with_anthropic(&anthropic, Some(&openrouter)).await;
    let (status, _, text) = chat(
        &app,
        &json!({"model": CLAUDE, "messages": messages(), "logprobs": true,
            "provider": {"only": ["anthropic"]}}),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    let e: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("logprobs"),
        "{e}"
    );
    assert!(anthropic.state.requests().is_empty(), "nothing was sent");
    // A 400 from Anthropic refuses too: its words come back, OpenRouter is not asked.
    let unauthorized = fakes::anthropic::start(Behaviour {
        fail_submits: vec![400],
        ..Behaviour::default()
    })
    .await;
    let app = app_with_anthropic(&unauthorized, Some(&openrouter)).await;
    let (status, _, text) = chat(&app, &json!({"model": CLAUDE, "messages": messages()})).await;
    assert_eq!(status, 400, "{text}");
    assert!(openrouter.state.requests().is_empty(), "{text}");
}
