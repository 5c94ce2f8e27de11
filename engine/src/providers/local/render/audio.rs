//! Music: a short synthesised piece (pad chords, bass, melody, hi-hats) written as 16-bit stereo 44.1 kHz WAV.

use std::io::Cursor;

use super::common::{Fingerprint, Rng, sine_turns};
use super::{RenderError, Rendered};

const SAMPLE_RATE: u32 = 44_100;
const CHANNELS: u16 = 2;
/// Five minutes is 53 MB of PCM: enough for any placeholder, small enough to hold in memory.
const MAX_SECS: u32 = 300;
/// Mixing happens in blocks so the float scratch space stays constant with duration.
const BLOCK: usize = 4096;

const STREAM_MUSIC: u64 = 4;

/// Voice levels are set relative to each other; this lifts the mix to peaks
/// around -5 dBFS, with `soft_clip` catching the rare pile-up.
const MASTER_GAIN: f32 = 1.6;

/// `2^(k/12)` for one octave, as literals so pitches never depend on libm's `powf`.
const SEMITONE_RATIOS: [f64; 12] = [
    1.0,
    1.059_463_094_359_295_3,
    1.122_462_048_309_373,
    1.189_207_115_002_721,
    1.259_921_049_894_873_2,
    1.334_839_854_170_034_4,
    std::f64::consts::SQRT_2,
    1.498_307_076_876_681_5,
    1.587_401_051_968_199_4,
    1.681_792_830_507_429,
    1.781_797_436_280_678_5,
    1.887_748_625_363_386_8,
];

const MODES: [[i32; 7]; 3] = [
    [0, 2, 4, 5, 7, 9, 11], // major
    [0, 2, 3, 5, 7, 8, 10], // natural minor
    [0, 2, 3, 5, 7, 9, 10], // dorian
];

/// Scale degrees of each bar's chord root: the usual pop and folk staples.
const PROGRESSIONS: [[i32; 4]; 6] = [
    [0, 4, 5, 3],
    [0, 5, 3, 4],
    [5, 3, 0, 4],
    [0, 3, 4, 3],
    [0, 2, 3, 4],
    [0, 3, 5, 4],
];

/// Bass onsets within a bar, in beats.
const BASS_PATTERNS: [&[f64]; 4] = [
    &[0.0, 2.0],
    &[0.0, 1.0, 2.0, 3.0],
    &[0.0, 1.5, 2.0],
    &[0.0, 0.5, 2.0, 2.5],
];

