//! The layer model's data and use (DESIGN.md §4.5): SA-Z-synth scenes as task sequences for
//! [`zlayer_model::omni`], and decomposition of an image into amodal RGBA layers.
//!
//! Every frame is an RGBA image encoded by the alpha-aware VAE. Training sequences come from
//! a scene's exact layers: decomposition (image → plate + every instance's amodal layer),
//! matting (image → one instance's visible RGBA), removal (image + instance → the image
//! without it) and completion (plate + some layers → their composite). An instance's frame
//! holds the latent cells its amodal box touches; at decoding, the cells outside it take the
//! latents of a fully transparent image, and alpha outside the box is zero.

use crate::layer_eval::{Decomposition, LayerScores, Predicted, evaluate, score_decompositions};
use candle_core::{Device, Result, Tensor};
use zlayer_composite::rgba::{Premul8, Straight8, over_stack8, quantize8};
use zlayer_composite::{Image, Straight};
use zlayer_model::bundle::VaeBundle;
use zlayer_model::omni::{Batch, Frame, Omni, Role, Sequence, Task};
use zlayer_model::sampling::{Rng, schedule};
use zlayer_model::text::Tokenizer;
use zlayer_scene::{BBox, OcclusionGraph, Scene};
use zlayer_synth::{Params, Split, SynthScene, scene_at};

/// Straight RGBA pixels in [0, 1], row-major.
pub type Rgba = Vec<[f32; 4]>;

/// The model with what it reads and writes through.
pub struct LayerModel {
    /// The multi-task DiT.
    pub model: Omni,
    /// The alpha-aware VAE whose latents it works in.
    pub vae: VaeBundle,
    /// Caption words.
    pub words: Tokenizer,
    /// Image side in pixels.
    pub size: u32,
}

impl LayerModel {
    /// Latent grid side.
    pub fn grid(&self) -> usize {
        self.size as usize / self.vae.cfg.factor()
    }
}

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

fn straight(l: &[Straight8]) -> Rgba {
    l.iter().map(|p| p.0.map(|v| v as f32 / 255.0)).collect()
}

