//! An instance segmenter for images of the synthetic world (issue: metrics need to know, in
//! a generated image, which pixel belongs to which declared instance).
//!
//! Each instance has a known colour (its caption names it) and a box. A pixel inside some
//! boxes is explained by every model that could have produced it, and the best explanation
//! wins; a pixel no model explains well is rejected (background or garbage):
//!
//! - **opaque k**: `p ≈ s·c_k + t·(1, 1, 1)`, with shade `s ∈ [0.3, 1.6]` (patterns, shading)
//!   and white `t ∈ [0, 0.35]` (highlights, lit faces). Dark colours get no white term: black
//!   plus white would explain every grey background;
//! - **glass i over k**: `p ≈ a·c_i + b·c_k` with `a ≥ 0.09`, `b ≥ 0` and
//!   `a / (a + b) ∈ [0.2, 0.85]`, for every glass instance i and any other candidate or the
//!   background estimate k. A mix has two free weights, so it must fit better than a single
//!   colour by a margin to win;
//! - **background**: the colours of the nearest pixels outside every box, left and right on
//!   the same row and up and down the same column (backgrounds vary slowly, or repeat, as
//!   checks do). The background wins near-ties.
//!
//! Distances are Euclidean in sRGB scaled to [0, 1]. Shading changes brightness, not
//! chromaticity, which is why the models scale colours instead of comparing them directly.
//! Measured on clean synthetic images: see the `segmenter_accuracy` test and docs/metrics.md.

/// What the segmenter knows of one instance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// Box `[x1, y1, x2, y2]` in pixels.
    pub bbox: [f64; 4],
    /// The instance's named colour, sRGB 0–255.
    pub rgb: [u8; 3],
    /// Whether its caption says "glass".
    pub glass: bool,
}

/// Residual above which no model explains a pixel.
pub const REJECT: f32 = 0.2;

/// The least of its own colour a glass pixel shows: the faintest glass (α 0.3) at the darkest
/// shade the opaque model allows (0.3). Without this floor, a trace of glass colour over a
/// scaled-down black or background explains every near-black pixel better than black does.
pub const GLASS_MIN: f32 = 0.09;

/// How much better than a single colour a glass mix must fit to win: its two free weights fit
/// noise that one weight cannot. Chosen on softened renders (docs/metrics.md) as the margin
/// with the best share of visible colours found less the share of absent ones found.
pub const GLASS_MARGIN: f32 = 0.02;

type V3 = [f32; 3];

fn v(rgb: [u8; 3]) -> V3 {
    rgb.map(|c| c as f32 / 255.0)
}

fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn dot(a: V3, b: V3) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn norm(a: V3) -> f32 {
    dot(a, a).sqrt()
}

/// Least squares `p ≈ x·u + y·w` with x, y clamped to ranges; returns (x, y, residual).
fn fit2(p: V3, u: V3, w: V3, xr: (f32, f32), yr: (f32, f32)) -> (f32, f32, f32) {
    let (uu, uw, ww) = (dot(u, u), dot(u, w), dot(w, w));
    let (pu, pw) = (dot(p, u), dot(p, w));
    let det = uu * ww - uw * uw;
    let x0 = if det.abs() > 1e-9 {
        (pu * ww - pw * uw) / det
    } else {
        pu / uu.max(1e-9)
    };
    // Clamp, then refit each coefficient once against the other's clamped value.
    let x = x0.clamp(xr.0, xr.1);
    let y = ((pw - x * uw) / ww.max(1e-9)).clamp(yr.0, yr.1);
    let x = ((pu - y * uw) / uu.max(1e-9)).clamp(xr.0, xr.1);
    let r = sub(
        p,
        [
            x * u[0] + y * w[0],
            x * u[1] + y * w[1],
            x * u[2] + y * w[2],
        ],
    );
    (x, y, norm(r))
}

