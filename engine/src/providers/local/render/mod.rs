//! Deterministic offline media rendering for the `local` provider: PNG images, H.264 MP4 video and WAV music.
//!
//! Every function is a pure, synchronous, CPU-bound computation: the same
//! `(prompt, seed, parameters)` always yields byte-identical output, and a
//! different prompt or seed yields visibly (or audibly) different content.
//! All creative choices are drawn from a SHA-256 of the prompt and seed.
//! Call these from `tokio::task::spawn_blocking`, never on a runtime worker.
//!
//! Limits (anything outside returns [`RenderError`], never panics):
//! - images: 1..=4096 pixels per side;
//! - video: even width and height, 16..=3840 by 16..=2160 (or the portrait
//!   equivalent), 1..=60 fps, 1..=120 seconds;
//! - music: 1..=300 seconds, 16-bit PCM stereo at 44.1 kHz.

mod audio;
mod common;
mod image;
mod video;

pub use self::audio::render_music;
pub use self::image::render_image;
pub use self::video::render_video;

/// A finished media file, ready to be stored or served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub extension: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("invalid dimensions {width}x{height}: {reason}")]
    InvalidDimensions {
        width: u32,
        height: u32,
        reason: &'static str,
    },
    #[error("invalid duration {secs}s: {reason}")]
    InvalidDuration { secs: u32, reason: &'static str },
    #[error("invalid frame rate {fps}: {reason}")]
    InvalidFrameRate { fps: u32, reason: &'static str },
    #[error("{format} encoding failed: {message}")]
    Encode {
        format: &'static str,
        message: String,
    },
}

impl RenderError {
    /// Encoder errors are flattened to text so that no codec crate's error type
    /// becomes part of this module's public API.
    fn encode(format: &'static str, err: impl std::fmt::Display) -> Self {
        Self::Encode {
            format,
            message: err.to_string(),
        }
    }
}
