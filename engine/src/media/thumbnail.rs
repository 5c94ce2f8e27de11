//! Thumbnails of finished videos: the upstream's own where its API has one (Sora's), else
//! the first picture of the stored MP4, decoded and saved as a PNG, so every completed
//! H.264 video has one whichever provider made it (the local provider's videos included).
//!
//! Made on first request and kept in storage beside the video (`jobs/{id}/thumbnail.png`,
//! or `.webp`/`.jpg` as the upstream sent it); deleting the job deletes it with the
//! outputs.

use std::io::Cursor;

use bytes::Bytes;
use mp4::{Mp4Reader, TrackType};
use openh264::decoder::{DecodedYUV, Decoder};
use openh264::formats::YUVSource;

use crate::jobs::job::{Job, JobKind, JobStatus};
use crate::jobs::lifecycle::upstream_thumbnail;
use crate::{Engine, EngineError};

/// Largest video read to make a thumbnail: the decoder needs the file in memory.
const MAX_VIDEO_BYTES: u64 = 512 << 20;
/// Samples tried before giving up on a picture (a stream may open with non-picture units).
const MAX_SAMPLES: u32 = 30;

/// The image types a thumbnail is kept as, with their file extensions.
const KINDS: &[(&str, &str)] = &[
    ("image/png", "png"),
    ("image/webp", "webp"),
    ("image/jpeg", "jpg"),
];

/// Every key a job's thumbnail may be kept under.
pub fn keys(job_id: &str) -> Vec<String> {
    KINDS.iter().map(|(_, ext)| key(job_id, ext)).collect()
}

fn key(job_id: &str, extension: &str) -> String {
    format!("jobs/{job_id}/thumbnail.{extension}")
}

