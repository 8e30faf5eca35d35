//! The layer model's data and use (DESIGN.md §4.5): SA-Z-synth scenes as task sequences for
//! [`zlayer_model::omni`], and decomposition of an image into amodal RGBA layers.
//!
//! Every frame is an RGBA image encoded by the alpha-aware VAE. Training sequences come from
//! a scene's exact layers: decomposition (image → plate + every instance's amodal layer),
//! matting (image → one instance's visible RGBA), removal (image + instance → the image
//! without it) and completion (plate + some layers → their composite). An instance's frame
//! holds the latent cells its amodal box touches; at decoding, the cells outside it take the
//! latents of a fully transparent image, and alpha outside the box is zero.

mod frames;

pub use frames::{Plan, Rgba, box_cells, decode, depth_levels, encode, sequences};

use crate::layer_eval::{Decomposition, LayerScores, Predicted, evaluate, score_decompositions};
use crate::layers::{Describe, stack_of};
use candle_core::{Device, Result};
use frames::{opaque, straight};
use zlayer_composite::rgba::quantize8;
use zlayer_composite::{Image, LayerStack, Straight};
use zlayer_model::bundle::VaeBundle;
use zlayer_model::omni::{Batch, Omni};
use zlayer_model::sampling::schedule;
use zlayer_model::text::Tokenizer;
use zlayer_scene::{BBox, Scene, ValidScene};
use zlayer_synth::{Params, Split, SynthScene, scene_at};

/// Where a layer model is looked for when none is named.
pub const DEFAULT_LAYER_MODEL: &str = "models/tiny16/layers";

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

/// A layer stack of a decomposition of `scene`: the plate at the bottom, then each
/// instance's layer back to front, named by its caption, with `describe` embedded.
pub fn layer_stack(
    scene: &ValidScene,
    plate: Image<Straight>,
    layers: Vec<Image<Straight>>,
    describe: &Describe,
) -> LayerStack {
    let captions: Vec<String> = scene
        .scene()
        .instances
        .iter()
        .map(|i| i.caption.clone())
        .collect();
    let order = scene.graph().draw_order();
    stack_of(
        plate,
        "background plate",
        layers,
        &captions,
        &order,
        Some(describe),
    )
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