fn opaque(rgb: &[[u8; 3]]) -> Rgba {
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

/// A decomposition: the background plate and each instance's amodal layer.
pub struct Layers {
    /// The plate, straight RGB(A) in [0, 1].
    pub plate: Rgba,
    /// Per instance, in the scene's order: straight RGBA in [0, 1], transparent outside its box.
    pub layers: Vec<Rgba>,
}

impl Layers {
    /// The layers (premultiplied) and plate, as [`crate::layer_eval`] scores them.
    pub fn scored(&self) -> Decomposition {
        Decomposition {
            layers: self
                .layers
                .iter()
                .map(|l| Predicted {
                    premul: l
                        .iter()
                        .map(|p| [p[0] * p[3], p[1] * p[3], p[2] * p[3]])
                        .collect(),
                    alpha: l.iter().map(|p| p[3]).collect(),
                })
                .collect(),
            plate: self.plate.iter().map(|p| [p[0], p[1], p[2]]).collect(),
        }
    }
}

/// Decomposes `image` (RGB, the model's size) by `scene` with `steps` Euler steps from `seed`.
pub fn decompose(
    lm: &LayerModel,
    image: &[[u8; 3]],
    scene: &Scene,
    steps: usize,
    seed: u64,
    dev: &Device,
) -> std::result::Result<Layers, String> {
    let e = |x: candle_core::Error| x.to_string();
    let (size, grid, c) = (lm.size, lm.grid(), lm.vae.cfg.latent);
    let plan = Plan::decomposition(opaque(image), scene, &lm.words, grid)?;
    let seqs = sequences(vec![plan], &lm.vae, size, dev).map_err(e)?;
    let batch = Batch::new(&seqs, lm.model.config(), dev).map_err(e)?;
    let times = schedule(steps, seqs[0].len(), false);
    let x = lm.model.sample(&batch, &times, seed).map_err(e)?;
    let empty = encode(
        &lm.vae,
        &[vec![[0.0; 4]; (size * size) as usize]],
        size,
        dev,
    )
    .map_err(e)?
    .remove(0);
    let mut full = Vec::with_capacity(seqs[0].frames.len() - 1);
    for (fi, f) in seqs[0].frames.iter().enumerate().skip(1) {
        let vals = batch
            .frame(&x, 0, fi)
            .map_err(e)?
            .flatten_all()
            .map_err(e)?
            .to_vec1::<f32>()
            .map_err(e)?;
        let mut z = empty.clone();
        for (k, &(r, col)) in f.cells.iter().enumerate() {
            z[(r * grid + col) * c..(r * grid + col + 1) * c]
                .copy_from_slice(&vals[k * c..(k + 1) * c]);
        }
        full.push(z);
    }
    let images = decode(&lm.vae, &full, grid, dev).map_err(e)?;
    Ok(clipped(images, scene, size))
}

/// Decoded frames (the plate, then one per instance) as [`Layers`]: each instance's alpha
/// zero outside its amodal box, every value within [0, 1].
fn clipped(mut images: Vec<Rgba>, scene: &Scene, size: u32) -> Layers {
    let plate = images.remove(0);
    let side = size as usize;
    for (k, layer) in images.iter_mut().enumerate() {
        let b = scene.instances[k].bbox;
        for (p, px) in layer.iter_mut().enumerate() {
            let (x, y) = ((p % side) as f64 + 0.5, (p / side) as f64 + 0.5);
            if x < b.x1 || x >= b.x2 || y < b.y1 || y >= b.y2 {
                px[3] = 0.0;
            }
            *px = px.map(|v| v.clamp(0.0, 1.0));
        }
    }
    Layers {
        plate,
        layers: images,
    }
}

/// A synthetic scene's exact plate and layers through the VAE alone, clipped as a
/// decomposition is: the best any model working in its latents can do.
pub fn round_trip(vae: &VaeBundle, s: &SynthScene, dev: &Device) -> Result<Layers> {
    let size = s.spec.params.size;
    let mut images = vec![opaque(&s.background)];
    images.extend(s.layers.iter().map(|l| straight(l)));
    let z = encode(vae, &images, size, dev)?;
    let grid = size as usize / vae.cfg.factor();
    Ok(clipped(decode(vae, &z, grid, dev)?, &s.scene, size))
}

/// The layer model's description beside its weights (`omni.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OmniMeta {
    /// Its shape.
    pub config: zlayer_model::omni::OmniConfig,
    /// Caption vocabulary, in id order.
    pub words: Vec<String>,
    /// Image side in pixels.
    pub image_size: u32,
    /// Sampling steps when none are asked for.
    pub steps: usize,
}

impl LayerModel {
    /// Loads `dir/omni.safetensors` with `dir/omni.json` and the alpha-aware VAE
    /// `dir/vae.safetensors` (`zlayer train layers` writes all three).
    pub fn load(
        dir: &std::path::Path,
        dev: &Device,
    ) -> std::result::Result<(Self, OmniMeta), crate::Failure> {
        use crate::Failure;
        let json = dir.join("omni.json");
        let text = std::fs::read_to_string(&json).map_err(|e| {
            Failure::User(format!(
                "{}: {e}; a layer model folder holds omni.json, omni.safetensors and vae.safetensors (train one with `zlayer train layers`)",
                json.display()
            ))
        })?;
        let meta: OmniMeta = serde_json::from_str(&text)
            .map_err(|e| Failure::User(format!("{}: {e}", json.display())))?;
        let (vae, size) = crate::model::vae_file(&dir.join("vae.safetensors"), dev)?;
        if vae.cfg.image_channels != 4
            || vae.cfg.latent != meta.config.latent
            || size != meta.image_size
        {
            return Err(Failure::User(format!(
                "{}: the VAE beside the layer model must be its alpha-aware VAE ({} latent channels at {} px), found {} image channels, {} latent channels at {size} px",
                dir.display(),
                meta.config.latent,
                meta.image_size,
                vae.cfg.image_channels,
                vae.cfg.latent
            )));
        }
        let vb = zlayer_model::train::load_weights(&dir.join("omni.safetensors"), dev)
            .map_err(Failure::User)?;
        let model = Omni::new(&meta.config, vb)
            .map_err(|e| Failure::User(format!("{}: {e}", dir.display())))?;
        let lm = LayerModel {
            model,
            vae,
            words: Tokenizer::new(&meta.words),
            size,
        };
        Ok((lm, meta))
    }
}

