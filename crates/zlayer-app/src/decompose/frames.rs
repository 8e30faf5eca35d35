//! Frames of the layer model's sequences: SA-Z-synth scenes as training sequences of each
//! task, an image and its scene as a decomposition to sample, and RGBA images to and from the
//! alpha-aware VAE's latent tokens.

use candle_core::{Device, Result, Tensor};
use zlayer_composite::rgba::{Premul8, Straight8, over_stack8};
use zlayer_model::bundle::VaeBundle;
use zlayer_model::omni::{Frame, Role, Sequence, Task};
use zlayer_model::sampling::Rng;
use zlayer_model::text::Tokenizer;
use zlayer_scene::{BBox, OcclusionGraph, Scene};
use zlayer_synth::SynthScene;

/// Straight RGBA pixels in [0, 1], row-major.
pub type Rgba = Vec<[f32; 4]>;

/// Depth level per instance (0: nothing in front), from the scene's `occludes`.
pub fn depth_levels(scene: &Scene) -> std::result::Result<Vec<usize>, String> {
    let index = |id: &str| scene.instances.iter().position(|i| i.id == id);
    let mut edges = Vec::new();
    for (i, inst) in scene.instances.iter().enumerate() {
        for o in &inst.occludes {
            let j = index(o)
                .ok_or_else(|| format!("instance {:?} occludes unknown id {o:?}", inst.id))?;
            edges.push((i, j));
        }
    }
    OcclusionGraph::from_edges(scene.instances.len(), &edges)
        .map(|g| g.depth_levels().to_vec())
        .map_err(|c| format!("the scene's order has a cycle through instances {:?}", c.0))
}

/// The latent cells (row, column) an amodal box touches on a `grid`² latent of a `size`²
/// canvas; at least one.
pub fn box_cells(b: BBox, size: u32, grid: usize) -> Vec<(usize, usize)> {
    let f = size as f64 / grid as f64;
    let span = |lo: f64, hi: f64| {
        let a = ((lo / f).floor().max(0.0) as usize).min(grid - 1);
        let b = ((hi / f).ceil() as usize).clamp(a + 1, grid);
        a..b
    };
    let (rows, cols) = (span(b.y1, b.y2), span(b.x1, b.x2));
    rows.flat_map(|r| cols.clone().map(move |c| (r, c)))
        .collect()
}

/// Encodes RGBA images (each `size²`) to normalised latent tokens, token-major (h·w·C each).
pub fn encode(vae: &VaeBundle, images: &[Rgba], size: u32, dev: &Device) -> Result<Vec<Vec<f32>>> {
    if images.is_empty() {
        return Ok(Vec::new());
    }
    let n = (size * size) as usize;
    let mut planar = vec![0f32; images.len() * 4 * n];
    for (i, img) in images.iter().enumerate() {
        for (p, px) in img.iter().enumerate() {
            for c in 0..4 {
                planar[(i * 4 + c) * n + p] = px[c] * 2.0 - 1.0;
            }
        }
    }
    let x = Tensor::from_vec(planar, (images.len(), 4, size as usize, size as usize), dev)?;
    let z = vae.encode_tokens(&x)?;
    (0..images.len())
        .map(|i| z.get(i)?.flatten_all()?.to_vec1::<f32>())
        .collect()
}

/// Decodes token-major latents on a `grid²` to RGBA images in [0, 1].
pub fn decode(
    vae: &VaeBundle,
    latents: &[Vec<f32>],
    grid: usize,
    dev: &Device,
) -> Result<Vec<Rgba>> {
    let c = vae.cfg.latent;
    let flat: Vec<f32> = latents.concat();
    let z = Tensor::from_vec(flat, (latents.len(), grid * grid, c), dev)?;
    let x = vae.decode_tokens(&z, grid, grid)?; // (N, 4, H, W)
    let (_, _, h, w) = x.dims4()?;
    (0..latents.len())
        .map(|i| {
            let v = x.get(i)?.flatten_all()?.to_vec1::<f32>()?;
            Ok((0..h * w)
                .map(|p| [0, 1, 2, 3].map(|ch| (v[ch * h * w + p] + 1.0) / 2.0))
                .collect())
        })
        .collect()
}

