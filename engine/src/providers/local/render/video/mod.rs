//! Video: an animated abstract scene (`scene.rs`) encoded to H.264 with OpenH264
//! (`h264.rs`) and muxed into a faststart MP4 (`mp4.rs`), one frame at a time.

mod h264;
mod mp4;
mod scene;

use openh264::OpenH264API;
use openh264::encoder::Encoder;
use openh264::formats::{RgbSliceU8, YUVBuffer};

use self::h264::{AccessUnit, encoder_config};
use self::mp4::Muxer;
use self::scene::Scene;
use super::common::{Canvas, Fingerprint};
use super::{RenderError, Rendered};

const MIN_SIDE: u32 = 16;
/// OpenH264 refuses anything beyond 3840x2160 (level 5.2), in either orientation.
const MAX_LONG_SIDE: u32 = 3840;
const MAX_SHORT_SIDE: u32 = 2160;
const MAX_FPS: u32 = 60;
const MAX_SECS: u32 = 120;

/// Renders an H.264 (`avc1`, constrained baseline) MP4 of `duration_secs × fps` frames.
///
/// The `moov` box precedes `mdat` so browsers can start playback before the
/// whole file has arrived. Frames are generated, converted and encoded one at a
/// time, so memory stays at a couple of frame buffers plus the compressed output.
///
/// # Errors
///
/// [`RenderError::InvalidDimensions`] for odd, too small (<16) or too large
/// (>3840x2160) sizes; [`RenderError::InvalidFrameRate`] outside 1..=60;
/// [`RenderError::InvalidDuration`] outside 1..=120 s; [`RenderError::Encode`]
/// if OpenH264 or the muxer fail.
pub fn render_video(
    prompt: &str,
    seed: u64,
    duration_secs: u32,
    width: u32,
    height: u32,
    fps: u32,
) -> Result<Rendered, RenderError> {
    validate(duration_secs, width, height, fps)?;
    let frames = duration_secs * fps;
    let (w, h) = (width as usize, height as usize);

    let fingerprint = Fingerprint::new(prompt, seed);
    let scene = Scene::new(&fingerprint, width, height, frames);

    let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), encoder_config(fps))
        .map_err(|e| RenderError::encode("h264", e))?;
    let mut canvas = Canvas::new(w, h);
    let mut yuv = YUVBuffer::new(w, h);
    let mut muxer: Option<Muxer> = None;

    for index in 0..frames {
        scene.draw(&mut canvas, index, frames, fps);
        yuv.read_rgb8(RgbSliceU8::new(&canvas.data, (w, h)));
        let timestamp = openh264::Timestamp::from_millis(u64::from(index) * 1000 / u64::from(fps));
        let bitstream = encoder
            .encode_at(&yuv, timestamp)
            .map_err(|e| RenderError::encode("h264", e))?;
        let unit = AccessUnit::from_bitstream(&bitstream);
        if unit.sample.is_empty() {
            // Frame skipping is disabled, so an empty output means the encoder
            // dropped a frame and the track would be shorter than promised.
            return Err(RenderError::encode(
                "h264",
                format!("encoder produced no data for frame {index}"),
            ));
        }
        let muxer = match &mut muxer {
            Some(muxer) => muxer,
            None => muxer.insert(Muxer::new(&unit, width, height, fps, frames)?),
        };
        muxer.push(unit, index)?;
    }

    let muxer = muxer.ok_or_else(|| RenderError::encode("mp4", "no frames were encoded"))?;
    Ok(Rendered {
        bytes: muxer.finish()?,
        content_type: "video/mp4",
        extension: "mp4",
    })
}

