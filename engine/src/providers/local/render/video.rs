//! Video: an animated abstract scene encoded to H.264 with OpenH264 and muxed into a faststart MP4.

use std::io::Cursor;

use mp4::{
    AvcConfig, BoxHeader, BoxType, FixedPointU8, FourCC, MediaConfig, Mp4Box, Mp4Config, Mp4Reader,
    Mp4Sample, Mp4Writer, TrackConfig, TrackType, WriteBox,
};
use openh264::OpenH264API;
use openh264::encoder::{
    Complexity, EncodedBitStream, Encoder, EncoderConfig, FrameRate, IntraFramePeriod,
    RateControlMode, UsageType, VuiConfig,
};
use openh264::formats::{RgbSliceU8, YUVBuffer};

use super::common::{Canvas, Fingerprint, Palette, Rgb, sine_turns, triangle};
use super::{RenderError, Rendered};

const MIN_SIDE: u32 = 16;
/// OpenH264 refuses anything beyond 3840x2160 (level 5.2), in either orientation.
const MAX_LONG_SIDE: u32 = 3840;
const MAX_SHORT_SIDE: u32 = 2160;
const MAX_FPS: u32 = 60;
const MAX_SECS: u32 = 120;

/// Track ticks per frame, with a timescale of `fps × 1000` ticks per second:
/// every frame lasts a whole number of ticks, so no duration is ever rounded.
const TICKS_PER_FRAME: u32 = 1000;

const STREAM_PALETTE: u64 = 1;
const STREAM_SCENE: u64 = 3;

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;

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

fn encoder_config(fps: u32) -> EncoderConfig {
    EncoderConfig::new()
        .max_frame_rate(FrameRate::from_hz(fps as f32))
        // Constant QP (OpenH264's default of 26) instead of a bitrate target:
        // rate control cannot work without dropping frames, and it warns on
        // stderr when asked to. Synthetic scenes stay small at this QP anyway.
        .rate_control_mode(RateControlMode::Off)
        // Every input frame must become exactly one sample, or the duration and
        // frame count in the container would lie.
        .skip_frames(false)
        .usage_type(UsageType::CameraVideoRealTime)
        .complexity(Complexity::Low)
        // One thread keeps output byte-identical regardless of scheduling, and
        // callers already parallelise across jobs.
        .num_threads(1)
        // A keyframe every two seconds keeps seeking cheap in players; with
        // scene-change detection off, keyframes land exactly there and nowhere else.
        .intra_frame_period(IntraFramePeriod::from_num_frames(fps * 2))
        .scene_change_detect(false)
        // Background detection lets slightly changed blocks be skipped, which
        // leaves faint smears where the ball has passed; without it the output
        // is cleaner, a little smaller and no slower.
        .background_detection(false)
        // OpenH264's RGB→YUV helpers use BT.601 limited-range coefficients; say
        // so in the SPS or browsers assume BT.709 and shift the colours.
        .vui(VuiConfig::bt601())
}

/// The animated composition: fixed choices per fingerprint, evaluated per frame.
///
/// The backdrop (gradient, glow, decorations, unlit HUD) is painted once and copied into
/// every frame. Besides halving the drawing cost, a still backdrop lets the
/// encoder skip most macroblocks of P-frames, which is what keeps a 720p clip
/// well under a second of CPU.
struct Scene {
    width: f32,
    height: f32,
    palette: Palette,
    backdrop: Canvas,
    ball_radius: f32,
    ball_phase: (f32, f32),
    ball_speed: (f32, f32),
    ring: (f32, f32, f32),
    ring_pulse_per_sec: f32,
}

