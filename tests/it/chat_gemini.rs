//! Chat completions served by Google's Gemini API (the `google` provider) through its
//! fake: OpenAI-shaped requests translated to `generateContent` as the fake saw them,
//! plain and streamed answers translated back with usage (thinking tokens included),
//! tool calls both ways, fallback to OpenRouter before the first token, and what cannot
//! be translated refused. Adapters never touch the backend: the embedded one is enough.

use serde_json::{Value, json};

use crate::chat::{
    USER, a_break_after_three_words_is_one_error_event, app_with_provider, assert_plain_reply,
    assert_streamed_reply, chat, chat_ok, messages, no_usage, outages_fall_back_to_openrouter,
    stream_ok, streamed_text, usage_rows,
};
use crate::fakes::{self, Behaviour, Fake};
use crate::on_embedded;
use crate::support::{Backend, TestApp};

on_embedded!(
    gemini_answers_are_translated_plain_and_streamed,
    gemini_requests_are_translated_as_google_documents_them,
    gemini_tool_calls_go_both_ways,
    an_unavailable_gemini_falls_back_to_openrouter,
    gemini_refuses_what_it_cannot_translate,
);

const FLASH: &str = "google/gemini-2.5-flash";

/// An app whose `google` (and maybe `openrouter`) are the given fakes.
async fn app_with_google(google: &Fake, openrouter: Option<&Fake>) -> TestApp {
    app_with_provider("google", google, openrouter).await
}

/// The body of the last request the fake received, and its path.
fn last_sent(fake: &Fake) -> (String, Value) {
    let sent = fake.state.requests().last().unwrap().clone();
    (sent.path, serde_json::from_str(&sent.body).unwrap())
}

