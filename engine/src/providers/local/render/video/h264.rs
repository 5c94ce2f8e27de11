//! H.264 for the local video: the OpenH264 encoder's settings (constant QP, no skipped
//! frames, one thread for byte-identical output, a keyframe every two seconds) and the
//! split of each encoded picture into parameter sets and an MP4 sample.

use openh264::encoder::{
    Complexity, EncodedBitStream, EncoderConfig, FrameRate, IntraFramePeriod, RateControlMode,
    UsageType, VuiConfig,
};

const NAL_IDR: u8 = 5;
pub(super) const NAL_SPS: u8 = 7;
pub(super) const NAL_PPS: u8 = 8;

pub(super) fn encoder_config(fps: u32) -> EncoderConfig {
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

/// One encoded picture, split into the parameter sets (destined for `avcC`)
/// and the rest as an MP4 sample of 4-byte length-prefixed NAL units.
pub(super) struct AccessUnit {
    pub(super) sps: Option<Vec<u8>>,
    pub(super) pps: Option<Vec<u8>>,
    pub(super) sample: Vec<u8>,
    pub(super) is_idr: bool,
}

impl AccessUnit {
    pub(super) fn from_bitstream(bitstream: &EncodedBitStream<'_>) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

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