fn crop(full: &[f32], cells: &[(usize, usize)], grid: usize, c: usize) -> Vec<f32> {
    cells
        .iter()
        .flat_map(|&(r, col)| {
            full[(r * grid + col) * c..(r * grid + col + 1) * c]
                .iter()
                .copied()
        })
        .collect()
}

pub(super) fn straight(l: &[Straight8]) -> Rgba {
    l.iter().map(|p| p.0.map(|v| v as f32 / 255.0)).collect()
}

pub(super) fn opaque(rgb: &[[u8; 3]]) -> Rgba {
    rgb.iter()
        .map(|p| {
            [
                p[0] as f32 / 255.0,
                p[1] as f32 / 255.0,
                p[2] as f32 / 255.0,
                1.0,
            ]
        })
        .collect()
}

/// The plate with the instances `keep` over it, by the renderer's exact 8-bit source-over,
/// back to front by the scene's ranks.
pub fn composite(s: &SynthScene, keep: &[usize]) -> Rgba {
    let mut order: Vec<usize> = keep.to_vec();
    order.sort_by_key(|&i| std::cmp::Reverse(s.spec.instances[i].rank));
    let bg: Vec<Premul8> = s
        .background
        .iter()
        .map(|&[r, g, b]| Premul8([r, g, b, 255]))
        .collect();
    let layers: Vec<Vec<Premul8>> = order
        .iter()
        .map(|&i| s.layers[i].iter().map(|p| p.premultiply()).collect())
        .collect();
    let mut stack: Vec<&[Premul8]> = vec![&bg];
    stack.extend(layers.iter().map(Vec::as_slice));
    let mut out = vec![Premul8::default(); s.image.len()];
    over_stack8(&stack, &mut out);
    out.iter()
        .map(|p| {
            [
                p.0[0] as f32 / 255.0,
                p.0[1] as f32 / 255.0,
                p.0[2] as f32 / 255.0,
                1.0,
            ]
        })
        .collect()
}

/// A frame before encoding: which image it shows (none for a target at inference).
struct Planned {
    frame: Frame,
    image: Option<usize>,
}

/// Frames of a sequence and the images they need encoded.
pub struct Plan {
    task: Task,
    frames: Vec<Planned>,
    images: Vec<Rgba>,
}

/// What the model knows of an instance: its words, level and box.
fn instance_frame(
    role: Role,
    target: bool,
    scene: &Scene,
    levels: &[usize],
    k: usize,
    words: &Tokenizer,
    grid: usize,
) -> Frame {
    let inst = &scene.instances[k];
    let ids = inst
        .caption
        .split_whitespace()
        .filter_map(|w| words.encode(w).ok())
        .flatten()
        .collect();
    let side = scene.width.max(1) as f32;
    let b = inst.bbox;
    Frame {
        role,
        target,
        cells: box_cells(b, scene.width, grid),
        latent: Vec::new(),
        words: ids,
        level: levels[k],
        bbox: [
            b.x1 as f32 / side,
            b.y1 as f32 / side,
            b.x2 as f32 / side,
            b.y2 as f32 / side,
        ],
    }
}

impl Plan {
    fn push(&mut self, mut frame: Frame, image: Option<Rgba>, grid: usize) {
        if frame.role == Role::Image || frame.role == Role::Plate || frame.role == Role::Removed {
            frame.cells = Frame::full(frame.role, frame.target, Vec::new(), (grid, grid)).cells;
        }
        let image = image.map(|im| {
            self.images.push(im);
            self.images.len() - 1
        });
        self.frames.push(Planned { frame, image });
    }

