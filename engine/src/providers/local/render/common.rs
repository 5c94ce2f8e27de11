//! Shared building blocks for the renderers: prompt fingerprints, a seeded PRNG, colours and an RGB canvas.
//!
//! Everything here uses plain IEEE arithmetic (`+ - * /`, `sqrt`, `floor`) and no
//! transcendental functions from the platform's libm, so the same inputs give
//! byte-identical pixels and samples on every machine, not only on the one that
//! produced them first.

use sha2::{Digest, Sha256};

/// Bumping this changes every rendered output, so do it only on purpose.
const DOMAIN: &[u8] = b"mediagate/local-render/v1\0";

/// The SHA-256 digest of a `(prompt, seed)` pair; the root of all creative choices.
#[derive(Clone, Copy)]
pub(crate) struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub(crate) fn new(prompt: &str, seed: u64) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(DOMAIN);
        // The seed has a fixed width, so the prompt that follows cannot alias it.
        hasher.update(seed.to_be_bytes());
        hasher.update(prompt.as_bytes());
        Self(hasher.finalize().into())
    }

    /// An independent stream per purpose, so adding a draw in one renderer does
    /// not shift every later choice in another.
    pub(crate) fn rng(&self, stream: u64) -> Rng {
        let mut state = 0u64;
        for chunk in self.0.chunks_exact(8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            state = state.rotate_left(17) ^ u64::from_le_bytes(word);
        }
        let mut rng = Rng(state ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // Decorrelate streams whose states differ in few bits.
        rng.next_u64();
        rng.next_u64();
        rng
    }
}

