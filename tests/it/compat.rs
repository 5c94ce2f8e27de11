//! The compatible APIs over HTTP: OpenAI's images, videos and models routes and
//! OpenRouter's models and videos routes, in the shapes those clients expect, with jobs
//! that run through the real queue and the local provider. `openai_sdk.rs` drives the
//! same routes with the official Python SDK.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use sha2::Sha256;

use mediagate::config::ProviderConfig;

use crate::fakes;
use crate::receiver::{Receiver, Reply};
use crate::support::{Backend, TestApp, answer};
use crate::{on_both_backends, on_embedded};

on_embedded!(
    models_are_an_openai_list_and_an_openrouter_list,
    errors_on_compat_routes_take_each_clients_shape,
    image_requests_the_model_cannot_do_are_refused_by_field,
    video_requests_the_model_cannot_do_are_refused_by_field,
    an_input_reference_reaches_the_provider_as_a_signed_link,
);
on_both_backends!(
    images_come_back_as_base64_or_links_n_at_a_time,
    an_image_that_takes_too_long_names_its_job,
    videos_live_through_create_poll_content_list_remix_and_delete,
    deleting_a_pending_video_cancels_it_and_leaves_nothing,
    openrouter_videos_are_polled_downloaded_and_called_back_signed,
);

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The local video model at its smallest: one second of 640x360.
fn video_form(prompt: &str) -> Form {
    Form::new()
        .text("prompt", prompt.to_owned())
        .text("model", "local/video")
        .text("seconds", "1")
        .text("size", "640x360")
}

/// GETs `path` with the key, asserting a 200 of `content_type`; returns the bytes.
async fn download(app: &TestApp, path: &str, content_type: &str) -> bytes::Bytes {
    let res = app.get(path).send().await.unwrap();
    assert_eq!(res.status(), 200, "{path}");
    assert_eq!(res.headers()["content-type"], content_type);
    res.bytes().await.unwrap()
}

/// DELETE as the SDK sends it: a JSON content type and no body.
async fn delete_video(app: &TestApp, id: &str) -> crate::support::Answer {
    let req = app
        .client
        .delete(format!("{}/v1/videos/{id}", app.url))
        .bearer_auth(&app.key)
        .header("content-type", "application/json");
    answer(req).await
}

