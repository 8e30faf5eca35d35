//! The scene sampler: from (seed, index, split, size) to a [`SceneSpec`], deterministically.
//!
//! Randomness comes from zlayer's own SplitMix64 (`zlayer_scene::rng`), not a crate, so that
//! scene k of seed s stays byte-identical across dependency upgrades. Splits follow OverLayBench's easy/medium/hard:
//!
//! | split | instances | overlap probability | box side (fraction of canvas) |
//! |---|---|---|---|
//! | simple | 1–3 | 0.3 | 0.30–0.55 |
//! | regular | 3–5 | 0.6 | 0.25–0.50 |
//! | complex | 5–8 | 0.9 | 0.22–0.45 |
//!
//! "Overlap probability" is the chance that a new box is placed against an existing one
//! (its centre at 30–80% of the way from that box's centre to just touching), rather than
//! uniformly. Colours are distinct within a scene; the Z-order is a random permutation.
//! Glass (15% of instances) comes only in chromatic colours.

use crate::vocab::{Background, Colour, Look, Material, Pattern, Shape};

pub use zlayer_scene::rng::Rng;

/// Scene difficulty, as OverLayBench's simple/regular/complex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// 1–3 instances, little overlap.
    Simple,
    /// 3–5 instances, moderate overlap.
    Regular,
    /// 5–8 instances, heavy overlap.
    Complex,
}

impl Split {
    /// All splits.
    pub const ALL: [Split; 3] = [Split::Simple, Split::Regular, Split::Complex];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Split::Simple => "simple",
            Split::Regular => "regular",
            Split::Complex => "complex",
        }
    }

    /// Parses a name.
    pub fn from_name(s: &str) -> Option<Split> {
        Split::ALL.into_iter().find(|x| x.name() == s)
    }

    /// Inclusive instance-count range.
    pub fn instances(self) -> (usize, usize) {
        match self {
            Split::Simple => (1, 3),
            Split::Regular => (3, 5),
            Split::Complex => (5, 8),
        }
    }

    /// Default overlap probability.
    pub fn overlap(self) -> f32 {
        match self {
            Split::Simple => 0.3,
            Split::Regular => 0.6,
            Split::Complex => 0.9,
        }
    }

    fn side(self) -> (f32, f32) {
        match self {
            Split::Simple => (0.30, 0.55),
            Split::Regular => (0.25, 0.50),
            Split::Complex => (0.22, 0.45),
        }
    }
}

/// What to sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Difficulty split.
    pub split: Split,
    /// Canvas side in pixels.
    pub size: u32,
    /// Probability that a new box is placed against an existing one.
    pub overlap: f32,
}

impl Params {
    /// The split's defaults at a canvas size.
    pub fn new(split: Split, size: u32) -> Self {
        Self {
            split,
            size,
            overlap: split.overlap(),
        }
    }
}

/// One instance to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSpec {
    /// Colour, shape, pattern, material.
    pub look: Look,
    /// Placement box `[x, y, w, h]` in pixels; the shape is drawn inside it.
    pub rect: [f32; 4],
    /// Alpha of the material (1 for opaque).
    pub alpha: f32,
    /// Depth rank: 0 is front-most; ranks are a permutation of 0..n.
    pub rank: usize,
}

/// A sampled scene, before rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneSpec {
    /// The (seed, index) it came from.
    pub seed: u64,
    /// Index within the seed's sequence.
    pub index: u64,
    /// Sampling parameters.
    pub params: Params,
    /// Background kind.
    pub background: Background,
    /// A per-scene number driving the background's tones and texture.
    pub background_seed: u64,
    /// Instances, in sampling order (their ids are their positions).
    pub instances: Vec<InstanceSpec>,
}

/// Every word the prompt template uses besides captions and background names.
pub const PROMPT_WORDS: [&str; 9] = [
    "a",
    "an",
    "in",
    "front",
    "of",
    "on",
    "and",
    "background",
    ",",
];

