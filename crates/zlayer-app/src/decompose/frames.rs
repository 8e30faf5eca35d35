//! Frames of the layer model's sequences: SA-Z-synth scenes as training sequences of each
//! task, an image and its scene as a decomposition to sample, and RGBA images to and from the
//! alpha-aware VAE's latent tokens.

use candle_core::{Device, Result, Tensor};
use zlayer_composite::rgba::Straight8;
use zlayer_model::bundle::VaeBundle;
use zlayer_model::omni::{Frame, Role, Sequence, Task};
use zlayer_model::sampling::Rng;
use zlayer_model::text::Tokenizer;
use zlayer_scene::{BBox, Scene, validate_native};
use zlayer_synth::SynthScene;

/// Straight RGBA pixels in [0, 1], row-major.
pub type Rgba = Vec<[f32; 4]>;

/// Depth level per instance (0: nothing in front), from the scene's `occludes`.
pub fn depth_levels(scene: &Scene) -> std::result::Result<Vec<usize>, String> {
    graph_of(scene, |g| g.depth_levels().to_vec())
}

/// The scene's instances back to front, from its `occludes`.
pub fn draw_order(scene: &Scene) -> std::result::Result<Vec<usize>, String> {
    graph_of(scene, |g| g.draw_order())
}

fn graph_of<T>(
    scene: &Scene,
    f: impl FnOnce(&zlayer_scene::OcclusionGraph) -> T,
) -> std::result::Result<T, String> {
    validate_native(scene.clone())
        .map(|l| f(l.scene.graph()))
        .map_err(|e| e.to_string())
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
    fn new(task: Task) -> Self {
        Plan {
            task,
            frames: Vec::new(),
            images: Vec::new(),
        }
    }

    /// Adds an image to encode; frames name it by the index returned.
    fn image(&mut self, im: Rgba) -> usize {
        self.images.push(im);
        self.images.len() - 1
    }

    fn push(&mut self, frame: Frame, image: Option<usize>) {
        self.frames.push(Planned { frame, image });
    }

    /// A frame showing a new image.
    fn push_new(&mut self, frame: Frame, im: Rgba) {
        let i = self.image(im);
        self.push(frame, Some(i));
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
        let mut plan = Plan::new(task);
        let full = |role, target| Frame::full(role, target, Vec::new(), (grid, grid));
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
                plan.push_new(full(Role::Image, false), opaque(&s.image));
                plan.push_new(full(Role::Plate, true), opaque(&s.background));
                for k in 0..n {
                    plan.push_new(inst(Role::Layer, true, k), straight(&s.layers[k]));
                }
            }
            (Task::Matte, _) => {
                plan.push_new(full(Role::Image, false), opaque(&s.image));
                let matte = s.image.iter().zip(&s.visible[k]).map(|(p, &a)| {
                    [
                        p[0] as f32 / 255.0,
                        p[1] as f32 / 255.0,
                        p[2] as f32 / 255.0,
                        a as f32 / 255.0,
                    ]
                });
                plan.push_new(inst(Role::Matte, true, k), matte.collect());
            }
            (Task::Remove, _) => {
                // The marker shows the image's own latents at the instance's cells.
                let image = plan.image(opaque(&s.image));
                plan.push(full(Role::Image, false), Some(image));
                plan.push(inst(Role::Marker, false, k), Some(image));
                let rest: Vec<usize> = (0..n).filter(|&i| i != k).collect();
                plan.push_new(full(Role::Removed, true), opaque(&s.composite(&rest)));
            }
            (Task::Complete, _) => {
                let keep: Vec<usize> = (0..n)
                    .filter(|_| !rng.next_u64().is_multiple_of(4))
                    .collect();
                plan.push_new(full(Role::Plate, false), opaque(&s.background));
                for &k in &keep {
                    plan.push_new(inst(Role::Layer, false, k), straight(&s.layers[k]));
                }
                plan.push_new(full(Role::Image, true), opaque(&s.composite(&keep)));
            }
        }
        Ok(plan)
    }

    /// Matting of instance `k` of `scene` in `image` (opaque, the scene's size): its visible
    /// RGBA, whose alpha is the matte.
    pub fn matting(
        image: Rgba,
        scene: &Scene,
        k: usize,
        words: &Tokenizer,
        grid: usize,
    ) -> std::result::Result<Self, String> {
        let levels = depth_levels(scene)?;
        let mut plan = Plan::new(Task::Matte);
        plan.push_new(
            Frame::full(Role::Image, false, Vec::new(), (grid, grid)),
            image,
        );
        plan.push(
            instance_frame(Role::Matte, true, scene, &levels, k, words, grid),
            None,
        );
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
        let mut plan = Plan::new(Task::Decompose);
        plan.push_new(
            Frame::full(Role::Image, false, Vec::new(), (grid, grid)),
            image,
        );
        plan.push(
            Frame::full(Role::Plate, true, Vec::new(), (grid, grid)),
            None,
        );
        for k in 0..scene.instances.len() {
            plan.push(
                instance_frame(Role::Layer, true, scene, &levels, k, words, grid),
                None,
            );
        }
        Ok(plan)
    }
}

/// Encodes every plan's images in one VAE batch and gives the sequences.
pub fn sequences(
    mut plans: Vec<Plan>,
    vae: &VaeBundle,
    size: u32,
    dev: &Device,
) -> Result<Vec<Sequence>> {
    let grid = size as usize / vae.cfg.factor();
    let c = vae.cfg.latent;
    let counts: Vec<usize> = plans.iter().map(|p| p.images.len()).collect();
    let images: Vec<Rgba> = plans
        .iter_mut()
        .flat_map(|p| std::mem::take(&mut p.images))
        .collect();
    let latents = encode(vae, &images, size, dev)?;
    let mut first = 0;
    Ok(plans
        .into_iter()
        .zip(counts)
        .map(|(p, count)| {
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
            first += count;
            Sequence {
                task: p.task,
                frames,
            }
        })
        .collect())
}