async fn wait_video(app: &TestApp, id: &str) -> Value {
    let start = std::time::Instant::now();
    loop {
        let res = app.get(&format!("/v1/videos/{id}")).send().await.unwrap();
        let poll_after = res.headers().get("openai-poll-after-ms").cloned();
        let video: Value = res.json().await.unwrap();
        match video["status"].as_str() {
            Some("queued" | "in_progress") => {
                assert!(
                    poll_after.is_some(),
                    "a pending video says when to look again"
                );
            }
            _ => {
                assert!(poll_after.is_none());
                return video;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{video}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn models_are_an_openai_list_and_an_openrouter_list(backend: Backend) {
    let app = TestApp::start(backend).await;
    let list = app.get_expect("/v1/models", 200).await;
    assert_eq!(list["object"], "list");
    let local = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "local/video")
        .expect("local/video is listed");
    assert_eq!(local["object"], "model");
    assert!(local["created"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(local["owned_by"], "local");
    // Our own fields stay beside OpenAI's, and the filter still works.
    assert_eq!(local["output_modality"], "video");
    let images = app
        .get_expect("/v1/models?output_modality=image", 200)
        .await;
    assert!(
        images["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["output_modality"] == "image")
    );

    let or = app.get_expect("/api/v1/models", 200).await;
    let data = or["data"].as_array().unwrap();
    // Only what can run here: local models, no upstream is configured in this test.
    assert!(
        data.iter()
            .all(|m| m["id"].as_str().unwrap().starts_with("local/")),
        "{or}"
    );
    let image = data.iter().find(|m| m["id"] == "local/image").unwrap();
    assert_eq!(image["architecture"]["output_modalities"], json!(["image"]));
    assert_eq!(image["architecture"]["input_modalities"], json!(["text"]));
    assert_eq!(image["pricing"]["image"], "0");
    assert!(image["pricing"]["prompt"].is_string());
    assert!(image["created"].is_i64());
    assert!(image["name"].is_string() && image["description"].is_string());
    assert!(image.get("context_length").is_some() && image["top_provider"].is_object());
}

async fn errors_on_compat_routes_take_each_clients_shape(backend: Backend) {
    let app = TestApp::start(backend).await;
    // OpenAI: {"error": {message, type, param, code}} with the status the SDK maps.
    let res = app
        .client
        .post(format!("{}/v1/images/generations", app.url))
        .bearer_auth("mg_wrong")
        .json(&json!({"model": "local/image", "prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().contains_key("x-request-id"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
    assert!(body["error"]["message"].is_string());
    let missing = app
        .get_expect("/v1/videos/job_0123456789abcdef0123456789abcdef", 404)
        .await;
    assert_eq!(missing["error"]["type"], "not_found_error");
    // OpenRouter: {"error": {"code": <status>, "message", "metadata"}}.
    let res = app.get("/api/v1/videos/nope").send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert!(res.headers().contains_key("x-request-id"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], 404);
    assert!(body["error"]["message"].is_string());
    assert_eq!(body["error"]["metadata"]["code"], "not_found");
    // The gate's own refusals too: a bad key on /api/v1 is OpenRouter's 401.
    let res = app
        .client
        .get(format!("{}/api/v1/models", app.url))
        .bearer_auth("mg_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], 401, "{body}");
    assert_eq!(body["error"]["metadata"]["type"], "authentication_error");
    let bad = answer(
        app.post("/api/v1/videos")
            .json(&json!({"model": "local/video"})),
    )
    .await;
    let body = bad.expect(400);
    assert_eq!(body["error"]["code"], 400);
    assert_eq!(body["error"]["metadata"]["param"], "prompt");
}

async fn image_requests_the_model_cannot_do_are_refused_by_field(backend: Backend) {
    let app = TestApp::start(backend).await;
    let cases = [
        (json!({"prompt": "x"}), "model"),
        (json!({"model": "local/image"}), "prompt"),
        (json!({"model": "local/video", "prompt": "x"}), "model"),
        (json!({"model": "nope", "prompt": "x"}), "model"),
        (json!({"model": "local/image", "prompt": "x", "n": 11}), "n"),
        (
            json!({"model": "local/image", "prompt": "x", "size": "13x13"}),
            "size",
        ),
        (
            json!({"model": "local/image", "prompt": "x", "quality": "high"}),
            "quality",
        ),
        (
            json!({"model": "local/image", "prompt": "x", "output_format": "webp"}),
            "output_format",
        ),
        (
            json!({"model": "local/image", "prompt": "x", "background": "transparent"}),
            "background",
        ),
        (
            json!({"model": "local/image", "prompt": "x", "response_format": "gif"}),
            "response_format",
        ),
        (
            json!({"model": "local/image", "prompt": "x", "stream": true}),
            "stream",
        ),
        (
            json!({"model": "local/image", "prompt": "x", "style": "vivid"}),
            "style",
        ),
        // A model with fixed aspect ratios refuses a size none of them is near.
        (
            json!({"model": "google/imagen-4", "prompt": "x", "size": "2048x512"}),
            "size",
        ),
    ];
    for (body, param) in cases {
        let err = answer(app.post("/v1/images/generations").json(&body))
            .await
            .bad_request();
        assert_eq!(err["error"]["param"], param, "{body}: {err}");
    }
    // What the model does do is taken.
    let ok = answer(app.post("/v1/images/generations").json(&json!({
        "model": "local/image", "prompt": "x", "size": "64x64", "quality": "auto",
        "output_format": "png", "background": "opaque", "user": "u-1",
    })))
    .await
    .expect(200);
    assert_eq!(ok["output_format"], "png");
}

async fn video_requests_the_model_cannot_do_are_refused_by_field(backend: Backend) {
    let app = TestApp::start(backend).await;
    let post = |form: Form| answer(app.post("/v1/videos").multipart(form));
    let cases = [
        (video_form("x").text("seconds", "soon"), "seconds"),
        (video_form("x").text("seconds", "999"), "seconds"),
        (video_form("x").text("size", "1x1"), "size"),
        (video_form("x").text("size", "2048x256"), "size"),
        (video_form("x").text("colour", "red"), "colour"),
        (Form::new().text("model", "local/video"), "prompt"),
        (
            Form::new().text("prompt", "x").text("model", "local/image"),
            "model",
        ),
        // Not configured here: the default model names itself.
        (Form::new().text("prompt", "x"), "model"),
        (
            video_form("x").part(
                "input_reference",
                Part::bytes(PNG_MAGIC.to_vec())
                    .file_name("a.png")
                    .mime_str("image/png")
                    .unwrap(),
            ),
            "input_reference",
        ),
    ];
    for (form, param) in cases {
        let err = post(form).await.bad_request();
        assert_eq!(err["error"]["param"], param, "{err}");
    }
    let err = answer(
        app.post("/v1/videos")
            .json(&json!({"model": "local/video", "prompt": "x", "seconds": []})),
    )
    .await
    .bad_request();
    assert_eq!(err["error"]["param"], "seconds");
    for query in ["order=sideways", "limit=0", "after=nope", "colour=red"] {
        let err = app.get_expect(&format!("/v1/videos?{query}"), 400).await;
        assert!(err["error"]["param"].is_string(), "{query}: {err}");
    }
}

async fn images_come_back_as_base64_or_links_n_at_a_time(backend: Backend) {
    let app = TestApp::start(backend).await;
    let b64 = answer(app.post("/v1/images/generations").json(&json!({
        "model": "local/image", "prompt": "two foxes", "n": 2, "size": "64x64",
    })))
    .await
    .expect(200);
    assert!(b64["created"].as_i64().unwrap() > 1_700_000_000);
    let data = b64["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let images: Vec<Vec<u8>> = data
        .iter()
        .map(|d| STANDARD.decode(d["b64_json"].as_str().unwrap()).unwrap())
        .collect();
    assert!(images.iter().all(|i| i.starts_with(PNG_MAGIC)));
    assert_ne!(images[0], images[1], "n images are n pictures");
    // The job behind it is an ordinary job.
    let job = app.job(b64["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["outputs"].as_array().unwrap().len(), 2);

    let linked = answer(app.post("/v1/images/generations").json(&json!({
        "model": "image", "prompt": "a fox", "size": "64x64", "response_format": "url",
    })))
    .await;
    // A bare name finds its model only when one catalog model has it; "image" is local's.
    let linked = linked.expect(200);
    let url = linked["data"][0]["url"].as_str().unwrap();
    assert!(linked["data"][0].get("b64_json").is_none());
    // The link needs no key.
    let bytes = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    assert!(bytes.starts_with(PNG_MAGIC));
}

async fn an_image_that_takes_too_long_names_its_job(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.compat.image_wait_secs = 1).await;
    let res = app
        .post("/v1/images/generations")
        .json(
            &json!({"model": "local/image", "prompt": "slow", "size": "64x64",
                      "simulate": {"latency_ms": 2500}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
    assert_eq!(res.headers()["x-should-retry"], "false");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "job_still_running");
    let message = body["error"]["message"].as_str().unwrap();
    let id = message
        .split_whitespace()
        .find(|w| w.starts_with("job_"))
        .expect("the message names the job");
    // It goes on and can be fetched.
    let job = app.wait_terminal(id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "completed");
}

async fn videos_live_through_create_poll_content_list_remix_and_delete(backend: Backend) {
    let app = TestApp::start(backend).await;
    let created = answer(app.post("/v1/videos").multipart(video_form("a red fox")))
        .await
        .expect(200);
    assert_eq!(created["object"], "video");
    assert_eq!(created["status"], "queued");
    assert_eq!(created["seconds"], "1");
    assert_eq!(created["size"], "640x360");
    assert_eq!(created["prompt"], "a red fox");
    let id = created["id"].as_str().unwrap().to_owned();
    let done = wait_video(&app, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"], 100);
    assert!(done["completed_at"].is_i64());

    let mp4 = download(&app, &format!("/v1/videos/{id}/content"), "video/mp4").await;
    assert_eq!(&mp4[4..8], b"ftyp");
    let png = download(
        &app,
        &format!("/v1/videos/{id}/content?variant=thumbnail"),
        "image/png",
    )
    .await;
    assert!(png.starts_with(PNG_MAGIC));
    // The thumbnail is a picture of the video's own size.
    assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 640);
    assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 360);

    // JSON works as well as multipart; then a remix of the first.
    let second = answer(app.post("/v1/videos").json(&json!({
        "model": "local/video", "prompt": "a blue fox", "seconds": 1, "size": "640x360",
    })))
    .await
    .expect(200);
    let second_id = second["id"].as_str().unwrap().to_owned();
    let remix = answer(
        app.post(&format!("/v1/videos/{id}/remix"))
            .json(&json!({"prompt": "the fox, at night"})),
    )
    .await
    .expect(200);
    assert_eq!(remix["remixed_from_video_id"], id.as_str());
    assert_eq!(remix["seconds"], "1");
    assert_eq!(remix["size"], "640x360");
    let remix_id = remix["id"].as_str().unwrap().to_owned();
    for v in [&second_id, &remix_id] {
        assert_eq!(wait_video(&app, v).await["status"], "completed");
    }

    // Pages: newest first by default, oldest first with order=asc, `after` goes on.
    let page = app.get_expect("/v1/videos?limit=2", 200).await;
    let ids: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [remix_id.as_str(), second_id.as_str()]);
    assert_eq!(page["has_more"], true);
    assert_eq!(page["last_id"], second_id.as_str());
    let rest = app
        .get_expect(&format!("/v1/videos?limit=2&after={second_id}"), 200)
        .await;
    assert_eq!(rest["data"][0]["id"], id.as_str());
    assert_eq!(rest["has_more"], false);
    let asc = app.get_expect("/v1/videos?order=asc&limit=10", 200).await;
    let ids: Vec<&str> = asc["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str(), second_id.as_str(), remix_id.as_str()]);
    // Images are jobs but not videos.
    app.submit(json!({"model": "local/image", "input": {"prompt": "x", "size": "64x64"}}))
        .await;
    assert_eq!(
        app.get_expect("/v1/videos", 200).await["data"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Deleted, it is gone.
    let gone = delete_video(&app, &id).await.expect(200);
    assert_eq!(
        gone,
        json!({"id": id, "object": "video.deleted", "deleted": true})
    );
    app.get_expect(&format!("/v1/videos/{id}"), 404).await;
    app.get_expect(&format!("/v1/jobs/{id}"), 404).await;
    app.get_expect(&format!("/v1/videos/{id}/content"), 404)
        .await;
    delete_video(&app, &id).await.expect(404);
    // Another account sees none of them.
    let stranger = app
        .status_for_stranger(reqwest::Method::GET, &format!("/v1/videos/{second_id}"))
        .await;
    assert_eq!(stranger, 404);
}

async fn openrouter_videos_are_polled_downloaded_and_called_back_signed(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.webhook_allow_cidrs = "127.0.0.0/8".to_owned();
    })
    .await;
    let rx = Receiver::start(|_, _| Reply::ok()).await;
    let res = app
        .post("/api/v1/videos")
        .json(&json!({
            "model": "local/video", "prompt": "a fox", "duration": 1, "resolution": "360p",
            "aspect_ratio": "16:9", "callback_url": rx.url("/openrouter"),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let submitted: Value = res.json().await.unwrap();
    assert_eq!(submitted["status"], "pending");
    let id = submitted["id"].as_str().unwrap().to_owned();
    let polling_url = submitted["polling_url"].as_str().unwrap();
    assert!(polling_url.ends_with(&format!("/api/v1/videos/{id}")));
    let start = std::time::Instant::now();
    let status = loop {
        let status: Value = answer(app.client.get(polling_url).bearer_auth(&app.key))
            .await
            .expect(200);
        if !matches!(status["status"].as_str(), Some("pending" | "in_progress")) {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["status"], "completed", "{status}");
    let url = status["unsigned_urls"][0].as_str().unwrap();
    assert!(url.ends_with("/content?index=0"));
    let res = app
        .client
        .get(url)
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "video/mp4");

    let hits = rx.wait_hits(1, Duration::from_secs(30)).await;
    let hit = &hits[0];
    let body = hit.json();
    assert_eq!(body["type"], "video.generation.completed");
    assert_eq!(body["data"]["id"], id.as_str());
    assert_eq!(body["data"]["status"], "completed");
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        hit.header("x-openrouter-idempotency-key"),
        format!("{id}-completed")
    );
    // t=<unix>,v1=<hex HMAC-SHA256 of "{t},{body}">, keyed by the account's secret.
    let secret = app.get_json("/v1/webhook-secret").await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let header = hit.header("x-openrouter-signature");
    let (t, v1) = header
        .split_once(',')
        .map(|(t, v)| {
            (
                t.strip_prefix("t=").unwrap(),
                v.strip_prefix("v1=").unwrap(),
            )
        })
        .expect("t=…,v1=…");
    assert!((t.parse::<i64>().unwrap() - mediagate_engine::ids::now_ms() / 1000).abs() < 60);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t},{}", hit.body).as_bytes());
    assert_eq!(v1, hex::encode(mac.finalize().into_bytes()));
    // No Standard Webhooks headers on this format.
    assert_eq!(hit.header("webhook-signature"), "");
}

async fn deleting_a_pending_video_cancels_it_and_leaves_nothing(backend: Backend) {
    let app = TestApp::start(backend).await;
    // An Idempotency-Key holds across multipart sends (each has its own boundary): the
    // same form again is the same video; another form with that key is refused.
    let keyed = |form: Form| {
        app.post("/v1/videos")
            .header("idempotency-key", "video-once")
            .multipart(form)
    };
    let first = answer(keyed(video_form("brief"))).await.expect(200);
    let again = answer(keyed(video_form("brief"))).await.expect(200);
    assert_eq!(first["id"], again["id"]);
    answer(keyed(video_form("another"))).await.expect(422);
    delete_video(&app, first["id"].as_str().unwrap())
        .await
        .expect(200);
    // The local video model takes three seconds by default: still pending when deleted.
    let created = answer(app.post("/v1/videos").multipart(video_form("brief")))
        .await
        .expect(200);
    let id = created["id"].as_str().unwrap().to_owned();
    delete_video(&app, &id).await.expect(200);
    app.get_expect(&format!("/v1/jobs/{id}"), 404).await;
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM job_events WHERE job_id = $1")
        .bind(&id)
        .fetch_one(app.engine().db.pool())
        .await
        .unwrap();
    assert_eq!(rows, 0, "the video's events went with it");
    assert!(
        app.get_expect("/v1/videos", 200).await["data"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

async fn an_input_reference_reaches_the_provider_as_a_signed_link(backend: Backend) {
    let fake = fakes::openai::start(fakes::Behaviour::default()).await;
    let base = fake.base.clone();
    let app = TestApp::start_with(backend, move |c| {
        c.providers.insert(
            "openai".to_owned(),
            ProviderConfig {
                base_url: Some(base),
                api_key_env: Some(fakes::KEY_VAR.to_owned()),
                timeout_ms: 5_000,
                poll_interval_ms: 20,
                ..ProviderConfig::default()
            },
        );
    })
    .await;
    let reference = fakes::media("image/png");
    let form = Form::new()
        .text("prompt", "the fox in this picture")
        .text("model", "sora-2")
        .text("seconds", "4")
        .text("size", "720x1280")
        .part(
            "input_reference",
            Part::bytes(reference.clone())
                .file_name("fox.png")
                .mime_str("image/png")
                .unwrap(),
        );
    let created = answer(app.post("/v1/videos").multipart(form))
        .await
        .expect(200);
    assert_eq!(created["model"], "openai/sora-2");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(wait_video(&app, &id).await["status"], "completed");
    let submitted = fake
        .state
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path.ends_with("/videos"))
        .expect("the video was submitted upstream");
    let body: Value = serde_json::from_str(&submitted.body).expect("a JSON submission");
    assert_eq!(body["size"], "720x1280", "{body}");
    let link = body["input_reference"]["image_url"]
        .as_str()
        .expect("a link to the reference");
    assert!(
        link.starts_with(&format!("{}/v1/files/", app.url)),
        "{link}"
    );
    // The link needs no key and serves exactly what was uploaded.
    let res = reqwest::get(link).await.unwrap();
    assert_eq!(res.headers()["content-type"], "image/png");
    assert_eq!(res.bytes().await.unwrap().as_ref(), reference.as_slice());
    // Sora has its own thumbnail, which is the one served (the fake's video is no H.264,
    // so none could be made from it).
    let path = format!("/v1/videos/{id}/content?variant=thumbnail");
    let own = fakes::openai::THUMBNAIL_CONTENT_TYPE;
    let thumb = download(&app, &path, own).await;
    assert_eq!(thumb.as_ref(), fakes::media(own).as_slice());
    // Kept: the second read does not ask the upstream again.
    let asked = |fake: &fakes::Fake| {
        fake.state
            .requests()
            .iter()
            .filter(|r| {
                r.query
                    .iter()
                    .any(|(k, v)| k == "variant" && v == "thumbnail")
            })
            .count()
    };
    assert_eq!(asked(&fake), 1);
    download(&app, &path, own).await;
    assert_eq!(asked(&fake), 1);
}
