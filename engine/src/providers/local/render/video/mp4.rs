//! MP4 for the local video: one `avc1` track whose timescale gives every frame a whole
//! number of ticks, written by `mp4::Mp4Writer` and then rewritten faststart (`moov`
//! before `mdat`) so that browsers can play it before it has all arrived.

use std::io::Cursor;

use mp4::{
    AvcConfig, BoxHeader, BoxType, FixedPointU8, FourCC, MediaConfig, Mp4Box, Mp4Config, Mp4Reader,
    Mp4Sample, Mp4Writer, TrackConfig, TrackType, WriteBox,
};

use super::h264::AccessUnit;
use crate::providers::local::render::RenderError;

/// Track ticks per frame, with a timescale of `fps × 1000` ticks per second:
/// every frame lasts a whole number of ticks, so no duration is ever rounded.
pub(super) const TICKS_PER_FRAME: u32 = 1000;

pub(super) struct Muxer {
    writer: Mp4Writer<Cursor<Vec<u8>>>,
    sps: Vec<u8>,
    pps: Vec<u8>,
}

impl Muxer {
    const TRACK_ID: u32 = 1;

    pub(super) fn new(
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

    pub(super) fn push(&mut self, unit: AccessUnit, index: u32) -> Result<(), RenderError> {
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

    pub(super) fn finish(mut self) -> Result<Vec<u8>, RenderError> {
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