/// Labels every pixel of a `w × h` RGB image: `Some(k)` for instance k, `None` for
/// background or rejected.
pub fn segment(image: &[[u8; 3]], w: usize, h: usize, targets: &[Target]) -> Vec<Option<usize>> {
    let in_any: Vec<bool> = (0..w * h)
        .map(|p| (0..targets.len()).any(|k| inside(&targets[k], p % w, p / w)))
        .collect();
    label(image, w, h, targets, &in_any, |x, y| {
        let outside = |q: &usize| !in_any[*q];
        [
            (0..x).rev().map(|i| y * w + i).find(outside),
            (x + 1..w).map(|i| y * w + i).find(outside),
            (0..y).rev().map(|j| j * w + x).find(outside),
            (y + 1..h).map(|j| j * w + x).find(outside),
        ]
        .into_iter()
        .flatten()
        .map(|q| v(image[q]))
        .collect()
    })
}

fn inside(t: &Target, x: usize, y: usize) -> bool {
    let b = t.bbox;
    (x as f64 + 0.5) >= b[0]
        && (x as f64 + 0.5) < b[2]
        && (y as f64 + 0.5) >= b[1]
        && (y as f64 + 0.5) < b[3]
}

/// Labels the pixels inside some box, given each one's background references.
fn label(
    image: &[[u8; 3]],
    w: usize,
    h: usize,
    targets: &[Target],
    in_any: &[bool],
    backgrounds: impl Fn(usize, usize) -> Vec<V3>,
) -> Vec<Option<usize>> {
    let colours: Vec<V3> = targets.iter().map(|t| v(t.rgb)).collect();
    let mut labels = vec![None; w * h];
    let mut cands = Vec::with_capacity(targets.len());
    for y in 0..h {
        for x in 0..w {
            if !in_any[y * w + x] {
                continue;
            }
            cands.clear();
            cands.extend((0..targets.len()).filter(|&k| inside(&targets[k], x, y)));
            let p = v(image[y * w + x]);
            let bgs = backgrounds(x, y);
            let mut best = (REJECT, None);
            let mut consider = |r: f32, label: Option<usize>| {
                if r < best.0 {
                    best = (r, label);
                }
            };
            // The background is tried last and wins near-ties.
            let bg = bgs
                .iter()
                .map(|&b| norm(sub(p, b)))
                .fold(f32::INFINITY, f32::min);
            for &k in &cands {
                let white = if colours[k].iter().cloned().fold(0.0, f32::max) < 0.3 {
                    0.0
                } else {
                    0.35
                };
                let (_, _, r) = fit2(p, colours[k], [1.0; 3], (0.3, 1.6), (0.0, white));
                consider(r, Some(k));
            }
            for &i in cands.iter().filter(|&&i| targets[i].glass) {
                let behind = cands
                    .iter()
                    .filter(|&&k| k != i)
                    .map(|&k| colours[k])
                    .chain(bgs.iter().copied());
                for c in behind {
                    let (a, b, r) = fit2(p, colours[i], c, (GLASS_MIN, 2.0), (0.0, 2.0));
                    let share = a / (a + b).max(1e-6);
                    if (0.2..=0.85).contains(&share) {
                        consider(r + GLASS_MARGIN, Some(i));
                    }
                }
            }
            if bg <= best.0 + 0.02 {
                best = (bg, None);
            }
            labels[y * w + x] = best.1;
        }
    }
    labels
}

/// Interior pixels (all four neighbours agree) each colour `(rgb, glass)` wins when all of them may appear anywhere but the
/// outermost `inset` px. An image made from a prompt alone has no boxes, so the muted colours
/// seen on that border are the background references.
pub fn colour_pixels(
    image: &[[u8; 3]],
    w: usize,
    h: usize,
    colours: &[([u8; 3], bool)],
    inset: usize,
) -> Vec<usize> {
    let bbox = [
        inset as f64,
        inset as f64,
        w.saturating_sub(inset) as f64,
        h.saturating_sub(inset) as f64,
    ];
    let targets: Vec<Target> = colours
        .iter()
        .map(|&(rgb, glass)| Target { bbox, rgb, glass })
        .collect();
    let frame = Target {
        bbox,
        rgb: [0; 3],
        glass: false,
    };
    let in_any: Vec<bool> = (0..w * h).map(|p| inside(&frame, p % w, p / w)).collect();
    // Objects often reach the border, so only its muted colours count: the world's
    // backgrounds are greys and pale tints, its objects saturated, black or near white.
    let muted = |c: &[u8; 3]| {
        let (lo, hi) = (*c.iter().min().unwrap_or(&0), *c.iter().max().unwrap_or(&0));
        hi - lo <= 76 && lo >= 64 && hi <= 236
    };
    let mut border: Vec<[u8; 3]> = (0..w * h)
        .filter(|&p| !in_any[p])
        .map(|p| image[p])
        .filter(muted)
        .collect();
    border.sort_unstable();
    border.dedup();
    let border: Vec<V3> = border.into_iter().map(v).collect();
    let mut counts = vec![0; colours.len()];
    if targets.is_empty() {
        return counts;
    }
    let labels = label(image, w, h, &targets, &in_any, |_, _| border.clone());
    // Only pixels whose four neighbours agree count: anti-aliased edges, where an object's
    // colour mixes with its neighbour's, and stray highlights are thin.
    for y in 1..h.saturating_sub(1) {
        for x in 1..w.saturating_sub(1) {
            let p = y * w + x;
            if let Some(k) = labels[p]
                && [p - 1, p + 1, p - w, p + w]
                    .iter()
                    .all(|&q| labels[q] == Some(k))
            {
                counts[k] += 1;
            }
        }
    }
    counts
}