async fn gemini_answers_are_translated_plain_and_streamed(_: Backend) {
    let google = fakes::google::start(Behaviour::default()).await;
    let app = app_with_google(&google, None).await;
    let plain = chat_ok(
        &app,
        &json!({"model": FLASH, "messages": messages(), "max_tokens": 50}),
    )
    .await;
    assert_plain_reply(&plain, FLASH, "google");
    // The fake counts a token a word: "be brief" and the question in, ten words and its
    // thoughts out.
    let usage = json!({"prompt_tokens": 7, "completion_tokens": 10 + fakes::gemini::THOUGHTS,
        "total_tokens": 17 + fakes::gemini::THOUGHTS,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": fakes::gemini::THOUGHTS}});
    assert_eq!(plain["usage"], usage);
    let sent = google.state.requests().last().unwrap().clone();
    assert_eq!(sent.path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(sent.header("x-goog-api-key"), fakes::key());
    assert!(sent.query.is_empty(), "the key goes in the header only");
    assert_eq!(
        serde_json::from_str::<Value>(&sent.body).unwrap(),
        json!({"contents": [{"role": "user", "parts": [{"text": USER}]}],
            "systemInstruction": {"parts": [{"text": "be brief"}]},
            "generationConfig": {"maxOutputTokens": 50}})
    );

    let sse = stream_ok(
        &app,
        &json!({"model": FLASH, "messages": messages(), "stream": true,
            "stream_options": {"include_usage": true}}),
    )
    .await;
    let sent = google.state.requests().last().unwrap().clone();
    assert_eq!(
        sent.path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    );
    assert_eq!(sent.query, [("alt".to_owned(), "sse".to_owned())]);
    assert_streamed_reply(&sse, FLASH, "google", &usage);

    // Without include_usage the usage chunk is not sent, yet usage is recorded. Flash-Lite
    // does not think unless asked to.
    let sse = stream_ok(
        &app,
        &json!({"model": "google/gemini-2.5-flash-lite", "messages": messages(), "stream": true}),
    )
    .await;
    assert!(no_usage(&sse));
    assert_eq!(streamed_text(&sse), fakes::chat::DEFAULT_REPLY);
    let rows = usage_rows(&app, 3).await;
    assert!(
        rows.iter()
            .all(|r| r.provider == "google" && r.prompt_tokens == 7),
        "{rows:?}"
    );
    let completion: Vec<i64> = rows.iter().map(|r| r.completion_tokens).collect();
    assert_eq!(completion, [18, 18, 10]);
    assert_eq!(rows[2].model, "google/gemini-2.5-flash-lite");
    assert!(rows.iter().all(|r| r.cost_micros > 0), "{rows:?}");
}

async fn gemini_requests_are_translated_as_google_documents_them(_: Backend) {
    let google = fakes::google::start(Behaviour::default()).await;
    let app = app_with_google(&google, None).await;
    let answer = chat_ok(
        &app,
        &json!({"model": "google/gemini-2.5-pro", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": "answer in JSON"},
            {"role": "user", "content": "look at these"},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGRg==", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/fox.png"}},
                {"type": "text", "text": "which is a fox?"}]},
            {"role": "assistant", "content": "The second."},
            {"role": "assistant", "content": [{"type": "text", "text": "Surely."}]},
            {"role": "user", "content": "why?"}],
        "temperature": 0.2, "top_p": 0.5, "stop": ["END", "STOP"], "max_completion_tokens": 3,
        "n": 2, "seed": 42, "response_format": {"type": "json_object"},
        "reasoning_effort": "none", "user": "customer-1"}),
    )
    .await;
    let (path, sent) = last_sent(&google);
    assert_eq!(path, "/v1beta/models/gemini-2.5-pro:generateContent");
    assert_eq!(
        sent,
        json!({
            "contents": [
                {"role": "user", "parts": [{"text": "look at these"},
                    {"inlineData": {"mimeType": "image/webp", "data": "UklGRg=="}},
                    {"fileData": {"fileUri": "https://example.com/fox.png", "mimeType": "image/png"}},
                    {"text": "which is a fox?"}]},
                {"role": "model", "parts": [{"text": "The second."}, {"text": "Surely."}]},
                {"role": "user", "parts": [{"text": "why?"}]}
            ],
            "systemInstruction": {"parts": [{"text": "be brief"}, {"text": "answer in JSON"}]},
            "generationConfig": {"maxOutputTokens": 3, "temperature": 0.2, "topP": 0.5,
                "stopSequences": ["END", "STOP"], "candidateCount": 2, "seed": 42,
                "responseMimeType": "application/json",
                "thinkingConfig": {"thinkingBudget": 0}}
        })
    );
    // Two candidates, each cut at three tokens; no thinking asked for, none counted. The
    // prompt: sixteen words, two pictures.
    let texts: Vec<(&str, &str)> = answer["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["message"]["content"].as_str().unwrap(),
                c["finish_reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(texts, [("Hello from the", "length"); 2]);
    assert_eq!(answer["choices"][1]["index"], 1);
    assert_eq!(
        answer["usage"]["prompt_tokens"],
        16 + 2 * fakes::gemini::BLOB_TOKENS
    );
    assert_eq!(answer["usage"]["completion_tokens"], 6);

    // Streamed, each candidate is a choice of its own, finishing on its own.
    let sse = stream_ok(
        &app,
        &json!({"model": FLASH, "messages": messages(), "stream": true, "n": 2,
            "max_tokens": 2}),
    )
    .await;
    for index in [0, 1] {
        let of_choice: Vec<&Value> = sse
            .events
            .iter()
            .filter_map(|e| e["choices"].as_array())
            .flatten()
            .filter(|c| c["index"] == index)
            .collect();
        let text: String = of_choice
            .iter()
            .filter_map(|c| c["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hello from", "{index}");
        assert_eq!(of_choice[0]["delta"]["role"], "assistant");
        let finishes: Vec<&Value> = of_choice.iter().map(|c| &c["finish_reason"]).collect();
        assert_eq!(finishes.last().unwrap().as_str(), Some("length"));
    }
}

async fn gemini_tool_calls_go_both_ways(_: Backend) {
    let google = fakes::google::start(Behaviour::default()).await;
    let app = app_with_google(&google, None).await;
    let tools = json!([{"type": "function", "function": {"name": "weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
            "required": ["city"], "additionalProperties": false}}}]);
    let question = json!([{"role": "user", "content": "weather in Paris?"}]);
    let plain = chat_ok(
        &app,
        &json!({"model": FLASH, "messages": question, "tools": tools,
            "tool_choice": {"type": "function", "function": {"name": "weather"}}}),
    )
    .await;
    let (_, sent) = last_sent(&google);
    assert_eq!(
        sent["tools"],
        json!([{"functionDeclarations": [{"name": "weather", "description": "The weather in a city",
            "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"], "additionalProperties": false}}]}])
    );
    assert_eq!(
        sent["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}})
    );
    let message = plain["choices"][0]["message"].clone();
    assert_eq!(message["content"], fakes::gemini::TOOL_PREAMBLE);
    let call = message["tool_calls"][0].clone();
    let id = call["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("call_"), "{call}");
    // The call's thought signature rides where Google's OpenAI-compatible API puts it.
    let signed = json!({"google": {"thought_signature": fakes::gemini::THOUGHT_SIGNATURE}});
    assert_eq!(
        call,
        json!({"id": id, "type": "function",
            "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"},
            "extra_content": signed})
    );
    assert_eq!(plain["choices"][0]["finish_reason"], "tool_calls");

    // The call and its result go back: a functionCall in the model's turn, with its
    // thought signature, and a functionResponse named after the function the id called.
    let mut conversation = question.as_array().unwrap().clone();
    conversation.push(message);
    conversation.push(json!({"role": "tool", "tool_call_id": id, "content": "{\"celsius\": 21}"}));
    let answer = chat_ok(
        &app,
        &json!({"model": FLASH, "messages": conversation, "tools": tools}),
    )
    .await;
    let (_, sent) = last_sent(&google);
    assert_eq!(
        sent["contents"],
        json!([
            {"role": "user", "parts": [{"text": "weather in Paris?"}]},
            {"role": "model", "parts": [{"text": fakes::gemini::TOOL_PREAMBLE},
                {"functionCall": {"id": id, "name": "weather", "args": {"city": "Paris"}},
                    "thoughtSignature": fakes::gemini::THOUGHT_SIGNATURE}]},
            {"role": "user", "parts": [{"functionResponse": {"id": id, "name": "weather",
                "response": {"celsius": 21}}}]},
        ])
    );
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "The weather tool said {\"celsius\":21}"
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");

    let sse = stream_ok(
        &app,
        &json!({"model": FLASH, "messages": question, "tools": tools, "tool_choice": "required",
            "stream": true}),
    )
    .await;
    let (_, sent) = last_sent(&google);
    assert_eq!(
        sent["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY"}})
    );
    let calls: Vec<Value> = sse
        .events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"].get("tool_calls").cloned())
        .collect();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        (
            calls[0][0]["index"].clone(),
            calls[0][0]["function"].clone()
        ),
        (
            json!(0),
            json!({"name": "weather", "arguments": "{\"city\":\"Paris\"}"})
        )
    );
    assert!(calls[0][0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0][0]["extra_content"], signed);
    assert_eq!(streamed_text(&sse), fakes::gemini::TOOL_PREAMBLE);
    let finish: Vec<&str> = sse
        .events
        .iter()
        .filter_map(|e| e["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["tool_calls"]);

    // `tool_choice: "none"` keeps the model from calling.
    let answer = chat_ok(
        &app,
        &json!({"model": FLASH, "messages": question, "tools": tools, "tool_choice": "none"}),
    )
    .await;
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        fakes::chat::DEFAULT_REPLY
    );
}

