//! What the local video shows: a backdrop painted once per clip (gradient, glow,
//! decorations), a bouncing ball with a trail, a pulsing ring, and a HUD whose progress
//! bar and binary frame counter make every frame tell its own number. Deterministic for
//! a fingerprint: all choices come from its random streams.

use super::super::common::{Canvas, Fingerprint, Palette, Rgb, sine_turns, triangle};

const STREAM_PALETTE: u64 = 1;
const STREAM_SCENE: u64 = 3;

/// The animated composition: fixed choices per fingerprint, evaluated per frame.
///
/// The backdrop (gradient, glow, decorations, unlit HUD) is painted once and copied into
/// every frame. Besides halving the drawing cost, a still backdrop lets the
/// encoder skip most macroblocks of P-frames, which is what keeps a 720p clip
/// well under a second of CPU.
pub(super) struct Scene {
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
    pub(super) fn new(fingerprint: &Fingerprint, width: u32, height: u32, frames: u32) -> Self {
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

    pub(super) fn draw(&self, canvas: &mut Canvas, index: u32, frames: u32, fps: u32) {
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