impl Scene {
    fn new(fingerprint: &Fingerprint, width: u32, height: u32, frames: u32) -> Self {
        let palette = Palette::new(&mut fingerprint.rng(STREAM_PALETTE));
        let mut rng = fingerprint.rng(STREAM_SCENE);
        let mut backdrop = Canvas::new(width as usize, height as usize);
        let (width, height) = (width as f32, height as f32);
        let unit = width.min(height);

        let turn = rng.unit();
        let sweep = rng.range(0.6, 1.0);
        let gradient = (sine_turns(turn + 0.25) * sweep, sine_turns(turn) * sweep);
        backdrop.fill_gradient(
            palette.background[0],
            palette.background[1],
            gradient,
            rng.unit() * 0.3,
        );
        let (gx, gy) = (rng.range(0.2, 0.8) * width, rng.range(0.2, 0.8) * height);
        backdrop.glow(gx, gy, unit * rng.range(0.5, 0.8), palette.glow, 0.35);
        for _ in 0..3 + rng.below(4) {
            let colour = palette.accents[rng.below(4) as usize];
            let (x, y) = (rng.unit() * width, rng.unit() * height);
            backdrop.disc(x, y, unit * rng.range(0.015, 0.05), colour, 0.6);
        }
        Hud::new(width, height, frames).paint_static(&mut backdrop);

        let ball_radius = unit * rng.range(0.06, 0.11);
        let ball_phase = (rng.unit(), rng.unit());
        // Crossing the frame in roughly 1.5–3 s reads clearly as motion.
        let ball_speed = (rng.range(0.17, 0.33), rng.range(0.12, 0.3));
        let ring = (
            rng.range(0.2, 0.8) * width,
            rng.range(0.2, 0.8) * height,
            unit * rng.range(0.1, 0.2),
        );
        let ring_pulse_per_sec = rng.range(0.3, 0.7);
        Self {
            width,
            height,
            palette,
            backdrop,
            ball_radius,
            ball_phase,
            ball_speed,
            ring,
            ring_pulse_per_sec,
        }
    }

    fn ball_centre(&self, t: f32) -> (f32, f32) {
        let r = self.ball_radius;
        (
            r + (self.width - 2.0 * r) * triangle(self.ball_phase.0 + self.ball_speed.0 * t),
            r + (self.height - 2.0 * r) * triangle(self.ball_phase.1 + self.ball_speed.1 * t),
        )
    }

    fn draw(&self, canvas: &mut Canvas, index: u32, frames: u32, fps: u32) {
        let t = index as f32 / fps as f32;
        let unit = self.width.min(self.height);
        let p = &self.palette;
        canvas.reset_to(&self.backdrop);

        let (rx, ry, rr) = self.ring;
        let pulse = 0.75 + 0.5 * triangle(self.ring_pulse_per_sec * t);
        canvas.ring(
            rx,
            ry,
            rr * pulse,
            (unit * 0.012).max(1.5),
            p.accents[3],
            0.85,
        );

        // A short trail makes the direction of travel obvious even in a still.
        for (lag, alpha) in [(0.12, 0.15), (0.08, 0.25), (0.04, 0.4)] {
            let (x, y) = self.ball_centre(t - lag);
            canvas.disc(x, y, self.ball_radius, p.accents[0], alpha);
        }
        let (bx, by) = self.ball_centre(t);
        canvas.disc(bx, by, self.ball_radius, p.accents[0], 0.95);
        let highlight = self.ball_radius * 0.3;
        canvas.disc(
            bx - highlight,
            by - highlight,
            self.ball_radius * 0.25,
            WHITE,
            0.35,
        );

        let hud = Hud::new(self.width, self.height, frames);
        let done = (index + 1) as f32 / frames as f32;
        canvas.rect(
            hud.bar.0,
            hud.bar.1,
            hud.bar.0 + (hud.bar.2 - hud.bar.0) * done,
            hud.bar.3,
            p.accents[1],
            0.9,
        );
        for bit in 0..hud.bits {
            if (index >> (hud.bits - 1 - bit)) & 1 == 1 {
                let (x0, y0, x1, y1) = hud.cell(bit);
                canvas.rect(x0, y0, x1, y1, p.accents[2], 0.95);
            }
        }
    }
}

const WHITE: Rgb = Rgb {
    r: 255.0,
    g: 255.0,
    b: 255.0,
};
const BLACK: Rgb = Rgb {
    r: 0.0,
    g: 0.0,
    b: 0.0,
};

/// Geometry of the progress bar (bottom) and the binary frame counter (top left).
struct Hud {
    bar: (f32, f32, f32, f32),
    bits: u32,
    cell: f32,
}

impl Hud {
    fn new(width: f32, height: f32, frames: u32) -> Self {
        let thickness = (height / 36.0).max(4.0);
        Self {
            bar: (
                thickness,
                height - thickness * 2.0,
                width - thickness,
                height - thickness,
            ),
            bits: (32 - frames.saturating_sub(1).leading_zeros()).max(1),
            cell: (height / 40.0).max(3.0),
        }
    }

    /// Most significant bit first, left to right.
    fn cell(&self, bit: u32) -> (f32, f32, f32, f32) {
        let x = self.cell + self.cell * 1.4 * bit as f32;
        (x, self.cell, x + self.cell, self.cell * 2.0)
    }

