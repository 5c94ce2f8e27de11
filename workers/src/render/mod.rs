//! Placeholder until the renderer lands.
pub struct Rendered {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub extension: &'static str,
}
#[derive(Debug, thiserror::Error)]
#[error("render")]
pub struct RenderError;
pub fn render_image(_p: &str, _s: u64, _w: u32, _h: u32) -> Result<Rendered, RenderError> {
    Err(RenderError)
}
pub fn render_video(
    _p: &str,
    _s: u64,
    _d: u32,
    _w: u32,
    _h: u32,
    _f: u32,
) -> Result<Rendered, RenderError> {
    Err(RenderError)
}
pub fn render_music(_p: &str, _s: u64, _d: u32) -> Result<Rendered, RenderError> {
    Err(RenderError)
}