/// `scene` with its canvas mapped onto `size × size` pixels.
fn on_square(scene: &Scene, size: u32) -> Scene {
    let (sx, sy) = (
        size as f64 / scene.width as f64,
        size as f64 / scene.height as f64,
    );
    let mut s = scene.clone();
    (s.width, s.height) = (size, size);
    for i in &mut s.instances {
        let b = i.bbox;
        i.bbox = BBox {
            x1: b.x1 * sx,
            y1: b.y1 * sy,
            x2: b.x2 * sx,
            y2: b.y2 * sy,
        };
    }
    s
}

/// Decomposes an image of any size by its `scene` (whose canvas maps onto the image): the
/// plate and each instance's amodal layer at the image's size.
pub fn decompose_image(
    lm: &LayerModel,
    image: &Image<Straight>,
    scene: &Scene,
    steps: usize,
    seed: u64,
    dev: &Device,
) -> std::result::Result<(Image<Straight>, Vec<Image<Straight>>), String> {
    let side = lm.size as usize;
    let small = if image.width > side && image.height > side {
        image.shrunk(side, side)
    } else {
        image.resized(side, side)
    };
    let rgb: Vec<[u8; 3]> = small
        .pixels
        .iter()
        .map(|p| [0, 1, 2].map(|c| quantize8(p.0[c])))
        .collect();
    let d = decompose(lm, &rgb, &on_square(scene, lm.size), steps, seed, dev)?;
    let up = |px: &Rgba| {
        let img = Image {
            width: side,
            height: side,
            pixels: px.iter().map(|&p| Straight(p)).collect(),
        };
        img.resized(image.width, image.height)
    };
    let plate = up(&d.plate);
    let layers = d.layers.iter().map(up).collect();
    Ok((plate, layers))
}

/// Writes `plate.png` and `layer-K.png` per instance K into `dir`, straight alpha.
pub fn write_layers_dir(
    dir: &std::path::Path,
    plate: &Image<Straight>,
    layers: &[Image<Straight>],
) -> std::result::Result<(), crate::Failure> {
    use crate::Failure;
    use zlayer_composite::{BitDepth, write_png};
    let user = |e: zlayer_composite::IoError| Failure::User(e.to_string());
    std::fs::create_dir_all(dir).map_err(|e| Failure::User(format!("{}: {e}", dir.display())))?;
    write_png(&dir.join("plate.png"), plate, BitDepth::Eight).map_err(user)?;
    for (k, l) in layers.iter().enumerate() {
        write_png(&dir.join(format!("layer-{k}.png")), l, BitDepth::Eight).map_err(user)?;
    }
    eprintln!(
        "wrote {} (plate.png and {} layers)",
        dir.display(),
        layers.len()
    );
    Ok(())
}

/// The model's decompositions of held-out scenes `0..n` of `seed` in `split`, scored beside
/// the two cut-out baselines and the VAE's own round trip of the exact layers.
pub fn heldout(
    lm: &LayerModel,
    (seed, n, split): (u64, usize, Split),
    steps: usize,
    dev: &Device,
) -> std::result::Result<Vec<LayerScores>, String> {
    let params = Params::new(split, lm.size);
    let sc: Vec<SynthScene> = (0..n as u64).map(|i| scene_at(seed, i, &params)).collect();
    let bar = crate::report::Progress::new(n);
    let mut decomps = Vec::with_capacity(n);
    for (i, s) in sc.iter().enumerate() {
        decomps.push(decompose(lm, &s.image, &s.scene, steps, seed ^ i as u64, dev)?.scored());
        bar.update(i + 1, "decomposing held-out scenes".into());
    }
    bar.finish();
    let mut scores = evaluate(
        &["segmenter-cutout", "visible-cutout"],
        seed,
        n,
        lm.size,
        split,
    )?;
    scores.push(score_decompositions("layer-model", &sc, &decomps));
    let ceiling = sc
        .iter()
        .map(|s| round_trip(&lm.vae, s, dev).map(|l| l.scored()))
        .collect::<Result<Vec<_>>>()
        .map_err(|e| e.to_string())?;
    scores.push(score_decompositions("vae-round-trip", &sc, &ceiling));
    Ok(scores)
}