/// Renders `duration_secs` of music as 16-bit PCM stereo at 44.1 kHz.
///
/// Key, mode, tempo, chord progression, bass pattern and melody all derive from
/// `prompt` and `seed`; the melody is a four-bar motif repeated with variations.
///
/// # Errors
///
/// [`RenderError::InvalidDuration`] outside 1..=300 s; [`RenderError::Encode`]
/// if the WAV writer fails.
pub fn render_music(prompt: &str, seed: u64, duration_secs: u32) -> Result<Rendered, RenderError> {
    if duration_secs == 0 || duration_secs > MAX_SECS {
        return Err(RenderError::InvalidDuration {
            secs: duration_secs,
            reason: "music duration must be between 1 and 300 seconds",
        });
    }
    let total = (duration_secs * SAMPLE_RATE) as usize;
    let song = Song::compose(&mut Fingerprint::new(prompt, seed).rng(STREAM_MUSIC), total);

    let spec = hound::WavSpec {
        channels: CHANNELS,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let capacity = 44 + total * usize::from(CHANNELS) * 2;
    let mut cursor = Cursor::new(Vec::with_capacity(capacity));
    // Borrowing the cursor lets us keep the buffer after `finalize` consumes the writer.
    let mut writer =
        hound::WavWriter::new(&mut cursor, spec).map_err(|e| RenderError::encode("wav", e))?;

    let mut left = vec![0f32; BLOCK];
    let mut right = vec![0f32; BLOCK];
    let fade_in = SAMPLE_RATE as usize / 200;
    let fade_out = (total / 4).min(SAMPLE_RATE as usize * 3 / 2);
    for block_start in (0..total).step_by(BLOCK) {
        let len = BLOCK.min(total - block_start);
        left[..len].fill(0.0);
        right[..len].fill(0.0);
        song.mix(block_start, &mut left[..len], &mut right[..len]);
        for i in 0..len {
            let n = block_start + i;
            // Linear fades at both ends avoid clicks when playback starts or stops.
            let edge = ((n + 1) as f32 / fade_in as f32)
                .min((total - n) as f32 / fade_out as f32)
                .min(1.0);
            for sample in [left[i], right[i]] {
                let value = (soft_clip(sample * MASTER_GAIN) * edge * 32_767.0).round() as i16;
                writer
                    .write_sample(value)
                    .map_err(|e| RenderError::encode("wav", e))?;
            }
        }
    }
    writer
        .finalize()
        .map_err(|e| RenderError::encode("wav", e))?;

    Ok(Rendered {
        bytes: cursor.into_inner(),
        content_type: "audio/wav",
        extension: "wav",
    })
}

/// Rational tanh approximation: transparent at normal levels, rounds off peaks
/// instead of wrapping when several voices line up.
fn soft_clip(x: f32) -> f32 {
    let x = x.clamp(-3.0, 3.0);
    x * (27.0 + x * x) / (27.0 + 9.0 * x * x)
}

fn midi_to_hz(note: i32) -> f64 {
    let rel = note - 69;
    let octave = rel.div_euclid(12);
    440.0 * SEMITONE_RATIOS[rel.rem_euclid(12) as usize] * 2f64.powi(octave)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Voice {
    Pad,
    Bass,
    Lead,
    Hat,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Note {
    start: usize,
    /// Nominal length in samples; envelopes may ring on past it (see `tail`).
    length: usize,
    hz: f64,
    amp: f32,
    /// 0 = hard left, 1 = hard right.
    pan: f32,
    voice: Voice,
}

impl Note {
    fn tail(&self) -> usize {
        let secs = match self.voice {
            Voice::Pad => 0.6,
            Voice::Lead => 0.25,
            Voice::Bass | Voice::Hat => 0.0,
        };
        (secs * f64::from(SAMPLE_RATE)) as usize
    }

    fn end(&self) -> usize {
        self.start + self.length + self.tail()
    }

    /// Amplitude envelope at `i` samples after the onset.
    fn envelope(&self, i: usize) -> f32 {
        let sr = SAMPLE_RATE as f32;
        let t = i as f32 / sr;
        let len = self.length as f32 / sr;
        match self.voice {
            Voice::Pad => {
                let attack = (t / 0.3).min(1.0);
                let release = if t > len { 1.0 - (t - len) / 0.6 } else { 1.0 };
                smooth(attack) * smooth(release.max(0.0))
            }
            Voice::Lead => {
                let attack = (t / 0.01).min(1.0);
                let decay = 1.0 - (t / (len + 0.25)).min(1.0);
                attack * decay * decay
            }
            Voice::Bass => {
                let attack = (t / 0.005).min(1.0);
                let decay = 1.0 - (t / len).min(1.0);
                attack * decay * decay.sqrt()
            }
            Voice::Hat => {
                let decay = 1.0 - (t / len).min(1.0);
                let d2 = decay * decay;
                d2 * d2
            }
        }
    }

    /// Waveform for one channel; `detune` spreads the pad between the speakers.
    fn wave(&self, i: usize, detune: f64, env: f32) -> f32 {
        let cycles = self.hz * detune * i as f64 / f64::from(SAMPLE_RATE);
        // Reducing in f64 keeps long notes in tune; f32 would lose the fraction.
        let phase = (cycles - cycles.floor()) as f32;
        let h = |k: f32| sine_turns(phase * k);
        match self.voice {
            Voice::Pad => h(1.0) + 0.35 * h(2.0) + 0.12 * h(3.0),
            // Overtones fade faster than the fundamental, like a plucked string.
            Voice::Lead => h(1.0) + (0.45 * h(2.0) + 0.2 * h(3.0)) * env,
            Voice::Bass => h(1.0) + 0.3 * h(2.0),
            Voice::Hat => {
                let noise = |k: usize| {
                    let mut z = (k as u64 ^ (self.start as u64).rotate_left(32))
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    z = (z ^ (z >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    ((z >> 40) as f32 / (1u64 << 23) as f32) - 1.0
                };
                // A first difference pushes white noise towards the treble.
                (noise(i + 1) - noise(i)) * 0.5
            }
        }
    }
}

fn smooth(t: f32) -> f32 {
    t * t * (3.0 - 2.0 * t)
}

/// A fully planned piece: every note with its onset, sorted by onset.
struct Song {
    notes: Vec<Note>,
}

impl Song {
    fn compose(rng: &mut Rng, total: usize) -> Self {
        let sr = f64::from(SAMPLE_RATE);
        let bpm = 84 + rng.below(49);
        let beat = 60.0 / f64::from(bpm);
        let bar = beat * 4.0;
        let root = 48 + rng.below(8) as i32;
        let mode = MODES[rng.below(MODES.len() as u32) as usize];
        let progression = PROGRESSIONS[rng.below(PROGRESSIONS.len() as u32) as usize];
        let bass_pattern = BASS_PATTERNS[rng.below(BASS_PATTERNS.len() as u32) as usize];
        let hats_every_eighth = rng.chance(0.5);
        let lead_pan = rng.range(0.3, 0.7);

        let pitch = |degree: i32, base: i32| {
            base + 12 * degree.div_euclid(7) + mode[degree.rem_euclid(7) as usize]
        };
        let at = |secs: f64| (secs * sr) as usize;

        // The melody motif: (eighth index within four bars, length in eighths, degree).
        let mut motif = Vec::new();
        let mut degree = rng.below(5) as i32;
        for (bar_index, &chord) in progression.iter().enumerate() {
            let mut slot = 0;
            while slot < 8 {
                let mut length = 1;
                while slot + length < 8 && length < 4 && !rng.chance(0.55) {
                    length += 1;
                }
                if slot == 0 || rng.chance(0.8) {
                    degree = (degree + rng.below(5) as i32 - 2).clamp(0, 9);
                    if slot % 4 == 0 {
                        // Strong beats land on a chord tone so the melody fits the harmony.
                        degree = [chord, chord + 2, chord + 4, chord + 7]
                            .into_iter()
                            .min_by_key(|tone| (tone - degree).abs())
                            .unwrap_or(chord);
                    }
                    motif.push((bar_index * 8 + slot, length, degree));
                }
                slot += length;
            }
        }

        let mut notes = Vec::new();
        let bars = (total as f64 / sr / bar).ceil() as usize;
        for bar_index in 0..bars {
            let bar_start = bar_index as f64 * bar;
            let chord = progression[bar_index % 4];
            for (voice_index, step) in [0, 2, 4].into_iter().enumerate() {
                notes.push(Note {
                    start: at(bar_start),
                    length: at(bar),
                    hz: midi_to_hz(pitch(chord + step, root + 12)),
                    amp: 0.055,
                    pan: 0.3 + 0.2 * voice_index as f32,
                    voice: Voice::Pad,
                });
            }
            for (k, &onset) in bass_pattern.iter().enumerate() {
                let next = bass_pattern.get(k + 1).copied().unwrap_or(4.0);
                notes.push(Note {
                    start: at(bar_start + onset * beat),
                    length: at((next - onset) * beat * 0.9),
                    hz: midi_to_hz(pitch(chord, root - 12)),
                    amp: 0.3,
                    pan: 0.5,
                    voice: Voice::Bass,
                });
            }
            for eighth in 0..8 {
                if hats_every_eighth || eighth % 2 == 1 {
                    notes.push(Note {
                        start: at(bar_start + eighth as f64 * beat * 0.5),
                        length: at(0.05),
                        hz: 0.0,
                        amp: if eighth % 2 == 1 { 0.07 } else { 0.04 },
                        pan: 0.65,
                        voice: Voice::Hat,
                    });
                }
            }
        }

        // The motif repeats every four bars; every other pass alters a few notes.
        let cycles = bars.div_ceil(4);
        for cycle in 0..cycles {
            let cycle_start = cycle as f64 * 4.0 * bar;
            for &(slot, length, degree) in &motif {
                let mut degree = degree;
                if cycle % 2 == 1 && slot % 8 != 0 && rng.chance(0.3) {
                    degree = (degree + [-2, -1, 1, 2][rng.below(4) as usize]).clamp(0, 9);
                }
                notes.push(Note {
                    start: at(cycle_start + slot as f64 * beat * 0.5),
                    length: at(length as f64 * beat * 0.5),
                    hz: midi_to_hz(pitch(degree, root + 24)),
                    amp: 0.16,
                    pan: lead_pan,
                    voice: Voice::Lead,
                });
            }
        }

        notes.retain(|n| n.start < total && n.length > 0);
        notes.sort_by_key(|n| n.start);
        Self { notes }
    }

    /// Adds every note sounding in `[from, from + left.len())` into the buffers.
    fn mix(&self, from: usize, left: &mut [f32], right: &mut [f32]) {
        let to = from + left.len();
        // Notes are sorted by onset, so everything after `to` can be skipped.
        let upto = self.notes.partition_point(|n| n.start < to);
        for note in &self.notes[..upto] {
            if note.end() <= from {
                continue;
            }
            let (gain_l, gain_r) = (note.amp * (1.0 - note.pan), note.amp * note.pan);
            let (detune_l, detune_r) = if note.voice == Voice::Pad {
                (0.998, 1.002)
            } else {
                (1.0, 1.0)
            };
            let first = note.start.max(from);
            let last = note.end().min(to);
            for n in first..last {
                let i = n - note.start;
                let env = note.envelope(i);
                let out = n - from;
                if note.voice == Voice::Pad {
                    left[out] += gain_l * env * note.wave(i, detune_l, env);
                    right[out] += gain_r * env * note.wave(i, detune_r, env);
                } else {
                    let v = env * note.wave(i, 1.0, env);
                    left[out] += gain_l * v;
                    right[out] += gain_r * v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> (hound::WavSpec, u32, Vec<i16>) {
        let mut reader = hound::WavReader::new(Cursor::new(bytes)).expect("wav header");
        let spec = reader.spec();
        let duration = reader.duration();
        let samples = reader
            .samples::<i16>()
            .collect::<Result<Vec<_>, _>>()
            .expect("samples");
        (spec, duration, samples)
    }

    fn rms(samples: &[i16]) -> f64 {
        let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
        (sum / samples.len() as f64).sqrt()
    }

    #[test]
    fn music_is_stereo_pcm_of_the_requested_length() {
        let out = render_music("a calm morning", 5, 3).unwrap();
        assert_eq!(out.content_type, "audio/wav");
        assert_eq!(out.extension, "wav");
        let (spec, duration, samples) = read(&out.bytes);
        assert_eq!(spec.channels, 2);
        assert_eq!(spec.sample_rate, 44_100);
        assert_eq!(spec.bits_per_sample, 16);
        assert_eq!(spec.sample_format, hound::SampleFormat::Int);
        assert_eq!(duration, 3 * 44_100);
        assert_eq!(samples.len(), 3 * 44_100 * 2);
        assert_eq!(out.bytes.len(), 44 + samples.len() * 2);
    }

    #[test]
    fn music_is_audible_and_not_clipped() {
        let (_, _, samples) = read(&render_music("a calm morning", 5, 4).unwrap().bytes);
        let level = rms(&samples);
        assert!(level > 1500.0, "rms {level} is too quiet");
        let peak = samples.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!(peak < 32_000, "peak {peak} is at full scale");
        // Every half second of the middle section has sound in it.
        let second = &samples[44_100..44_100 * 3];
        for chunk in second.chunks(44_100) {
            assert!(rms(chunk) > 300.0);
        }
        // The fades start and end on silence.
        assert!(samples[0].unsigned_abs() < 200 && samples[samples.len() - 1].unsigned_abs() < 200);
    }

    #[test]
    fn music_left_and_right_differ() {
        let (_, _, samples) = read(&render_music("wide", 1, 2).unwrap().bytes);
        let differing = samples.chunks_exact(2).filter(|lr| lr[0] != lr[1]).count();
        assert!(differing > samples.len() / 4);
    }

    #[test]
    fn music_is_deterministic() {
        assert_eq!(
            render_music("a calm morning", 5, 2).unwrap().bytes,
            render_music("a calm morning", 5, 2).unwrap().bytes
        );
    }

    #[test]
    fn music_differs_by_seed_and_prompt() {
        let (_, _, base) = read(&render_music("a calm morning", 5, 2).unwrap().bytes);
        for other in [
            render_music("a calm morning", 6, 2),
            render_music("a stormy night", 5, 2),
        ] {
            let (_, _, samples) = read(&other.unwrap().bytes);
            let diff: Vec<i16> = base
                .iter()
                .zip(&samples)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect();
            assert!(
                rms(&diff) > rms(&base) * 0.5,
                "pieces should not be near-identical"
            );
        }
    }

    #[test]
    fn compositions_vary_in_tempo_and_key() {
        let plans: Vec<Vec<Note>> = (0..8)
            .map(|seed| {
                Song::compose(
                    &mut Fingerprint::new("theme", seed).rng(STREAM_MUSIC),
                    44_100 * 4,
                )
                .notes
            })
            .collect();
        let first_bass: std::collections::HashSet<u64> = plans
            .iter()
            .filter_map(|notes| {
                notes
                    .iter()
                    .find(|n| n.voice == Voice::Bass)
                    .map(|n| n.hz.to_bits())
            })
            .collect();
        assert!(first_bass.len() > 2, "bass roots should vary across seeds");
        let note_counts: std::collections::HashSet<usize> = plans.iter().map(Vec::len).collect();
        assert!(
            note_counts.len() > 2,
            "tempo and rhythm should vary across seeds"
        );
    }

    /// Power of one frequency in a signal (Goertzel), for checking pitch.
    fn power_at(signal: &[f32], hz: f64) -> f64 {
        let w = std::f64::consts::TAU * hz / f64::from(SAMPLE_RATE);
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        for &x in signal {
            let s0 = f64::from(x) + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        s1 * s1 + s2 * s2 - coeff * s1 * s2
    }

    #[test]
    fn voices_sound_at_their_pitch() {
        for voice in [Voice::Pad, Voice::Bass, Voice::Lead] {
            let note = Note {
                start: 0,
                length: SAMPLE_RATE as usize / 2,
                hz: midi_to_hz(57),
                amp: 0.5,
                pan: 0.5,
                voice,
            };
            let song = Song { notes: vec![note] };
            let mut left = vec![0.0; note.end()];
            let mut right = vec![0.0; note.end()];
            song.mix(0, &mut left, &mut right);
            let fundamental = power_at(&left, 220.0);
            let between = power_at(&left, 220.0 * 1.25);
            assert!(
                fundamental > between * 1000.0,
                "{voice:?}: {fundamental} vs {between}"
            );
        }
    }

    #[test]
    fn pitches_are_in_tune() {
        assert!((midi_to_hz(69) - 440.0).abs() < 1e-9);
        assert!((midi_to_hz(60) - 261.625_565_300_6).abs() < 1e-6);
        assert!((midi_to_hz(33) - 55.0).abs() < 1e-9);
    }

    #[test]
    fn music_rejects_bad_durations() {
        for secs in [0, 301, u32::MAX] {
            assert!(matches!(
                render_music("x", 0, secs),
                Err(RenderError::InvalidDuration { .. })
            ));
        }
    }
}
