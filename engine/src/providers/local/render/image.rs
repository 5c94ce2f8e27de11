//! Still images: an abstract composition of gradients, glows and shapes, encoded as PNG.

use super::common::{Canvas, Fingerprint, Palette, Rng, sine_turns};
use super::{RenderError, Rendered};

/// Larger images would take seconds and tens of MiB for no benefit to a placeholder provider.
const MAX_SIDE: u32 = 4096;

const STREAM_PALETTE: u64 = 1;
const STREAM_LAYOUT: u64 = 2;

/// Renders a `width`×`height` RGB PNG whose colours and layout derive from `prompt` and `seed`.
///
/// # Errors
///
/// [`RenderError::InvalidDimensions`] when a side is 0 or above 4096;
/// [`RenderError::Encode`] if the PNG encoder fails.
pub fn render_image(
    prompt: &str,
    seed: u64,
    width: u32,
    height: u32,
) -> Result<Rendered, RenderError> {
    if width == 0 || height == 0 {
        return Err(RenderError::InvalidDimensions {
            width,
            height,
            reason: "width and height must be non-zero",
        });
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(RenderError::InvalidDimensions {
            width,
            height,
            reason: "width and height must be at most 4096",
        });
    }

    let fingerprint = Fingerprint::new(prompt, seed);
    let mut canvas = Canvas::new(width as usize, height as usize);
    compose(&mut canvas, &fingerprint);

    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // `Fast` (fdeflate) is an order of magnitude quicker than `Balanced` and only
    // slightly larger on smooth synthetic art like this.
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder
        .write_header()
        .map_err(|e| RenderError::encode("png", e))?;
    writer
        .write_image_data(&canvas.data)
        .map_err(|e| RenderError::encode("png", e))?;
    writer.finish().map_err(|e| RenderError::encode("png", e))?;

    Ok(Rendered {
        bytes,
        content_type: "image/png",
        extension: "png",
    })
}

fn unit_vector(rng: &mut Rng) -> (f32, f32) {
    let turn = rng.unit();
    (sine_turns(turn + 0.25), sine_turns(turn))
}

fn compose(canvas: &mut Canvas, fingerprint: &Fingerprint) {
    let palette = Palette::new(&mut fingerprint.rng(STREAM_PALETTE));
    let mut rng = fingerprint.rng(STREAM_LAYOUT);
    let (w, h) = (canvas.width as f32, canvas.height as f32);
    let unit = w.min(h);

    let (dx, dy) = unit_vector(&mut rng);
    let sweep = rng.range(0.5, 0.95);
    canvas.fill_gradient(
        palette.background[0],
        palette.background[1],
        (dx * sweep, dy * sweep),
        rng.unit() * 0.3,
    );

    for _ in 0..1 + rng.below(2) {
        let (cx, cy) = (rng.range(0.1, 0.9) * w, rng.range(0.1, 0.9) * h);
        canvas.glow(
            cx,
            cy,
            unit * rng.range(0.4, 0.9),
            palette.glow,
            rng.range(0.25, 0.5),
        );
    }

    if rng.chance(0.6) {
        let dir = unit_vector(&mut rng);
        let accent = palette.accents[rng.below(4) as usize];
        canvas.band(
            dir,
            rng.range(-0.3, 0.3) * unit,
            unit * rng.range(0.03, 0.12),
            accent,
            0.35,
        );
    }

    let shapes = 5 + rng.below(6);
    for _ in 0..shapes {
        let accent = palette.accents[rng.below(4) as usize];
        let (cx, cy) = (rng.unit() * w, rng.unit() * h);
        let size = unit * rng.range(0.04, 0.22);
        let alpha = rng.range(0.55, 0.95);
        match rng.below(3) {
            0 => canvas.disc(cx, cy, size, accent, alpha),
            1 => canvas.ring(
                cx,
                cy,
                size,
                (size * rng.range(0.08, 0.3)).max(1.0),
                accent,
                alpha,
            ),
            _ => {
                let aspect = rng.range(0.3, 3.0);
                let (hw, hh) = (size * aspect.sqrt(), size / aspect.sqrt());
                canvas.rect(cx - hw, cy - hh, cx + hw, cy + hh, accent, alpha * 0.8);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> (png::OutputInfo, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().expect("png header");
        let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
        let info = reader.next_frame(&mut buf).expect("png frame");
        buf.truncate(info.buffer_size());
        (info, buf)
    }

    #[test]
    fn image_is_a_png_of_the_requested_size() {
        let out = render_image("a lighthouse at dusk", 7, 320, 200).unwrap();
        assert_eq!(out.content_type, "image/png");
        assert_eq!(out.extension, "png");
        let (info, pixels) = decode(&out.bytes);
        assert_eq!((info.width, info.height), (320, 200));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(pixels.len(), 320 * 200 * 3);
        let distinct: std::collections::HashSet<&[u8]> = pixels.chunks_exact(3).collect();
        assert!(
            distinct.len() > 50,
            "image should not be flat, got {} colours",
            distinct.len()
        );
    }

    #[test]
    fn image_is_deterministic() {
        let a = render_image("a lighthouse at dusk", 7, 256, 256).unwrap();
        let b = render_image("a lighthouse at dusk", 7, 256, 256).unwrap();
        assert_eq!(a.bytes, b.bytes);
    }

    #[test]
    fn image_differs_by_seed_and_prompt() {
        let base = decode(
            &render_image("a lighthouse at dusk", 7, 128, 128)
                .unwrap()
                .bytes,
        )
        .1;
        for other in [
            render_image("a lighthouse at dusk", 8, 128, 128).unwrap(),
            render_image("a lighthouse at dawn", 7, 128, 128).unwrap(),
        ] {
            let pixels = decode(&other.bytes).1;
            let changed = base
                .iter()
                .zip(&pixels)
                .filter(|(a, b)| a.abs_diff(**b) > 8)
                .count();
            assert!(
                changed > base.len() / 4,
                "only {changed} channel values differ"
            );
        }
    }

    #[test]
    fn image_accepts_odd_and_tiny_sizes() {
        for (w, h) in [(1, 1), (3, 7), (1, 4096)] {
            let (info, _) = decode(&render_image("x", 0, w, h).unwrap().bytes);
            assert_eq!((info.width, info.height), (w, h));
        }
    }

    #[test]
    fn image_rejects_bad_dimensions() {
        for (w, h) in [(0, 10), (10, 0), (4097, 10), (10, u32::MAX)] {
            assert!(matches!(
                render_image("x", 0, w, h),
                Err(RenderError::InvalidDimensions { .. })
            ));
        }
    }
}