async fn an_unavailable_gemini_falls_back_to_openrouter(_: Backend) {
    // Each status as a google.rpc.Status body, then a Status event before the first word.
    outages_fall_back_to_openrouter("google", FLASH, &[503, 500, 429], |b| {
        fakes::google::start(b)
    })
    .await;

    // Alone, an unavailable Gemini is a 502 with Google's words, a quota a 429 with
    // RetryInfo's delay; a Status mid-stream ends the stream with one error event.
    let google = fakes::google::start(Behaviour {
        fail_submits: vec![503, 429],
        retry_after: Some(17),
        chat_break_after: Some(3),
        ..Behaviour::default()
    })
    .await;
    let app = app_with_google(&google, None).await;
    let (status, _, text) = chat(&app, &json!({"model": FLASH, "messages": messages()})).await;
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("overloaded"), "{text}");
    let (status, headers, text) =
        chat(&app, &json!({"model": FLASH, "messages": messages()})).await;
    assert_eq!(status, 429, "{text}");
    assert_eq!(headers["retry-after"], "17");
    a_break_after_three_words_is_one_error_event(&app, FLASH, "UNAVAILABLE").await;
}

async fn gemini_refuses_what_it_cannot_translate(_: Backend) {
    let google = fakes::google::start(Behaviour::default()).await;
    let openrouter = fakes::openrouter::start(Behaviour::default()).await;
    let app = app_with_google(&google, Some(&openrouter)).await;
    for (field, value) in [
        ("logprobs", json!(true)),
        ("parallel_tool_calls", json!(false)),
        ("logit_bias", json!({"50256": -100})),
    ] {
        let mut body = json!({"model": FLASH, "messages": messages(),
            "provider": {"only": ["google"]}});
        body[field] = value;
        let (status, _, text) = chat(&app, &body).await;
        assert_eq!(status, 400, "{text}");
        let e: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().starts_with(field),
            "{e}"
        );
    }
    // An input-audio part of another format, named by its place.
    let (status, _, text) = chat(
        &app,
        &json!({"model": FLASH, "messages": [{"role": "user", "content": [{"type": "input_audio",
            "input_audio": {"data": "AAAA", "format": "flac"}}]}]}),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("messages[0].content[0].input_audio.format"),
        "{text}"
    );
    assert!(google.state.requests().is_empty(), "nothing was sent");
    assert!(
        openrouter.state.requests().is_empty(),
        "a refusal does not fall back"
    );

    // A 400 from Gemini refuses too: its words come back, OpenRouter is not asked.
    let refusing = fakes::google::start(Behaviour {
        fail_submits: vec![400],
        ..Behaviour::default()
    })
    .await;
    let app = app_with_google(&refusing, Some(&openrouter)).await;
    let (status, _, text) = chat(&app, &json!({"model": FLASH, "messages": messages()})).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("fake: the request failed"), "{text}");
    assert!(openrouter.state.requests().is_empty(), "{text}");

    // A prompt Google blocks is an answer that says so, plain and streamed.
    let blocking = fakes::google::start(Behaviour {
        refuse: true,
        ..Behaviour::default()
    })
    .await;
    let app = app_with_google(&blocking, None).await;
    let plain = chat_ok(&app, &json!({"model": FLASH, "messages": messages()})).await;
    assert_eq!(plain["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(plain["usage"]["prompt_tokens"], 7);
    let sse = stream_ok(
        &app,
        &json!({"model": FLASH, "messages": messages(), "stream": true}),
    )
    .await;
    let finish: Vec<&str> = sse
        .events
        .iter()
        .filter_map(|e| e["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["content_filter"]);
    assert_eq!(sse.events.last(), Some(&json!("[DONE]")));
}