/// SplitMix64: tiny and fully specified, so the sequence can never change under
/// us the way `rand`'s `StdRng` may between releases.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 24 bits of precision, exact in `f32`.
    pub(crate) fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    pub(crate) fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in `0..n`; `n` must be non-zero.
    pub(crate) fn below(&mut self, n: u32) -> u32 {
        // Modulo bias is irrelevant for the small `n` used in art direction.
        (self.next_u64() % u64::from(n)) as u32
    }

    pub(crate) fn chance(&mut self, p: f32) -> bool {
        self.unit() < p
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Rgb {
    pub(crate) r: f32,
    pub(crate) g: f32,
    pub(crate) b: f32,
}

impl Rgb {
    /// `h` in turns (wraps), `s` and `v` in `[0, 1]`; channels come out in `[0, 255]`.
    pub(crate) fn from_hsv(h: f32, s: f32, v: f32) -> Self {
        let h = (h - h.floor()) * 6.0;
        let sector = h.floor();
        let f = h - sector;
        let p = v * (1.0 - s);
        let q = v * (1.0 - s * f);
        let t = v * (1.0 - s * (1.0 - f));
        let (r, g, b) = match sector as u32 {
            0 => (v, t, p),
            1 => (q, v, p),
            2 => (p, v, t),
            3 => (p, q, v),
            4 => (t, p, v),
            _ => (v, p, q),
        };
        Self {
            r: r * 255.0,
            g: g * 255.0,
            b: b * 255.0,
        }
    }
}

/// Colours that belong together, picked once per fingerprint.
pub(crate) struct Palette {
    pub(crate) background: [Rgb; 2],
    pub(crate) glow: Rgb,
    pub(crate) accents: [Rgb; 4],
}

impl Palette {
    pub(crate) fn new(rng: &mut Rng) -> Self {
        let base = rng.unit();
        // Analogous, complementary or triadic schemes keep results from looking random.
        let spread = [0.08, 0.5, 1.0 / 3.0][rng.below(3) as usize];
        let dark = rng.chance(0.6);
        let (bg_v0, bg_v1) = if dark { (0.12, 0.38) } else { (0.78, 0.96) };
        let background = [
            Rgb::from_hsv(base, rng.range(0.45, 0.8), bg_v0),
            Rgb::from_hsv(base + spread * 0.5, rng.range(0.35, 0.7), bg_v1),
        ];
        let glow = Rgb::from_hsv(base + spread, 0.5, 1.0);
        let mut accents = [glow; 4];
        for (i, accent) in accents.iter_mut().enumerate() {
            let hue = base + spread * (i as f32 + 1.0) + rng.range(-0.04, 0.04);
            let value = if dark {
                rng.range(0.75, 1.0)
            } else {
                rng.range(0.3, 0.6)
            };
            *accent = Rgb::from_hsv(hue, rng.range(0.55, 0.95), value);
        }
        Self {
            background,
            glow,
            accents,
        }
    }
}

/// Triangle wave with period 1 and range `[0, 1]`: a loop-friendly `sin` stand-in.
pub(crate) fn triangle(x: f32) -> f32 {
    let f = x - x.floor();
    1.0 - (2.0 * f - 1.0).abs()
}

/// `sin(2π·phase)` from a polynomial, accurate to about 0.1 %.
pub(crate) fn sine_turns(phase: f32) -> f32 {
    let x = phase - phase.floor() - 0.5;
    let y = 8.0 * x - 16.0 * x * x.abs();
    -(0.225 * (y * y.abs() - y) + y)
}

fn smoothstep01(t: f32) -> f32 {
    let t = t.clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

fn to_u8(v: f32) -> u8 {
    // The `as` cast saturates, so out-of-range values clip instead of wrapping.
    (v + 0.5) as u8
}

/// Packed RGB8 pixels, row-major, no padding.
pub(crate) struct Canvas {
    pub(crate) width: usize,
    pub(crate) height: usize,
    pub(crate) data: Vec<u8>,
    /// Pixel boxes `(x0, y0, x1, y1)` painted since the last [`Canvas::reset_to`].
    dirty: Vec<(usize, usize, usize, usize)>,
    /// Whether everything outside `dirty` equals the base of the last reset.
    in_sync: bool,
}

impl Canvas {
    pub(crate) fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: vec![0; width * height * 3],
            dirty: Vec::new(),
            in_sync: false,
        }
    }

    /// Makes this canvas equal to `base` again, copying only what was painted
    /// since the previous reset. Animation frames touch a small part of the
    /// picture, so this is far cheaper than a full copy per frame.
    pub(crate) fn reset_to(&mut self, base: &Self) {
        debug_assert_eq!((self.width, self.height), (base.width, base.height));
        if !self.in_sync {
            self.data.copy_from_slice(&base.data);
            self.in_sync = true;
        } else {
            let stride = self.width * 3;
            for &(x0, y0, x1, y1) in &self.dirty {
                for y in y0..y1 {
                    let span = y * stride + x0 * 3..y * stride + x1 * 3;
                    self.data[span.clone()].copy_from_slice(&base.data[span]);
                }
            }
        }
        self.dirty.clear();
    }

    /// Linear gradient along `dir` (in units of the canvas diagonal), mirrored
    /// with a triangle wave so that `offset` can scroll it seamlessly.
    pub(crate) fn fill_gradient(&mut self, from: Rgb, to: Rgb, dir: (f32, f32), offset: f32) {
        let (w, h) = (self.width as f32, self.height as f32);
        let diag = (w * w + h * h).sqrt();
        let (dx, dy) = (dir.0 / diag, dir.1 / diag);
        self.dirty.push((0, 0, self.width, self.height));
        let row_len = self.width * 3;
        for (y, row) in self.data.chunks_exact_mut(row_len).enumerate() {
            // Incremental stepping keeps this to one add per pixel on the hot path.
            let mut t = offset + (y as f32 - h * 0.5) * dy - w * 0.5 * dx + 0.5;
            for px in row.chunks_exact_mut(3) {
                let f = t - t.floor();
                let m = 1.0 - (2.0 * f - 1.0).abs();
                px[0] = to_u8(from.r + (to.r - from.r) * m);
                px[1] = to_u8(from.g + (to.g - from.g) * m);
                px[2] = to_u8(from.b + (to.b - from.b) * m);
                t += dx;
            }
        }
    }

    /// Blends `colour` over the pixels of a box, with a per-pixel coverage function
    /// returning opacity in `[0, 1]`.
    fn blend_in_box(
        &mut self,
        bounds: (f32, f32, f32, f32),
        colour: Rgb,
        mut coverage: impl FnMut(f32, f32) -> f32,
    ) {
        let x0 = bounds.0.floor().max(0.0) as usize;
        let y0 = bounds.1.floor().max(0.0) as usize;
        let x1 = (bounds.2.ceil().max(0.0) as usize).min(self.width);
        let y1 = (bounds.3.ceil().max(0.0) as usize).min(self.height);
        if x0 >= x1 || y0 >= y1 {
            return;
        }
        self.dirty.push((x0, y0, x1, y1));
        for y in y0..y1 {
            let row = &mut self.data[y * self.width * 3..(y + 1) * self.width * 3];
            let py = y as f32 + 0.5;
            for x in x0..x1 {
                let a = coverage(x as f32 + 0.5, py);
                if a <= 0.0 {
                    continue;
                }
                let px = &mut row[x * 3..x * 3 + 3];
                let blend = |dst: u8, src: f32| {
                    let d = f32::from(dst);
                    to_u8(d + (src - d) * a)
                };
                px[0] = blend(px[0], colour.r);
                px[1] = blend(px[1], colour.g);
                px[2] = blend(px[2], colour.b);
            }
        }
    }

    /// Anti-aliased disc.
    pub(crate) fn disc(&mut self, cx: f32, cy: f32, radius: f32, colour: Rgb, alpha: f32) {
        let bounds = (
            cx - radius - 1.0,
            cy - radius - 1.0,
            cx + radius + 1.0,
            cy + radius + 1.0,
        );
        // Only the one-pixel rim needs a square root; inside and outside are decided on d².
        let inner = (radius - 0.5).max(0.0);
        let (inner2, outer2) = (inner * inner, (radius + 0.5) * (radius + 0.5));
        self.blend_in_box(bounds, colour, |x, y| {
            let d2 = (x - cx) * (x - cx) + (y - cy) * (y - cy);
            if d2 <= inner2 {
                alpha
            } else if d2 >= outer2 {
                0.0
            } else {
                (radius + 0.5 - d2.sqrt()).clamp(0.0, 1.0) * alpha
            }
        });
    }

    /// Anti-aliased ring of the given stroke width, centred on `radius`.
    pub(crate) fn ring(
        &mut self,
        cx: f32,
        cy: f32,
        radius: f32,
        stroke: f32,
        colour: Rgb,
        alpha: f32,
    ) {
        let outer = radius + stroke * 0.5;
        let bounds = (
            cx - outer - 1.0,
            cy - outer - 1.0,
            cx + outer + 1.0,
            cy + outer + 1.0,
        );
        self.blend_in_box(bounds, colour, |x, y| {
            let d = ((x - cx) * (x - cx) + (y - cy) * (y - cy)).sqrt();
            (stroke * 0.5 + 0.5 - (d - radius).abs()).clamp(0.0, 1.0) * alpha
        });
    }

    /// Axis-aligned rectangle with anti-aliased edges.
    pub(crate) fn rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, colour: Rgb, alpha: f32) {
        self.blend_in_box((x0 - 1.0, y0 - 1.0, x1 + 1.0, y1 + 1.0), colour, |x, y| {
            let cx = (x - x0 + 0.5).min(x1 - x + 0.5).clamp(0.0, 1.0);
            let cy = (y - y0 + 0.5).min(y1 - y + 0.5).clamp(0.0, 1.0);
            cx * cy * alpha
        });
    }

    /// Soft radial light that fades smoothly to nothing at `radius`.
    pub(crate) fn glow(&mut self, cx: f32, cy: f32, radius: f32, colour: Rgb, strength: f32) {
        let bounds = (cx - radius, cy - radius, cx + radius, cy + radius);
        let inv_r2 = 1.0 / (radius * radius);
        self.blend_in_box(bounds, colour, |x, y| {
            let d2 = ((x - cx) * (x - cx) + (y - cy) * (y - cy)) * inv_r2;
            let k = (1.0 - d2).max(0.0);
            k * k * strength
        });
    }

    /// Diagonal band across the whole canvas, soft on both sides.
    pub(crate) fn band(
        &mut self,
        angle: (f32, f32),
        centre: f32,
        half_width: f32,
        colour: Rgb,
        alpha: f32,
    ) {
        let (w, h) = (self.width as f32, self.height as f32);
        let (nx, ny) = angle;
        let norm = (nx * nx + ny * ny).sqrt().max(1e-6);
        let (nx, ny) = (nx / norm, ny / norm);
        let feather = (half_width * 0.35).max(1.0);
        self.blend_in_box((0.0, 0.0, w, h), colour, |x, y| {
            let d = ((x - w * 0.5) * nx + (y - h * 0.5) * ny - centre).abs();
            (1.0 - smoothstep01((d - half_width + feather) / feather)) * alpha
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_depends_on_prompt_and_seed() {
        let a = Fingerprint::new("a cat", 1).rng(0).next_u64();
        assert_eq!(a, Fingerprint::new("a cat", 1).rng(0).next_u64());
        assert_ne!(a, Fingerprint::new("a cat", 2).rng(0).next_u64());
        assert_ne!(a, Fingerprint::new("a dog", 1).rng(0).next_u64());
        assert_ne!(a, Fingerprint::new("a cat", 1).rng(1).next_u64());
    }

    #[test]
    fn sine_approximation_is_close() {
        for i in 0..1000 {
            let p = i as f32 / 1000.0;
            let exact = (p * std::f32::consts::TAU).sin();
            assert!((sine_turns(p) - exact).abs() < 2e-3, "phase {p}");
        }
    }

    #[test]
    fn shapes_clip_to_canvas() {
        let mut c = Canvas::new(8, 6);
        let white = Rgb::from_hsv(0.0, 0.0, 1.0);
        c.disc(-100.0, -100.0, 300.0, white, 1.0);
        c.ring(50.0, 50.0, 10.0, 3.0, white, 1.0);
        c.rect(-5.0, 2.0, 1000.0, 4.0, white, 0.5);
        c.glow(4.0, 3.0, 1e6, white, 1.0);
        assert_eq!(c.data.len(), 8 * 6 * 3);
    }

    #[test]
    fn reset_restores_exactly_the_base() {
        let mut base = Canvas::new(40, 30);
        base.fill_gradient(
            Rgb::from_hsv(0.1, 0.8, 0.3),
            Rgb::from_hsv(0.6, 0.8, 0.9),
            (0.7, 0.4),
            0.0,
        );
        let mut frame = Canvas::new(40, 30);
        let red = Rgb::from_hsv(0.0, 1.0, 1.0);
        for step in 0..5 {
            frame.reset_to(&base);
            assert!(frame.data == base.data, "step {step}");
            frame.disc(step as f32 * 9.0, 12.0, 6.0, red, 1.0);
            frame.rect(-3.0, 25.0, step as f32 * 10.0, 29.0, red, 0.8);
            assert!(frame.data != base.data);
        }
    }
}