    /// A training sequence of `task` from scene `s`; `pick` chooses the instance or subset.
    pub fn training(
        s: &SynthScene,
        task: Task,
        pick: u64,
        words: &Tokenizer,
        grid: usize,
    ) -> std::result::Result<Self, String> {
        let scene = &s.scene;
        let levels = depth_levels(scene)?;
        let n = scene.instances.len();
        let mut plan = Plan {
            task,
            frames: Vec::new(),
            images: Vec::new(),
        };
        let full = |role, target| Frame::full(role, target, Vec::new(), (0, 0));
        let inst = |role, target, k| instance_frame(role, target, scene, &levels, k, words, grid);
        let mut rng = Rng::new(pick);
        let k = if n == 0 {
            0
        } else {
            (rng.next_u64() % n as u64) as usize
        };
        match (task, n) {
            (Task::Decompose, _) | (_, 0) => {
                plan.task = Task::Decompose;
                plan.push(full(Role::Image, false), Some(opaque(&s.image)), grid);
                plan.push(full(Role::Plate, true), Some(opaque(&s.background)), grid);
                for k in 0..n {
                    plan.push(
                        inst(Role::Layer, true, k),
                        Some(straight(&s.layers[k])),
                        grid,
                    );
                }
            }
            (Task::Matte, _) => {
                plan.push(full(Role::Image, false), Some(opaque(&s.image)), grid);
                let matte = s.image.iter().zip(&s.visible[k]).map(|(p, &a)| {
                    [
                        p[0] as f32 / 255.0,
                        p[1] as f32 / 255.0,
                        p[2] as f32 / 255.0,
                        a as f32 / 255.0,
                    ]
                });
                plan.push(inst(Role::Matte, true, k), Some(matte.collect()), grid);
            }
            (Task::Remove, _) => {
                let image = opaque(&s.image);
                plan.push(full(Role::Image, false), Some(image.clone()), grid);
                plan.push(inst(Role::Marker, false, k), Some(image), grid);
                let rest: Vec<usize> = (0..n).filter(|&i| i != k).collect();
                plan.push(full(Role::Removed, true), Some(composite(s, &rest)), grid);
            }
            (Task::Complete, _) => {
                let keep: Vec<usize> = (0..n)
                    .filter(|_| !rng.next_u64().is_multiple_of(4))
                    .collect();
                plan.push(full(Role::Plate, false), Some(opaque(&s.background)), grid);
                for &k in &keep {
                    plan.push(
                        inst(Role::Layer, false, k),
                        Some(straight(&s.layers[k])),
                        grid,
                    );
                }
                plan.push(full(Role::Image, true), Some(composite(s, &keep)), grid);
            }
        }
        Ok(plan)
    }

    /// Decomposition of `image` (opaque, the scene's size) into the plate and one layer per
    /// instance of `scene`.
    pub fn decomposition(
        image: Rgba,
        scene: &Scene,
        words: &Tokenizer,
        grid: usize,
    ) -> std::result::Result<Self, String> {
        let levels = depth_levels(scene)?;
        let mut plan = Plan {
            task: Task::Decompose,
            frames: Vec::new(),
            images: Vec::new(),
        };
        plan.push(
            Frame::full(Role::Image, false, Vec::new(), (0, 0)),
            Some(image),
            grid,
        );
        plan.push(
            Frame::full(Role::Plate, true, Vec::new(), (0, 0)),
            None,
            grid,
        );
        for k in 0..scene.instances.len() {
            plan.push(
                instance_frame(Role::Layer, true, scene, &levels, k, words, grid),
                None,
                grid,
            );
        }
        Ok(plan)
    }
}

/// Encodes every plan's images in one VAE batch and gives the sequences.
pub fn sequences(
    plans: Vec<Plan>,
    vae: &VaeBundle,
    size: u32,
    dev: &Device,
) -> Result<Vec<Sequence>> {
    let grid = size as usize / vae.cfg.factor();
    let c = vae.cfg.latent;
    let images: Vec<Rgba> = plans
        .iter()
        .flat_map(|p| p.images.iter().cloned())
        .collect();
    let latents = encode(vae, &images, size, dev)?;
    let mut first = 0;
    Ok(plans
        .into_iter()
        .map(|p| {
            let frames = p
                .frames
                .into_iter()
                .map(|pl| {
                    let mut f = pl.frame;
                    f.latent = match pl.image {
                        Some(i) => crop(&latents[first + i], &f.cells, grid, c),
                        None => vec![0.0; f.cells.len() * c],
                    };
                    f
                })
                .collect();
            first += p.images.len();
            Sequence {
                task: p.task,
                frames,
            }
        })
        .collect())
}