fn validate(duration_secs: u32, width: u32, height: u32, fps: u32) -> Result<(), RenderError> {
    let bad = |reason| {
        Err(RenderError::InvalidDimensions {
            width,
            height,
            reason,
        })
    };
    if !width.is_multiple_of(2) || !height.is_multiple_of(2) {
        return bad("width and height must be even for 4:2:0 video");
    }
    if width < MIN_SIDE || height < MIN_SIDE {
        return bad("width and height must be at least 16");
    }
    if width.max(height) > MAX_LONG_SIDE || width.min(height) > MAX_SHORT_SIDE {
        return bad("video must fit within 3840x2160 (or 2160x3840)");
    }
    if fps == 0 || fps > MAX_FPS {
        return Err(RenderError::InvalidFrameRate {
            fps,
            reason: "frame rate must be between 1 and 60",
        });
    }
    if duration_secs == 0 || duration_secs > MAX_SECS {
        return Err(RenderError::InvalidDuration {
            secs: duration_secs,
            reason: "video duration must be between 1 and 120 seconds",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use ::mp4::{BoxHeader, BoxType, FourCC, Mp4Reader, Mp4Sample};

    use super::h264::{NAL_PPS, NAL_SPS};
    use super::mp4::TICKS_PER_FRAME;
    use super::*;
    use openh264::decoder::Decoder;
    use openh264::formats::{YUVBuffer, YUVSource};

    struct Parsed {
        width: u16,
        height: u16,
        samples: Vec<Mp4Sample>,
        duration: std::time::Duration,
        timescale: u32,
        sps: Vec<u8>,
        pps: Vec<u8>,
        box_type: FourCC,
        movie_duration: std::time::Duration,
    }

    fn parse(bytes: &[u8]) -> Parsed {
        let mut reader =
            Mp4Reader::read_header(Cursor::new(bytes), bytes.len() as u64).expect("mp4 header");
        assert_eq!(reader.tracks().len(), 1);
        let track = reader.tracks().values().next().unwrap();
        let track_id = track.track_id();
        let mut parsed = Parsed {
            width: track.width(),
            height: track.height(),
            samples: Vec::new(),
            duration: track.duration(),
            timescale: track.timescale(),
            sps: track.sequence_parameter_set().unwrap().to_vec(),
            pps: track.picture_parameter_set().unwrap().to_vec(),
            box_type: track.box_type().unwrap(),
            movie_duration: reader.duration(),
        };
        let count = track.sample_count();
        for id in 1..=count {
            parsed
                .samples
                .push(reader.read_sample(track_id, id).unwrap().expect("sample"));
        }
        parsed
    }

    fn top_level_boxes(bytes: &[u8]) -> Vec<BoxType> {
        let mut names = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let header = BoxHeader::read(&mut Cursor::new(&bytes[pos..])).unwrap();
            names.push(header.name);
            pos += header.size as usize;
        }
        names
    }

    /// Back from MP4's length prefixes to the Annex-B stream OpenH264 decodes.
    fn to_annex_b(sample: &[u8], out: &mut Vec<u8>) {
        let mut rest = sample;
        while rest.len() >= 4 {
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(&rest[4..4 + len]);
            rest = &rest[4 + len..];
        }
        assert!(rest.is_empty(), "sample has trailing bytes");
    }

    /// Sample `i` as one Annex-B access unit, the first carrying SPS and PPS.
    fn access_unit(parsed: &Parsed, i: usize, sample: &[u8], packet: &mut Vec<u8>) {
        packet.clear();
        if i == 0 {
            for ps in [&parsed.sps, &parsed.pps] {
                packet.extend_from_slice(&[0, 0, 0, 1]);
                packet.extend_from_slice(ps);
            }
        }
        to_annex_b(sample, packet);
    }

    #[test]
    fn video_is_a_faststart_avc1_mp4_with_exact_timing() {
        let out = render_video("waves on a beach", 42, 2, 320, 180, 24).unwrap();
        assert_eq!(out.content_type, "video/mp4");
        assert_eq!(out.extension, "mp4");

        let boxes = top_level_boxes(&out.bytes);
        assert_eq!(
            boxes,
            vec![BoxType::FtypBox, BoxType::MoovBox, BoxType::MdatBox]
        );

        let parsed = parse(&out.bytes);
        assert_eq!(parsed.box_type, FourCC::from(*b"avc1"));
        assert_eq!((parsed.width, parsed.height), (320, 180));
        assert_eq!(parsed.samples.len(), 48);
        assert_eq!(parsed.duration, std::time::Duration::from_secs(2));
        assert_eq!(parsed.movie_duration, std::time::Duration::from_secs(2));
        assert_eq!(parsed.timescale, 24 * TICKS_PER_FRAME);
        assert!(parsed.samples[0].is_sync, "first sample must be a keyframe");
        // Keyframes every two seconds: only the first in a 2 s clip.
        assert_eq!(parsed.samples.iter().filter(|s| s.is_sync).count(), 1);
        for (i, sample) in parsed.samples.iter().enumerate() {
            assert_eq!(sample.start_time, i as u64 * u64::from(TICKS_PER_FRAME));
            assert_eq!(sample.duration, TICKS_PER_FRAME);
            assert_eq!(sample.rendering_offset, 0);
        }
        assert_eq!(parsed.sps[0] & 0x1F, NAL_SPS);
        assert_eq!(parsed.pps[0] & 0x1F, NAL_PPS);
    }

    #[test]
    fn video_bitstream_decodes_and_moves() {
        let out = render_video("waves on a beach", 42, 1, 320, 180, 12).unwrap();
        let parsed = parse(&out.bytes);
        let mut decoder = Decoder::new().unwrap();
        let mut frames = Vec::new();
        let mut packet = Vec::new();
        for (i, sample) in parsed.samples.iter().enumerate() {
            access_unit(&parsed, i, &sample.bytes, &mut packet);
            let image = decoder
                .decode(&packet)
                .expect("valid H.264")
                .expect("one picture per sample");
            assert_eq!(image.dimensions(), (320, 180));
            let mut rgb = vec![0; 320 * 180 * 3];
            image.write_rgb8(&mut rgb);
            frames.push(rgb);
        }
        assert_eq!(frames.len(), 12);
        let diff = |a: &[u8], b: &[u8]| {
            a.iter()
                .zip(b)
                .filter(|(x, y)| x.abs_diff(**y) > 24)
                .count()
        };
        assert!(
            diff(&frames[0], &frames[11]) > 1000,
            "the scene should visibly change over a second"
        );
        assert!(
            diff(&frames[5], &frames[6]) > 50,
            "consecutive frames should differ"
        );
    }

    #[test]
    fn decoded_colours_match_the_source() {
        let (w, h) = (64u32, 48u32);
        let out = render_video("colour check", 3, 1, w, h, 1).unwrap();
        let parsed = parse(&out.bytes);
        let mut packet = Vec::new();
        for ps in [&parsed.sps, &parsed.pps] {
            packet.extend_from_slice(&[0, 0, 0, 1]);
            packet.extend_from_slice(ps);
        }
        to_annex_b(&parsed.samples[0].bytes, &mut packet);
        let mut decoder = Decoder::new().unwrap();
        let image = decoder.decode(&packet).unwrap().unwrap();
        let mut decoded = vec![0; (w * h * 3) as usize];
        image.write_rgb8(&mut decoded);

        let scene = Scene::new(&Fingerprint::new("colour check", 3), w, h, 1);
        let mut canvas = Canvas::new(w as usize, h as usize);
        scene.draw(&mut canvas, 0, 1, 1);
        let mean_error = canvas
            .data
            .iter()
            .zip(&decoded)
            .map(|(a, b)| u64::from(a.abs_diff(*b)))
            .sum::<u64>()
            / decoded.len() as u64;
        assert!(mean_error < 12, "mean per-channel error {mean_error}");
    }

    /// Decodes every frame and compares its luma with the luma that was fed to
    /// the encoder, block by block, so smears left by skipped macroblocks show
    /// up. Luma only: chroma subsampling alone blurs saturated edges a lot.
    fn worst_block_error(
        prompt: &str,
        seed: u64,
        secs: u32,
        w: u32,
        h: u32,
        fps: u32,
    ) -> (f64, usize, usize, usize) {
        let out = render_video(prompt, seed, secs, w, h, fps).unwrap();
        let parsed = parse(&out.bytes);
        let frames = secs * fps;
        let (wu, hu) = (w as usize, h as usize);
        let scene = Scene::new(&Fingerprint::new(prompt, seed), w, h, frames);
        let mut canvas = Canvas::new(wu, hu);
        let mut source = YUVBuffer::new(wu, hu);
        let mut decoder = Decoder::new().unwrap();
        let mut packet = Vec::new();
        let mut worst = (0.0, 0, 0, 0);
        for (i, sample) in parsed.samples.iter().enumerate() {
            access_unit(&parsed, i, &sample.bytes, &mut packet);
            let decoded = decoder.decode(&packet).unwrap().unwrap();
            let stride = decoded.strides().0;
            scene.draw(&mut canvas, i as u32, frames, fps);
            source.read_rgb8(RgbSliceU8::new(&canvas.data, (wu, hu)));
            for by in (0..hu - 7).step_by(8) {
                for bx in (0..wu - 7).step_by(8) {
                    let mut sum = 0u32;
                    for y in by..by + 8 {
                        for x in bx..bx + 8 {
                            sum += u32::from(
                                source.y()[y * wu + x].abs_diff(decoded.y()[y * stride + x]),
                            );
                        }
                    }
                    let mean = f64::from(sum) / 64.0;
                    if mean > worst.0 {
                        worst = (mean, i, bx, by);
                    }
                }
            }
        }
        worst
    }

    #[test]
    fn decoded_frames_track_the_source_everywhere() {
        for (prompt, seed) in [
            ("a red fox running through snow", 7),
            ("waves on a beach", 42),
        ] {
            let (error, frame, x, y) = worst_block_error(prompt, seed, 2, 640, 360, 24);
            eprintln!("{prompt}: worst 8x8 luma block error {error:.1} at frame {frame} ({x},{y})");
            assert!(
                error < 6.0,
                "{prompt}: block error {error:.1} at frame {frame}"
            );
        }
    }

    #[test]
    fn video_is_deterministic_and_seed_sensitive() {
        let a = render_video("neon city", 1, 1, 160, 90, 10).unwrap();
        let b = render_video("neon city", 1, 1, 160, 90, 10).unwrap();
        let c = render_video("neon city", 2, 1, 160, 90, 10).unwrap();
        let d = render_video("neon town", 1, 1, 160, 90, 10).unwrap();
        assert_eq!(a.bytes, b.bytes);
        assert_ne!(a.bytes, c.bytes);
        assert_ne!(a.bytes, d.bytes);
    }

    #[test]
    fn video_has_periodic_keyframes() {
        let out = render_video("clock", 9, 5, 64, 64, 4).unwrap();
        let parsed = parse(&out.bytes);
        assert_eq!(parsed.samples.len(), 20);
        let sync: Vec<usize> = (0..20).filter(|&i| parsed.samples[i].is_sync).collect();
        assert_eq!(sync, vec![0, 8, 16]);
    }

    #[test]
    fn video_rejects_bad_parameters() {
        let cases = [
            (1, 321, 180, 24),
            (1, 320, 181, 24),
            (1, 0, 180, 24),
            (1, 320, 0, 24),
            (1, 8, 8, 24),
            (1, 3842, 2160, 24),
            (1, 3840, 2162, 24),
            (1, 2160, 3842, 24),
            (1, u32::MAX - 1, 2, 24),
        ];
        for (secs, w, h, fps) in cases {
            assert!(
                matches!(
                    render_video("x", 0, secs, w, h, fps),
                    Err(RenderError::InvalidDimensions { .. })
                ),
                "{w}x{h}"
            );
        }
        assert!(matches!(
            render_video("x", 0, 1, 64, 64, 0),
            Err(RenderError::InvalidFrameRate { .. })
        ));
        assert!(matches!(
            render_video("x", 0, 1, 64, 64, 61),
            Err(RenderError::InvalidFrameRate { .. })
        ));
        assert!(matches!(
            render_video("x", 0, 0, 64, 64, 24),
            Err(RenderError::InvalidDuration { .. })
        ));
        assert!(matches!(
            render_video("x", 0, 121, 64, 64, 24),
            Err(RenderError::InvalidDuration { .. })
        ));
    }
}
