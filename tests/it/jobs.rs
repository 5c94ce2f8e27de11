//! The job API end to end: submit, watch, download, list, cancel, stream, isolation.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::on_both_backends;
use crate::support::{Backend, TestApp, answer, new_key, status_of};

const WAIT: Duration = Duration::from_secs(60);

on_both_backends!(
    video_job_completes_and_downloads,
    image_and_music_jobs_make_real_media,
    events_stream_every_change_and_end_with_the_terminal_one,
    list_pages_newest_first_with_a_cursor,
    cancel_stops_a_pending_job_once,
    another_accounts_job_is_not_found,
);

fn small_video(prompt: &str, latency_ms: u64) -> Value {
    json!({"model": "local/video", "input": {
        "prompt": prompt, "duration": 1, "resolution": "360p", "seed": 7,
        "simulate": {"latency_ms": latency_ms, "progress_steps": 2}},
        "metadata": {"order_id": "A-17"}})
}

async fn video_job_completes_and_downloads(backend: Backend) {
    let app = TestApp::start(backend).await;
    let created = app.submit(small_video("a red fox in snow", 300)).await;
    assert_eq!(created["status"], "queued");
    assert_eq!(created["object"], "job");
    assert_eq!(created["kind"], "video");
    assert_eq!(created["metadata"]["order_id"], "A-17");
    let id = created["id"].as_str().unwrap();
    assert!(
        created["polling_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/v1/jobs/{id}"))
    );

    let job = app.wait_terminal(id, WAIT).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["progress"], 100);
    assert!(job["started_at"].as_i64().is_some() && job["completed_at"].as_i64().is_some());
    let out = &job["outputs"][0];
    assert_eq!(out["content_type"], "video/mp4");

    let res = app
        .get(&format!("/v1/jobs/{id}/content?index=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "video/mp4");
    assert_eq!(res.headers()[header::ACCEPT_RANGES], "bytes");
    let etag = res.headers()[header::ETAG].to_str().unwrap().to_owned();
    let len: u64 = res.headers()[header::CONTENT_LENGTH]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = res.bytes().await.unwrap();
    assert_eq!(body.len() as u64, len);
    assert_eq!(len, out["bytes"].as_u64().unwrap());
    assert_eq!(
        hex::encode(Sha256::digest(&body)),
        out["sha256"].as_str().unwrap()
    );
    assert_eq!(etag, format!("\"{}\"", out["sha256"].as_str().unwrap()));
    assert_eq!(&body[4..8], b"ftyp", "an MP4 starts with an ftyp box");
    crate::lifecycle::assert_playable_h264(&body, 1.0);

    // Ranges and conditional requests.
    let res = app
        .get(&format!("/v1/jobs/{id}/content"))
        .header(header::RANGE, "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        res.headers()[header::CONTENT_RANGE],
        format!("bytes 10-19/{len}")
    );
    assert_eq!(res.bytes().await.unwrap(), body.slice(10..20));
    let req = app
        .get(&format!("/v1/jobs/{id}/content"))
        .header(header::RANGE, format!("bytes={len}-"));
    assert_eq!(status_of(req).await, StatusCode::RANGE_NOT_SATISFIABLE);
    let req = app
        .get(&format!("/v1/jobs/{id}/content"))
        .header(header::IF_NONE_MATCH, &etag);
    assert_eq!(status_of(req).await, StatusCode::NOT_MODIFIED);
    assert_eq!(
        status_of(app.get(&format!("/v1/jobs/{id}/content?index=1"))).await,
        StatusCode::NOT_FOUND
    );

    // The signed link works without a key; a tampered one does not.
    let url = out["url"].as_str().unwrap();
    let res = reqwest::get(url).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap(), body);
    let tampered = format!("{}x", url);
    assert_eq!(
        reqwest::get(&tampered).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    // Same prompt and seed → the same bytes.
    let again = app.submit(small_video("a red fox in snow", 0)).await;
    let again = app.wait_terminal(again["id"].as_str().unwrap(), WAIT).await;
    assert_eq!(again["outputs"][0]["sha256"], out["sha256"]);
}

async fn image_and_music_jobs_make_real_media(backend: Backend) {
    let app = TestApp::start(backend).await;
    let image = app
        .submit(
            json!({"model": "local/image", "input": {"prompt": "a lighthouse", "size": "256x128"}}),
        )
        .await;
    let music = app
        .submit(json!({"model": "local/music", "input": {"prompt": "calm piano", "duration": 2}}))
        .await;
    let image = app.wait_terminal(image["id"].as_str().unwrap(), WAIT).await;
    let music = app.wait_terminal(music["id"].as_str().unwrap(), WAIT).await;
    assert_eq!(image["status"], "completed", "{image}");
    assert_eq!(music["status"], "completed", "{music}");
    assert_eq!(image["kind"], "image");
    assert_eq!(image["outputs"][0]["content_type"], "image/png");
    assert_eq!(music["outputs"][0]["content_type"], "audio/wav");

    let png = app
        .get(&format!(
            "/v1/jobs/{}/content",
            image["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(png.headers()[header::CONTENT_TYPE], "image/png");
    let png = png.bytes().await.unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (256, 128));

    let wav = app
        .get(&format!(
            "/v1/jobs/{}/content",
            music["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    let wav = wav.bytes().await.unwrap();
    assert_eq!((&wav[..4], &wav[8..12]), (&b"RIFF"[..], &b"WAVE"[..]));
    assert!(
        wav.len() > 10_000,
        "two seconds of audio is more than {} bytes",
        wav.len()
    );
}

async fn events_stream_every_change_and_end_with_the_terminal_one(backend: Backend) {
    let app = TestApp::start(backend).await;
    // Progress steps 1.2 s apart: even a worker slowed by a busy machine sees one.
    let job = app.submit(small_video("events", 2400)).await;
    let id = job["id"].as_str().unwrap();
    let res = app
        .get(&format!("/v1/jobs/{id}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    // The stream ends by itself after the terminal event.
    let text = tokio::time::timeout(WAIT, res.text())
        .await
        .expect("stream ends")
        .unwrap();
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(kinds.first(), Some(&"job.started"), "{text}");
    assert_eq!(kinds.last(), Some(&"job.completed"), "{text}");
    assert!(kinds.contains(&"job.progress"), "{text}");
    let last_data = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .next_back()
        .unwrap();
    let event: Value = serde_json::from_str(last_data).unwrap();
    assert_eq!(event["object"], "event");
    assert!(event["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(event["data"]["id"], id);
    assert_eq!(event["data"]["status"], "completed");
    assert!(event["timestamp"].as_str().unwrap().ends_with('Z'));

    // Resuming after the second event replays only what followed it.
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    let res = app
        .get(&format!("/v1/jobs/{id}/events"))
        .header("last-event-id", ids[1])
        .send()
        .await
        .unwrap();
    let rest = res.text().await.unwrap();
    let rest_kinds: Vec<&str> = rest
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(rest_kinds, kinds[2..].to_vec());
}

async fn list_pages_newest_first_with_a_cursor(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let job = app.submit(json!({"model": "local/image", "input": {"prompt": format!("p{i}"), "size": "64x64"}})).await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    ids.reverse();
    let page: Value = app.get_json("/v1/jobs?limit=2").await;
    assert_eq!(page["object"], "list");
    assert_eq!(page["has_more"], true);
    let got: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids[..2].iter().map(String::as_str).collect::<Vec<_>>());
    let last = page["last_id"].as_str().unwrap();
    let page: Value = app
        .get_json(&format!("/v1/jobs?limit=10&after={last}"))
        .await;
    assert_eq!(page["has_more"], false);
    let got: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids[2..].iter().map(String::as_str).collect::<Vec<_>>());

    for id in &ids {
        app.wait_terminal(id, WAIT).await;
    }
    let done: Value = app
        .get_json("/v1/jobs?status=completed&model=local/image")
        .await;
    assert_eq!(done["data"].as_array().unwrap().len(), 5);
    let none: Value = app.get_json("/v1/jobs?status=failed").await;
    assert_eq!(none["data"].as_array().unwrap().len(), 0);
}

async fn cancel_stops_a_pending_job_once(backend: Backend) {
    let app = TestApp::start(backend).await;
    let job = app.submit(small_video("slow", 60_000)).await;
    let id = job["id"].as_str().unwrap();
    let cancelled = app.post_expect(&format!("/v1/jobs/{id}/cancel"), 200).await;
    assert_eq!(cancelled["status"], "cancelled");
    let err = app.post_expect(&format!("/v1/jobs/{id}/cancel"), 409).await;
    assert_eq!(err["error"]["type"], "conflict_error");
    // Whatever the worker was doing, the job stays cancelled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let job = app.job(id).await;
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["outputs"], json!([]));
    assert_eq!(
        status_of(app.get(&format!("/v1/jobs/{id}/content"))).await,
        StatusCode::CONFLICT
    );
    let events = answer(app.get(&format!("/v1/jobs/{id}/events")))
        .await
        .text(200);
    assert!(
        events.lines().any(|l| l == "event: job.cancelled"),
        "{events}"
    );
}

async fn another_accounts_job_is_not_found(backend: Backend) {
    let app = TestApp::start(backend).await;
    let job = app.submit(small_video("mine", 0)).await;
    let id = job["id"].as_str().unwrap();
    app.wait_terminal(id, WAIT).await;
    let other = new_key(app.running.as_ref().unwrap(), "acct_other").await;
    for path in [
        format!("/v1/jobs/{id}"),
        format!("/v1/jobs/{id}/content"),
        format!("/v1/jobs/{id}/events"),
    ] {
        let res = app
            .client
            .get(format!("{}{path}", app.url))
            .bearer_auth(&other)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let req = app
        .client
        .post(format!("{}/v1/jobs/{id}/cancel", app.url))
        .bearer_auth(&other);
    assert_eq!(status_of(req).await, StatusCode::NOT_FOUND);
    let req = app
        .client
        .get(format!("{}/v1/jobs", app.url))
        .bearer_auth(&other);
    let list = answer(req).await.expect(200);
    assert_eq!(list["data"], json!([]));
}