    /// The unlit parts never change, so they belong to the backdrop.
    fn paint_static(&self, canvas: &mut Canvas) {
        canvas.rect(self.bar.0, self.bar.1, self.bar.2, self.bar.3, BLACK, 0.3);
        let right = self.cell(self.bits - 1).2;
        let c = self.cell;
        canvas.rect(c * 0.6, c * 0.6, right + c * 0.4, c * 2.4, BLACK, 0.35);
        for bit in 0..self.bits {
            let (x0, y0, x1, y1) = self.cell(bit);
            canvas.rect(x0, y0, x1, y1, WHITE, 0.15);
        }
    }
}

/// One encoded picture, split into the parameter sets (destined for `avcC`)
/// and the rest as an MP4 sample of 4-byte length-prefixed NAL units.
struct AccessUnit {
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    sample: Vec<u8>,
    is_idr: bool,
}

impl AccessUnit {
    fn from_bitstream(bitstream: &EncodedBitStream<'_>) -> Self {
        let mut unit = Self {
            sps: None,
            pps: None,
            sample: Vec::new(),
            is_idr: false,
        };
        let mut annex_b = Vec::new();
        bitstream.write_vec(&mut annex_b);
        for nal in openh264::nal_units(&annex_b) {
            let nal = strip_start_code(nal);
            let Some(&header) = nal.first() else { continue };
            match header & 0x1F {
                NAL_SPS => unit.sps = Some(nal.to_vec()),
                NAL_PPS => unit.pps = Some(nal.to_vec()),
                kind => {
                    unit.is_idr |= kind == NAL_IDR;
                    // NAL units are bounded by the frame size, far below 4 GiB.
                    unit.sample
                        .extend_from_slice(&(nal.len() as u32).to_be_bytes());
                    unit.sample.extend_from_slice(nal);
                }
            }
        }
        unit
    }
}

/// `nal_units` yields each unit starting with its `00 00 01` prefix (after
/// zero or more extra zeros) and possibly ending with zero bytes that belong to
/// the next prefix; MP4 wants neither. A NAL unit never ends in a zero byte
/// (its RBSP ends with the stop bit), so trimming trailing zeros is safe.
fn strip_start_code(nal: &[u8]) -> &[u8] {
    let start = nal
        .iter()
        .position(|&b| b != 0)
        .map_or(nal.len(), |i| i + 1);
    let body = &nal[start.min(nal.len())..];
    let end = body.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    &body[..end]
}

struct Muxer {
    writer: Mp4Writer<Cursor<Vec<u8>>>,
    sps: Vec<u8>,
    pps: Vec<u8>,
}

impl Muxer {
    const TRACK_ID: u32 = 1;

    fn new(
        first: &AccessUnit,
        width: u32,
        height: u32,
        fps: u32,
        frames: u32,
    ) -> Result<Self, RenderError> {
        let (Some(sps), Some(pps)) = (&first.sps, &first.pps) else {
            return Err(RenderError::encode(
                "h264",
                "first frame carries no SPS/PPS",
            ));
        };
        if sps.len() < 4 {
            return Err(RenderError::encode("h264", "SPS is truncated"));
        }
        // The movie and the track share one timescale so that durations never
        // get rounded when converted between them.
        let timescale = fps * TICKS_PER_FRAME;
        let brands = [*b"isom", *b"iso2", *b"avc1", *b"mp41"];
        let config = Mp4Config {
            major_brand: FourCC::from(*b"isom"),
            minor_version: 512,
            compatible_brands: brands.into_iter().map(FourCC::from).collect(),
            timescale,
        };
        // Keyframes (one every two seconds) dominate the size of such scenes.
        let keyframes = frames.div_ceil(fps * 2) as usize + 1;
        let guess = first.sample.len() * keyframes + frames as usize * 256;
        let mut writer = Mp4Writer::write_start(Cursor::new(Vec::with_capacity(guess)), &config)
            .map_err(mp4_err)?;
        writer
            .add_track(&TrackConfig {
                track_type: TrackType::Video,
                timescale,
                language: "und".to_owned(),
                media_conf: MediaConfig::AvcConfig(AvcConfig {
                    // Validation caps sides at 3840, well inside u16.
                    width: width as u16,
                    height: height as u16,
                    seq_param_set: sps.clone(),
                    pic_param_set: pps.clone(),
                }),
            })
            .map_err(mp4_err)?;
        Ok(Self {
            writer,
            sps: sps.clone(),
            pps: pps.clone(),
        })
    }