/// Every vocabulary colour as a [`colour_pixels`] candidate, glass where one of `looks`
/// (a scene's captions) is glass of that colour.
pub fn vocabulary_candidates(looks: &[zlayer_synth::vocab::Look]) -> Vec<([u8; 3], bool)> {
    use zlayer_synth::vocab::{Colour, Material};
    Colour::ALL
        .iter()
        .map(|c| {
            let glass = looks
                .iter()
                .any(|l| l.colour == *c && l.material == Material::Glass);
            (c.rgb(), glass)
        })
        .collect()
}

/// The border [`colour_present`] keeps as the background reference, in px.
pub const PRESENT_INSET: usize = 2;

/// Whether each colour covers at least 1/400 of the image (10 px at 64², but at least 8) by
/// [`colour_pixels`]: enough to be an object, not a stray edge.
pub fn colour_present(
    image: &[[u8; 3]],
    w: usize,
    h: usize,
    colours: &[([u8; 3], bool)],
    inset: usize,
) -> Vec<bool> {
    let min = (w * h / 400).max(8);
    colour_pixels(image, w, h, colours, inset)
        .into_iter()
        .map(|n| n >= min)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shaded_colours_keep_their_identity() {
        let red = Target {
            bbox: [0.0, 0.0, 4.0, 1.0],
            rgb: [200, 25, 35],
            glass: false,
        };
        let blue = Target {
            bbox: [0.0, 0.0, 4.0, 1.0],
            rgb: [35, 65, 215],
            glass: false,
        };
        // Dark red (shade 0.6), lit red (with white), dark blue, and grey like the background
        // seen outside the boxes (the fifth pixel).
        let img = [
            [120, 15, 21],
            [225, 94, 100],
            [21, 39, 129],
            [128, 128, 128],
            [128, 128, 128],
        ];
        assert_eq!(
            segment(&img, 5, 1, &[red, blue]),
            vec![Some(0), Some(0), Some(1), None, None]
        );
    }

    #[test]
    fn glass_over_a_colour_belongs_to_the_glass() {
        let glass = Target {
            bbox: [0.0, 0.0, 2.0, 1.0],
            rgb: [35, 65, 215],
            glass: true,
        };
        let red = Target {
            bbox: [0.0, 0.0, 2.0, 1.0],
            rgb: [200, 25, 35],
            glass: false,
        };
        // 0.5 blue over red, then plain red.
        let img = [[118, 45, 125], [200, 25, 35]];
        assert_eq!(segment(&img, 2, 1, &[glass, red]), vec![Some(0), Some(1)]);
    }

    #[test]
    fn background_seen_beside_the_box_is_rejected() {
        let white = Target {
            bbox: [1.0, 0.0, 3.0, 1.0],
            rgb: [245, 245, 245],
            glass: false,
        };
        // A grey background that a shaded white would also explain.
        let img = [
            [136, 136, 136],
            [136, 136, 136],
            [230, 230, 230],
            [136, 136, 136],
        ];
        assert_eq!(
            segment(&img, 4, 1, &[white]),
            vec![None, None, Some(0), None]
        );
    }
}