/// Samples scene `index` of `seed`.
pub fn sample(seed: u64, index: u64, params: &Params) -> SceneSpec {
    let split_id = Split::ALL
        .iter()
        .position(|&s| s == params.split)
        .unwrap_or(0) as u64;
    let mut rng = Rng::new(
        seed.wrapping_mul(0xD6E8_FEB8_6659_FD93)
            ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (split_id << 56)
            ^ ((params.size as u64) << 40),
    );
    let (lo, hi) = params.split.instances();
    let n = lo + rng.below(hi - lo + 1);
    let mut colours = Colour::ALL.to_vec();
    rng.shuffle(&mut colours);
    let mut ranks: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut ranks);
    let s = params.size as f32;
    let (smin, smax) = params.split.side();
    let mut instances: Vec<InstanceSpec> = Vec::with_capacity(n);
    for (k, &colour) in colours.iter().take(n).enumerate() {
        let shape = Shape::ALL[rng.below(Shape::ALL.len())];
        let pattern = match rng.below(6) {
            0..=2 => Pattern::Solid,
            p => Pattern::ALL[p - 2],
        };
        // Glass only in chromatic colours: black or white glass reads as a darker or lighter
        // background, which no segmenter can tell apart.
        let chromatic = !matches!(colour, Colour::Black | Colour::White);
        let material = if rng.f32() < 0.15 && chromatic {
            Material::Glass
        } else {
            Material::Opaque
        };
        let alpha = if material == Material::Glass {
            rng.range(0.3, 0.7)
        } else {
            1.0
        };
        let side = rng.range(smin, smax) * s;
        let (w, h) = match shape {
            Shape::Stick if rng.f32() < 0.5 => (side * 1.4, side * 0.3),
            Shape::Stick => (side * 0.3, side * 1.4),
            Shape::Cylinder => (side * 0.8, side * 1.15),
            _ => {
                let aspect = rng.range(0.8, 1.25);
                (side * aspect.sqrt(), side / aspect.sqrt())
            }
        };
        let (w, h) = (w.clamp(3.0, s), h.clamp(3.0, s));
        let (cx, cy) = if k > 0 && rng.f32() < params.overlap {
            let other = &instances[rng.below(k)].rect;
            let (ox, oy) = (other[0] + other[2] / 2.0, other[1] + other[3] / 2.0);
            let angle = rng.range(0.0, std::f32::consts::TAU);
            let t = rng.range(0.3, 0.8);
            let (dx, dy) = (
                angle.cos() * (other[2] + w) / 2.0,
                angle.sin() * (other[3] + h) / 2.0,
            );
            (ox + dx * t, oy + dy * t)
        } else {
            (
                rng.range(w / 2.0, s - w / 2.0),
                rng.range(h / 2.0, s - h / 2.0),
            )
        };
        let x = (cx - w / 2.0).clamp(0.0, s - w);
        let y = (cy - h / 2.0).clamp(0.0, s - h);
        instances.push(InstanceSpec {
            look: Look {
                colour,
                shape,
                pattern,
                material,
            },
            rect: [x, y, w, h],
            alpha,
            rank: ranks[k],
        });
    }
    SceneSpec {
        seed,
        index,
        params: *params,
        background: Background::ALL[rng.below(Background::ALL.len())],
        background_seed: rng.next_u64(),
        instances,
    }
}

/// The global prompt, from a fixed template over the captions, front-most first.
///
/// Two instances whose pair is ordered read "a X in front of a Y"; otherwise the captions are
/// listed: "a X, a Y and a Z". The background closes it: "on a sky background".
pub fn prompt(
    captions_front_first: &[String],
    ordered_pair: bool,
    background: Background,
) -> String {
    let a = |c: &str| {
        let article = if c.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        format!("{article} {c}")
    };
    let items: Vec<String> = captions_front_first.iter().map(|c| a(c)).collect();
    let body = match items.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [x, y] if ordered_pair => format!("{x} in front of {y}"),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    };
    let bg = format!("{} background", a(background.name()));
    if body.is_empty() {
        bg
    } else {
        format!("{body} on {bg}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_template() {
        let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            prompt(
                &c(&["red striped sphere", "blue cube"]),
                true,
                Background::Sky
            ),
            "a red striped sphere in front of a blue cube on a sky background"
        );
        assert_eq!(
            prompt(
                &c(&["orange disk", "white star", "pink ring"]),
                false,
                Background::FloorWall
            ),
            "an orange disk, a white star and a pink ring on a floor and wall background"
        );
        assert_eq!(
            prompt(&c(&["red disk"]), false, Background::Plain),
            "a red disk on a plain background"
        );
    }

    #[test]
    fn sampling_is_deterministic_and_seed_sensitive() {
        let p = Params::new(Split::Complex, 64);
        assert_eq!(sample(7, 3, &p), sample(7, 3, &p));
        assert_ne!(sample(7, 3, &p), sample(7, 4, &p));
        assert_ne!(sample(7, 3, &p), sample(8, 3, &p));
    }

    #[test]
    fn splits_respect_their_instance_counts() {
        for split in Split::ALL {
            let (lo, hi) = split.instances();
            for i in 0..300 {
                let n = sample(1, i, &Params::new(split, 64)).instances.len();
                assert!((lo..=hi).contains(&n), "{split:?}: {n}");
            }
        }
    }
}
