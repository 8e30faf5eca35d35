//! Rendering a [`SceneSpec`] into images and exact ground truth.
//!
//! Each instance's shape is rasterised anti-aliased by tiny-skia into a coverage mask: that
//! mask *is* the amodal mask. Its colour comes from a per-pixel function of the look (base
//! colour, pattern tone, shape shading), and its RGBA layer is that colour with alpha =
//! coverage × material alpha, stored as straight 8-bit. The image is those layers composed
//! over the background, back to front, by `zlayer-composite`'s exact 8-bit Porter-Duff, so
//! recomposing the stored layers reproduces the stored image bit for bit.
//!
//! The visible mask of j is `amodal_j · Π_{i in front of j} (1 − amodal_i)`: occlusion in the
//! amodal/modal sense. A glass object in front still hides what is behind it there, even
//! though the image shows it through the glass.

use crate::sample::{InstanceSpec, SceneSpec, prompt};
use crate::vocab::{Background, Pattern, Shape};
use tiny_skia::{FillRule, Mask, PathBuilder, Rect, Transform};
use zlayer_composite::rgba::{Premul8, Straight8, over_stack8};
use zlayer_scene::raster::tight_box;
use zlayer_scene::{BBox, Instance, Scene};

/// A rendered scene with its ground truth. All rasters are `size × size`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthScene {
    /// What was sampled.
    pub spec: SceneSpec,
    /// The composed RGB image.
    pub image: Vec<[u8; 3]>,
    /// The background alone (opaque RGB).
    pub background: Vec<[u8; 3]>,
    /// Per instance: its full, unoccluded appearance, straight alpha.
    pub layers: Vec<Vec<Straight8>>,
    /// Per instance: the amodal mask (shape coverage, 0–255).
    pub amodal: Vec<Vec<u8>>,
    /// Per instance: the visible part of the amodal mask (0–255).
    pub visible: Vec<Vec<u8>>,
    /// The scene in zlayer's native form: tight amodal boxes, captions, `occludes`.
    pub scene: Scene,
}

impl SynthScene {
    /// The smallest visible area among its instances, in pixels (coverage-weighted; the
    /// image's area when it has none): how much of the least visible object a caption that
    /// names every object can count on.
    pub fn min_visible_px(&self) -> f32 {
        self.visible
            .iter()
            .map(|m| m.iter().map(|&a| a as f32).sum::<f32>() / 255.0)
            .fold(self.image.len() as f32, f32::min)
    }
}

impl SynthScene {
    /// Instance indices in the order they were rendered, back-most first.
    pub fn back_to_front(&self) -> Vec<usize> {
        back_to_front(&self.spec)
    }

    /// The background with the instances `keep` over it, back to front, by the renderer's
    /// own 8-bit source-over: all of them give [`Self::image`] exactly.
    pub fn composite(&self, keep: &[usize]) -> Vec<[u8; 3]> {
        let order: Vec<usize> = self
            .back_to_front()
            .into_iter()
            .filter(|i| keep.contains(i))
            .collect();
        compose(&self.background, &self.layers, &order)
    }
}

fn back_to_front(spec: &SceneSpec) -> Vec<usize> {
    let mut order: Vec<usize> = (0..spec.instances.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(spec.instances[i].rank));
    order
}

/// `layers[order[0]]`, `layers[order[1]]`, … over the opaque `background`, premultiplied with
/// exact 8-bit rounding.
fn compose(background: &[[u8; 3]], layers: &[Vec<Straight8>], order: &[usize]) -> Vec<[u8; 3]> {
    let bg: Vec<Premul8> = background
        .iter()
        .map(|&[r, g, b]| Premul8([r, g, b, 255]))
        .collect();
    let premul: Vec<Vec<Premul8>> = order
        .iter()
        .map(|&i| layers[i].iter().map(|p| p.premultiply()).collect())
        .collect();
    let mut stack: Vec<&[Premul8]> = vec![&bg];
    stack.extend(premul.iter().map(Vec::as_slice));
    let mut composed = vec![Premul8::default(); background.len()];
    over_stack8(&stack, &mut composed);
    composed.iter().map(|p| [p.0[0], p.0[1], p.0[2]]).collect()
}

/// Pixels both amodal masks cover by at least half, needed before an order is declared.
pub fn min_overlap_px(size: u32) -> usize {
    ((size * size) as usize / 400).max(4)
}