    fn push(&mut self, unit: AccessUnit, index: u32) -> Result<(), RenderError> {
        // avcC holds a single SPS/PPS pair for the whole track, so a change
        // mid-stream would make later frames undecodable.
        if unit.sps.as_ref().is_some_and(|s| *s != self.sps)
            || unit.pps.as_ref().is_some_and(|p| *p != self.pps)
        {
            return Err(RenderError::encode(
                "h264",
                "parameter sets changed mid-stream",
            ));
        }
        let sample = Mp4Sample {
            start_time: u64::from(index) * u64::from(TICKS_PER_FRAME),
            duration: TICKS_PER_FRAME,
            rendering_offset: 0,
            is_sync: unit.is_idr,
            bytes: bytes::Bytes::from(unit.sample),
        };
        self.writer
            .write_sample(Self::TRACK_ID, &sample)
            .map_err(mp4_err)
    }

    fn finish(mut self) -> Result<Vec<u8>, RenderError> {
        self.writer.write_end().map_err(mp4_err)?;
        faststart(self.writer.into_writer().into_inner())
    }
}

fn mp4_err(err: mp4::Error) -> RenderError {
    RenderError::encode("mp4", err)
}

/// Rewrites `ftyp · mdat · moov` (what `Mp4Writer` produces) as
/// `ftyp · moov · mdat`, shifting chunk offsets by the distance `mdat` moves.
/// Also fixes header fields the writer leaves at unhelpful defaults.
fn faststart(file: Vec<u8>) -> Result<Vec<u8>, RenderError> {
    let len = file.len() as u64;
    let parsed = Mp4Reader::read_header(Cursor::new(&file[..]), len).map_err(mp4_err)?;
    let ftyp = parsed.ftyp;
    let mut moov = parsed.moov;

    let mut mdat = None;
    let mut pos = 0u64;
    while pos < len {
        let header = BoxHeader::read(&mut Cursor::new(&file[pos as usize..])).map_err(mp4_err)?;
        if header.size < 8 || pos + header.size > len {
            return Err(RenderError::encode("mp4", "malformed top-level box"));
        }
        if header.name == BoxType::MdatBox {
            mdat = Some(pos as usize..(pos + header.size) as usize);
        }
        pos += header.size;
    }
    let mdat = mdat.ok_or_else(|| RenderError::encode("mp4", "no mdat box"))?;

    moov.mvhd.next_track_id = moov.traks.len() as u32 + 1;
    for trak in &mut moov.traks {
        // Only audio tracks have a volume; players ignore it here, validators do not.
        trak.tkhd.volume = FixedPointU8::new(0);
        trak.mdia.hdlr.name = "VideoHandler".to_owned();
    }

    // Offsets are rewritten in place without changing any box size, so the
    // size measured here is the final one.
    let new_mdat_start = ftyp.box_size() + moov.box_size();
    let old_mdat_start = mdat.start as u64;
    let relocate = |offset: u64| {
        offset
            .checked_sub(old_mdat_start)
            .map(|rel| rel + new_mdat_start)
            .ok_or_else(|| RenderError::encode("mp4", "chunk offset before mdat"))
    };
    for trak in &mut moov.traks {
        let stbl = &mut trak.mdia.minf.stbl;
        if let Some(stco) = &mut stbl.stco {
            for offset in &mut stco.entries {
                *offset = u32::try_from(relocate(u64::from(*offset))?)
                    .map_err(|_| RenderError::encode("mp4", "chunk offset overflow"))?;
            }
        }
        if let Some(co64) = &mut stbl.co64 {
            for offset in &mut co64.entries {
                *offset = relocate(*offset)?;
            }
        }
    }

    let mut out = Vec::with_capacity(file.len());
    ftyp.write_box(&mut out).map_err(mp4_err)?;
    moov.write_box(&mut out).map_err(mp4_err)?;
    if out.len() as u64 != new_mdat_start {
        return Err(RenderError::encode(
            "mp4",
            "moov size mismatch while relocating",
        ));
    }
    out.extend_from_slice(&file[mdat]);
    Ok(out)
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn start_codes_and_trailing_zeros_are_stripped() {
        assert_eq!(
            strip_start_code(&[0, 0, 0, 1, 0x65, 0x88, 0]),
            &[0x65, 0x88]
        );
        assert_eq!(strip_start_code(&[0, 0, 1, 0x41, 0x9A]), &[0x41, 0x9A]);
        assert_eq!(strip_start_code(&[0, 0, 0]), &[] as &[u8]);
    }
}