/// A thumbnail and its type.
#[derive(Debug, Clone)]
pub struct Thumbnail {
    pub content_type: &'static str,
    pub bytes: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    /// The job is not a completed video with an output.
    #[error("job {0} has no video to take a thumbnail from")]
    NoVideo(String),
    /// The video cannot be decoded here (not H.264 in MP4, or too large).
    #[error("no thumbnail can be made from this video: {0}")]
    Undecodable(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl Engine {
    /// The thumbnail of a completed video job, made and stored on first use.
    pub async fn thumbnail(&self, job: &Job) -> Result<Thumbnail, ThumbnailError> {
        let video = job
            .outputs
            .iter()
            .find(|o| o.content_type.starts_with("video/"))
            .filter(|_| job.kind == JobKind::Video && job.status == JobStatus::Completed)
            .ok_or_else(|| ThumbnailError::NoVideo(job.id.clone()))?;
        for (content_type, ext) in KINDS {
            if let Some(bytes) = self
                .storage
                .get(&key(&job.id, ext))
                .await
                .map_err(EngineError::from)?
            {
                return Ok(Thumbnail {
                    content_type,
                    bytes,
                });
            }
        }
        let own = upstream_thumbnail(self, job).await.and_then(|media| {
            let (content_type, ext) = KINDS.iter().find(|(t, _)| media.content_type == *t)?;
            Some((*content_type, *ext, media.bytes))
        });
        if let Some((content_type, ext, bytes)) = own {
            self.storage
                .put_at(&key(&job.id, ext), bytes.clone())
                .await
                .map_err(EngineError::from)?;
            return Ok(Thumbnail {
                content_type,
                bytes,
            });
        }
        if video.bytes > MAX_VIDEO_BYTES {
            return Err(ThumbnailError::Undecodable(format!(
                "the video is larger than {} MiB",
                MAX_VIDEO_BYTES >> 20
            )));
        }
        let mp4 = self
            .storage
            .get(&video.key)
            .await
            .map_err(EngineError::from)?
            .ok_or_else(|| {
                EngineError::Internal(format!("stored video {} is missing", video.key))
            })?;
        let png = tokio::task::spawn_blocking(move || first_frame_png(&mp4))
            .await
            .map_err(|e| EngineError::Internal(format!("thumbnail task: {e}")))?
            .map_err(ThumbnailError::Undecodable)?;
        let png = Bytes::from(png);
        self.storage
            .put_at(&key(&job.id, "png"), png.clone())
            .await
            .map_err(EngineError::from)?;
        Ok(Thumbnail {
            content_type: "image/png",
            bytes: png,
        })
    }
}

/// The first picture of an H.264 MP4 as an RGB PNG.
pub fn first_frame_png(mp4: &[u8]) -> Result<Vec<u8>, String> {
    let reader = Mp4Reader::read_header(Cursor::new(mp4), mp4.len() as u64)
        .map_err(|e| format!("not a readable MP4: {e}"))?;
    let mut reader = reader;
    let track = reader
        .tracks()
        .values()
        .find(|t| matches!(t.track_type(), Ok(TrackType::Video)))
        .ok_or("the MP4 has no video track")?;
    let track_id = track.track_id();
    let count = track.sample_count();
    let (sps, pps) = match (
        track.sequence_parameter_set(),
        track.picture_parameter_set(),
    ) {
        (Ok(sps), Ok(pps)) => (sps.to_vec(), pps.to_vec()),
        _ => return Err("the video is not H.264 (no avcC parameter sets)".into()),
    };
    let mut decoder = Decoder::new().map_err(|e| format!("H.264 decoder: {e}"))?;
    let mut packet = Vec::new();
    for ps in [&sps, &pps] {
        packet.extend_from_slice(&[0, 0, 0, 1]);
        packet.extend_from_slice(ps);
    }
    for id in 1..=count.min(MAX_SAMPLES) {
        let Some(sample) = reader
            .read_sample(track_id, id)
            .map_err(|e| format!("MP4 sample {id}: {e}"))?
        else {
            continue;
        };
        to_annex_b(&sample.bytes, &mut packet)?;
        let picture = decoder
            .decode(&packet)
            .map_err(|e| format!("H.264 decode: {e}"))?;
        packet.clear();
        if let Some(yuv) = picture {
            return encode_png(&yuv);
        }
    }
    let frames = decoder
        .flush_remaining()
        .map_err(|e| format!("H.264 decode: {e}"))?;
    match frames.first() {
        Some(yuv) => encode_png(yuv),
        None => Err("no picture decoded from the first samples".into()),
    }
}

/// MP4's length-prefixed NAL units as the Annex-B stream OpenH264 reads.
fn to_annex_b(sample: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let mut rest = sample;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let unit = rest
            .get(4..4 + len)
            .ok_or("an MP4 sample holds a truncated NAL unit")?;
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(unit);
        rest = &rest[4 + len..];
    }
    Ok(())
}

fn encode_png(yuv: &DecodedYUV<'_>) -> Result<Vec<u8>, String> {
    let (w, h) = yuv.dimensions();
    let mut rgb = vec![0u8; w * h * 3];
    yuv.write_rgb8(&mut rgb);
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w as u32, h as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(&rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::local::render::{render_image, render_video};

    #[test]
    fn the_first_frame_of_a_local_video_becomes_a_png_of_its_size() {
        let video = render_video("a fox", 7, 1, 64, 36, 8).unwrap();
        let png = first_frame_png(&video.bytes).unwrap();
        let decoder = png::Decoder::new(Cursor::new(&png));
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        assert_eq!((info.width, info.height), (64, 36));
        // Not a blank picture: the scene has more than one colour.
        let mut reader = reader;
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut buf).unwrap();
        assert!(buf.iter().any(|&b| b != buf[0]));
    }

    #[test]
    fn what_is_not_an_h264_mp4_is_refused_with_a_reason() {
        assert!(first_frame_png(b"not a video").is_err());
        let png = render_image("x", 1, 8, 8).unwrap();
        assert!(first_frame_png(&png.bytes).is_err());
    }
}