/// Renders a sampled scene.
pub fn render(spec: &SceneSpec) -> SynthScene {
    let size = spec.params.size as usize;
    let background = render_background(spec.background, spec.background_seed, size);
    let mut layers = Vec::with_capacity(spec.instances.len());
    let mut amodal = Vec::with_capacity(spec.instances.len());
    for inst in &spec.instances {
        let cov = coverage(inst, size);
        layers.push(paint(inst, &cov, size));
        amodal.push(cov);
    }
    let n = spec.instances.len();
    let image = compose(&background, &layers, &back_to_front(spec));

    let visible = (0..n)
        .map(|j| {
            let front: Vec<&[u8]> = (0..n)
                .filter(|&i| spec.instances[i].rank < spec.instances[j].rank)
                .map(|i| amodal[i].as_slice())
                .collect();
            let mut vis = amodal[j].clone();
            for (p, v) in vis.iter_mut().enumerate() {
                if *v > 0 {
                    let keep = front
                        .iter()
                        .fold(*v as f32 / 255.0, |k, m| k * (1.0 - m[p] as f32 / 255.0));
                    *v = (keep * 255.0 + 0.5) as u8;
                }
            }
            vis
        })
        .collect();
    let scene = to_scene(spec, &amodal);
    SynthScene {
        spec: spec.clone(),
        image,
        background,
        layers,
        amodal,
        visible,
        scene,
    }
}

/// The native scene: tight boxes from the masks, `occludes` for real overlaps only.
fn to_scene(spec: &SceneSpec, amodal: &[Vec<u8>]) -> Scene {
    let size = spec.params.size;
    let n = spec.instances.len();
    let min = min_overlap_px(size);
    let boxes: Vec<Option<BBox>> = amodal
        .iter()
        .map(|m| tight_box(m, size as usize, |v| v > 0))
        .collect();
    let overlap = |i: usize, j: usize| match (boxes[i], boxes[j]) {
        (Some(a), Some(b)) if a.overlaps(b) => {
            amodal[i]
                .iter()
                .zip(&amodal[j])
                .filter(|&(&a, &b)| a >= 128 && b >= 128)
                .count()
                >= min
        }
        _ => false,
    };
    let mut instances: Vec<Instance> = spec
        .instances
        .iter()
        .enumerate()
        .map(|(i, s)| Instance {
            id: i.to_string(),
            caption: s.look.caption(),
            category: Some(s.look.shape.name().to_string()),
            bbox: boxes[i].unwrap_or(BBox::new(0.0, 0.0, 1.0, 1.0)),
            mask: None,
            occludes: (0..n)
                .filter(|&j| j != i && s.rank < spec.instances[j].rank && overlap(i, j))
                .map(|j| j.to_string())
                .collect(),
            opacity: (s.alpha < 1.0).then_some(((s.alpha * 1000.0).round() / 1000.0) as f64),
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| spec.instances[i].rank);
    let captions: Vec<String> = order
        .iter()
        .map(|&i| instances[i].caption.clone())
        .collect();
    let ordered_pair =
        n == 2 && !(instances[0].occludes.is_empty() && instances[1].occludes.is_empty());
    let prompt = prompt(&captions, ordered_pair, spec.background);
    instances.iter_mut().for_each(|i| i.occludes.sort());
    Scene {
        width: size,
        height: size,
        seed: Some(spec.seed.wrapping_add(spec.index)),
        prompt,
        caption: None,
        instances,
    }
}

/// The shape's silhouette inside its box.
fn silhouette(shape: Shape, [x, y, w, h]: [f32; 4]) -> Option<(tiny_skia::Path, FillRule)> {
    let mut pb = PathBuilder::new();
    let poly = |pb: &mut PathBuilder, pts: &[(f32, f32)]| {
        pb.move_to(x + pts[0].0 * w, y + pts[0].1 * h);
        for &(u, v) in &pts[1..] {
            pb.line_to(x + u * w, y + v * h);
        }
        pb.close();
    };
    let mut rule = FillRule::Winding;
    match shape {
        Shape::Disk | Shape::Sphere => pb.push_oval(Rect::from_xywh(x, y, w, h)?),
        Shape::Square => pb.push_rect(Rect::from_xywh(x, y, w, h)?),
        Shape::Stick => pb.push_rect(Rect::from_xywh(x, y, w, h)?),
        Shape::Triangle => poly(&mut pb, &[(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]),
        Shape::Star => {
            let pts: Vec<(f32, f32)> = (0..10)
                .map(|k| {
                    let r = if k % 2 == 0 { 0.5 } else { 0.2 };
                    let a = -std::f32::consts::FRAC_PI_2 + k as f32 * std::f32::consts::PI / 5.0;
                    (0.5 + r * a.cos(), 0.55 + r * a.sin())
                })
                .collect();
            poly(&mut pb, &pts)
        }
        Shape::Ring => {
            pb.push_oval(Rect::from_xywh(x, y, w, h)?);
            pb.push_oval(Rect::from_xywh(
                x + w * 0.25,
                y + h * 0.25,
                w * 0.5,
                h * 0.5,
            )?);
            rule = FillRule::EvenOdd;
        }
        Shape::Cube => poly(
            &mut pb,
            &[
                (0.5, 0.0),
                (1.0, 0.25),
                (1.0, 0.75),
                (0.5, 1.0),
                (0.0, 0.75),
                (0.0, 0.25),
            ],
        ),
        Shape::Cylinder => {
            let e = (w * 0.35).min(h * 0.5);
            pb.push_rect(Rect::from_xywh(x, y + e / 2.0, w, (h - e).max(0.5))?);
            pb.push_oval(Rect::from_xywh(x, y, w, e)?);
            pb.push_oval(Rect::from_xywh(x, y + h - e, w, e)?);
        }
        Shape::Cross => {
            let t = 0.32;
            let (a, b) = ((1.0 - t) / 2.0, (1.0 + t) / 2.0);
            poly(
                &mut pb,
                &[
                    (a, 0.0),
                    (b, 0.0),
                    (b, a),
                    (1.0, a),
                    (1.0, b),
                    (b, b),
                    (b, 1.0),
                    (a, 1.0),
                    (a, b),
                    (0.0, b),
                    (0.0, a),
                    (a, a),
                ],
            )
        }
    }
    Some((pb.finish()?, rule))
}

/// Anti-aliased coverage of the instance's shape on the canvas.
fn coverage(inst: &InstanceSpec, size: usize) -> Vec<u8> {
    let Some(mut mask) = Mask::new(size as u32, size as u32) else {
        return vec![0; size * size];
    };
    if let Some((path, rule)) = silhouette(inst.look.shape, inst.rect) {
        mask.fill_path(&path, rule, true, Transform::identity());
    }
    mask.data().to_vec()
}

/// The instance's straight-alpha layer: colour everywhere it covers, zero elsewhere.
fn paint(inst: &InstanceSpec, cov: &[u8], size: usize) -> Vec<Straight8> {
    let base = inst.look.colour.rgb().map(|v| v as f32 / 255.0);
    let [x, y, w, h] = inst.rect;
    let period = (size as f32 / 12.0).max(3.0);
    let light = base.iter().sum::<f32>() > 2.2;
    let mut out = vec![Straight8::default(); size * size];
    for (p, (o, &c)) in out.iter_mut().zip(cov).enumerate() {
        if c == 0 {
            continue;
        }
        let (px, py) = ((p % size) as f32 + 0.5, (p / size) as f32 + 0.5);
        let (u, v) = ((px - x) / w, (py - y) / h);
        let (lx, ly) = (px - x, py - y);
        let tone = match inst.look.pattern {
            Pattern::Solid => 1.0,
            Pattern::Striped => {
                if ((lx + ly) / period).floor() as i64 % 2 == 0 {
                    1.0
                } else {
                    0.6
                }
            }
            Pattern::Checkered => {
                if ((lx / period).floor() + (ly / period).floor()) as i64 % 2 == 0 {
                    1.0
                } else {
                    0.62
                }
            }
            Pattern::Dotted => {
                let (fx, fy) = ((lx / period).fract() - 0.5, (ly / period).fract() - 0.5);
                if fx * fx + fy * fy < 0.09 {
                    if light { 0.6 } else { 1.45 }
                } else {
                    1.0
                }
            }
        };
        let (shade, highlight) = shading(inst.look.shape, u, v);
        let rgb = base
            .map(|b| ((b * tone * shade).min(1.0) * (1.0 - highlight) + highlight).clamp(0.0, 1.0));
        let a = c as f32 / 255.0 * inst.alpha;
        *o = zlayer_composite::Straight([rgb[0], rgb[1], rgb[2], a]).to_u8();
    }
    out
}

/// Brightness factor and white highlight weight at box coordinates (u, v) in [0, 1]².
fn shading(shape: Shape, u: f32, v: f32) -> (f32, f32) {
    match shape {
        Shape::Sphere => {
            let (dx, dy) = (u * 2.0 - 1.0, v * 2.0 - 1.0);
            let dz = (1.0 - dx * dx - dy * dy).max(0.0).sqrt();
            // Light from the upper left, towards the viewer.
            let lambert = (-0.45 * dx - 0.55 * dy + 0.70 * dz).max(0.0);
            let spec = (-0.3 * dx - 0.4 * dy + 0.87 * dz).max(0.0).powi(24);
            (0.55 + 0.55 * lambert, 0.35 * spec)
        }
        Shape::Cube => {
            let top_edge = if u < 0.5 {
                0.25 + 0.5 * u
            } else {
                0.25 + 0.5 * (1.0 - u)
            };
            if v < top_edge {
                // Lit by brightening, not by mixing in white, so the colour stays recognisable.
                (1.25, 0.0)
            } else if u < 0.5 {
                (0.85, 0.0)
            } else {
                (0.62, 0.0)
            }
        }
        Shape::Cylinder => {
            let across = (u * 2.0 - 1.0).abs();
            (1.0 - 0.38 * across * across, 0.0)
        }
        _ => (1.0, 0.0),
    }
}

/// The opaque background raster.
fn render_background(kind: Background, seed: u64, size: usize) -> Vec<[u8; 3]> {
    let mut rng = crate::sample::Rng::new(seed);
    let mix = |a: [f32; 3], b: [f32; 3], t: f32| {
        [0, 1, 2].map(|k| (a[k] + (b[k] - a[k]) * t).round() as u8)
    };
    let s = size as f32;
    match kind {
        Background::Plain => {
            const TONES: [[u8; 3]; 4] = [
                [196, 186, 166],
                [150, 160, 172],
                [168, 180, 160],
                [180, 168, 176],
            ];
            vec![TONES[rng.below(TONES.len())]; size * size]
        }
        Background::Sky => (0..size * size)
            .map(|p| {
                mix(
                    [150.0, 180.0, 215.0],
                    [198.0, 212.0, 226.0],
                    (p / size) as f32 / s,
                )
            })
            .collect(),
        Background::FloorWall => {
            let horizon = rng.range(0.45, 0.7) * s;
            (0..size * size)
                .map(|p| {
                    let y = (p / size) as f32;
                    if y < horizon {
                        mix([205.0, 195.0, 178.0], [190.0, 180.0, 163.0], y / horizon)
                    } else {
                        mix(
                            [150.0, 128.0, 106.0],
                            [128.0, 108.0, 90.0],
                            (y - horizon) / (s - horizon),
                        )
                    }
                })
                .collect()
        }
        Background::Checker => {
            let cell = (s / rng.range(5.0, 9.0)).max(2.0);
            (0..size * size)
                .map(|p| {
                    let (x, y) = ((p % size) as f32, (p / size) as f32);
                    if ((x / cell).floor() + (y / cell).floor()) as i64 % 2 == 0 {
                        [172; 3]
                    } else {
                        [136; 3]
                    }
                })
                .collect()
        }
        Background::Noise => {
            // Value noise: a coarse random grid, bilinearly interpolated.
            const G: usize = 6;
            let grid: Vec<f32> = (0..(G + 1) * (G + 1))
                .map(|_| rng.range(115.0, 185.0))
                .collect();
            (0..size * size)
                .map(|p| {
                    let (x, y) = (
                        (p % size) as f32 / s * G as f32,
                        (p / size) as f32 / s * G as f32,
                    );
                    let (gx, gy) = ((x as usize).min(G - 1), (y as usize).min(G - 1));
                    let (fx, fy) = (x - gx as f32, y - gy as f32);
                    let at = |i: usize, j: usize| grid[j * (G + 1) + i];
                    let top = at(gx, gy) * (1.0 - fx) + at(gx + 1, gy) * fx;
                    let bot = at(gx, gy + 1) * (1.0 - fx) + at(gx + 1, gy + 1) * fx;
                    [(top * (1.0 - fy) + bot * fy).round() as u8; 3]
                })
                .collect()
        }
    }
}
