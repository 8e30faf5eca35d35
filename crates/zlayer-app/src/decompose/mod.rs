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

pub use frames::{Plan, Rgba, box_cells, decode, depth_levels, draw_order, encode, sequences};

use crate::layer_eval::{Decomposition, LayerScores, Predicted, evaluate, score_decompositions};
use crate::layers::{Describe, stack_of};
use candle_core::{Device, Result};
use frames::{opaque, straight};
use zlayer_composite::rgba::quantize8;
use zlayer_composite::{Image, LayerStack, Straight};
use zlayer_metrics::segment::segment;
use zlayer_model::bundle::{Source, VaeBundle};
use zlayer_model::omni::{Batch, Omni};
use zlayer_model::sampling::schedule;
use zlayer_model::text::Tokenizer;
use zlayer_scene::{BBox, Scene, ValidScene};
use zlayer_synth::{Params, Split, SynthScene, scene_at};

/// The `--layer-model` word for the layer model built into the binary (`models/tiny16/layers`).
pub const DEFAULT_LAYER_MODEL: &str = "bundled";

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
    /// Takes from `image` (RGB, `width` pixels a row) what it shows, keeping the model's
    /// prediction for what it hides. `scene` is in the image's pixels.
    ///
    /// 1. Alpha: where the metrics segmenter can read the captions' colours, a pixel it gives
    ///    to instance k is k's (alpha 1, or the model's for glass), one it gives to an
    ///    instance in front of k keeps k's predicted alpha (k may be hidden there), one it
    ///    gives to an instance behind k is not k's, and one it leaves to the background keeps
    ///    k's alpha only where the model puts it at 0.5 or more.
    /// 2. Colour: the least change (alpha kept) that makes the layers, back to front over the
    ///    plate, composite to the image ([`zlayer_composite::reconcile`]). A hidden part keeps
    ///    the model's colours.
    ///
    /// Returns why the segmenter was not used (a caption names no colour it knows), if so:
    /// the alphas are then the model's.
    pub fn observe(
        &mut self,
        image: &[[u8; 3]],
        width: usize,
        scene: &Scene,
    ) -> std::result::Result<Option<String>, String> {
        let order = draw_order(scene)?;
        let unsegmented = match zlayer_metrics::eval::targets(scene) {
            Ok(targets) => {
                let labels = segment(image, width, image.len() / width.max(1), &targets);
                let mut rank = vec![0; order.len()];
                for (r, &k) in order.iter().enumerate() {
                    rank[k] = r;
                }
                for (k, layer) in self.layers.iter_mut().enumerate() {
                    for (px, label) in layer.iter_mut().zip(&labels) {
                        px[3] = match *label {
                            Some(j) if j == k && !targets[k].glass => 1.0,
                            Some(j) if j == k || rank[j] > rank[k] => px[3],
                            Some(_) => 0.0,
                            // Background, or a pixel no colour model explains (a pattern
                            // at full size, a highlight): the model's, where it is sure.
                            None if px[3] >= 0.5 => px[3],
                            None => 0.0,
                        };
                    }
                }
                None
            }
            Err(e) => Some(format!(
                "{e}; the layers keep the layer model's alpha, and only their colours are taken from the image"
            )),
        };
        let target: Vec<[f32; 3]> = image.iter().map(|p| p.map(|c| c as f32 / 255.0)).collect();
        self.reconcile(&target, &order)?;
        Ok(unsegmented)
    }

    /// The least change of colour (alpha kept) that makes the layers, back to front by
    /// `order` over the plate, composite to `image` (RGB in [0, 1]); see
    /// [`zlayer_composite::reconcile`]. Returns the largest error left in any channel.
    pub fn reconcile(
        &mut self,
        image: &[[f32; 3]],
        order: &[usize],
    ) -> std::result::Result<f32, String> {
        let mut slots: Vec<Option<&mut Rgba>> = self.layers.iter_mut().map(Some).collect();
        let mut stack: Vec<&mut [[f32; 4]]> = vec![self.plate.as_mut_slice()];
        for &k in order {
            let layer = slots.get_mut(k).and_then(Option::take).ok_or_else(|| {
                format!("draw order {order:?} is not a permutation of the layers")
            })?;
            stack.push(layer.as_mut_slice());
        }
        zlayer_composite::reconcile::reconcile(&mut stack, image)
    }

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
    let plan = Plan::decomposition(opaque(image), scene, &lm.words, lm.grid())?;
    let images = sample(lm, vec![plan], steps, seed, dev)?.remove(0);
    Ok(clipped(images, scene, lm.size))
}

/// The model's matte (visible alpha) of every instance of `scene` in `image` (RGB, the
/// model's size), zero outside each box: one sequence per instance, sampled as one batch.
pub fn mattes(
    lm: &LayerModel,
    image: &[[u8; 3]],
    scene: &Scene,
    steps: usize,
    seed: u64,
    dev: &Device,
) -> std::result::Result<Vec<Vec<f32>>, String> {
    let im = opaque(image);
    let plans = (0..scene.instances.len())
        .map(|k| Plan::matting(im.clone(), scene, k, &lm.words, lm.grid()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let frames = sample(lm, plans, steps, seed, dev)?.into_iter().flatten();
    Ok(frames
        .zip(&scene.instances)
        .map(|(mut m, inst)| {
            clip_to_box(&mut m, inst.bbox, lm.size as usize);
            m.iter().map(|p| p[3]).collect()
        })
        .collect())
}

/// Samples every plan's targets in one batch and decodes them at the full canvas, the cells
/// outside a frame's box taking the latents of a fully transparent image: per plan, its
/// target frames in order.
fn sample(
    lm: &LayerModel,
    plans: Vec<Plan>,
    steps: usize,
    seed: u64,
    dev: &Device,
) -> std::result::Result<Vec<Vec<Rgba>>, String> {
    let e = |x: candle_core::Error| x.to_string();
    let (size, grid, c) = (lm.size, lm.grid(), lm.vae.cfg.latent);
    let seqs = sequences(plans, &lm.vae, size, dev).map_err(e)?;
    let batch = Batch::new(&seqs, lm.model.config(), dev).map_err(e)?;
    let longest = seqs.iter().map(|s| s.len()).max().unwrap_or(1);
    let times = schedule(steps, longest, false);
    let x = lm.model.sample(&batch, &times, seed).map_err(e)?;
    let empty = encode(
        &lm.vae,
        &[vec![[0.0; 4]; (size * size) as usize]],
        size,
        dev,
    )
    .map_err(e)?
    .remove(0);
    let mut full = Vec::new();
    let mut counts = Vec::with_capacity(seqs.len());
    for (si, seq) in seqs.iter().enumerate() {
        let before = full.len();
        for (fi, f) in seq.frames.iter().enumerate().filter(|(_, f)| f.target) {
            let vals = batch
                .frame(&x, si, fi)
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
        counts.push(full.len() - before);
    }
    let mut images = decode(&lm.vae, &full, grid, dev).map_err(e)?.into_iter();
    Ok(counts
        .into_iter()
        .map(|n| images.by_ref().take(n).collect())
        .collect())
}

/// Decoded frames (the plate, then one per instance) as [`Layers`]: each instance's alpha
/// zero outside its amodal box, every value within [0, 1].
fn clipped(mut images: Vec<Rgba>, scene: &Scene, size: u32) -> Layers {
    let mut plate = images.remove(0);
    for px in &mut plate {
        *px = [px[0], px[1], px[2], 1.0].map(|v| v.clamp(0.0, 1.0));
    }
    for (k, layer) in images.iter_mut().enumerate() {
        clip_to_box(layer, scene.instances[k].bbox, size as usize);
    }
    Layers {
        plate,
        layers: images,
    }
}

/// Clamps every value of `layer` (`side` pixels a row) to [0, 1], and its alpha to 0 outside `b`.
fn clip_to_box(layer: &mut Rgba, b: BBox, side: usize) {
    for (p, px) in layer.iter_mut().enumerate() {
        let (x, y) = ((p % side) as f64 + 0.5, (p / side) as f64 + 0.5);
        if x < b.x1 || x >= b.x2 || y < b.y1 || y >= b.y2 {
            px[3] = 0.0;
        }
        *px = px.map(|v| v.clamp(0.0, 1.0));
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
    /// Loads [`DEFAULT_LAYER_MODEL`] (built into the binary) or a folder ([`Self::load`]).
    pub fn open(
        name: &std::path::Path,
        dev: &Device,
    ) -> std::result::Result<(Self, OmniMeta), crate::Failure> {
        if name.as_os_str() == DEFAULT_LAYER_MODEL {
            Self::from_sources(&crate::bundled::LAYERS, &crate::bundled::LAYER_VAE, dev)
        } else {
            Self::load(name, dev)
        }
    }

    /// Loads `dir/omni.safetensors` with `dir/omni.json` and the alpha-aware VAE
    /// `dir/vae.safetensors` (`zlayer train layers` writes all three).
    pub fn load(
        dir: &std::path::Path,
        dev: &Device,
    ) -> std::result::Result<(Self, OmniMeta), crate::Failure> {
        let json = dir.join("omni.json");
        if !json.is_file() {
            return Err(crate::Failure::User(format!(
                "{}: no such file; a layer model folder holds omni.json, omni.safetensors and vae.safetensors (train one with `zlayer train layers`, or leave --layer-model out for the bundled one)",
                json.display()
            )));
        }
        let vae = dir.join("vae.safetensors");
        if !vae.is_file() {
            return Err(crate::Failure::User(format!(
                "{}: no such file; the layer model's alpha-aware VAE belongs beside it",
                vae.display()
            )));
        }
        Self::from_sources(
            &Source::File(dir.join("omni.safetensors")),
            &Source::File(vae),
            dev,
        )
    }

    fn from_sources(
        omni: &Source,
        vae: &Source,
        dev: &Device,
    ) -> std::result::Result<(Self, OmniMeta), crate::Failure> {
        use crate::Failure;
        let meta: OmniMeta = omni
            .json()
            .and_then(|v| {
                serde_json::from_value(v).map_err(|e| format!("{}: {e}", omni.json_name()))
            })
            .map_err(Failure::User)?;
        let (bundle, size) = crate::model::vae_of(vae, dev)?;
        if bundle.cfg.image_channels != 4
            || bundle.cfg.latent != meta.config.latent
            || size != meta.image_size
        {
            return Err(Failure::User(format!(
                "{}: the VAE beside the layer model must be its alpha-aware VAE ({} latent channels at {} px), found {} image channels, {} latent channels at {size} px",
                vae.name(),
                meta.config.latent,
                meta.image_size,
                bundle.cfg.image_channels,
                bundle.cfg.latent
            )));
        }
        let vb = omni.weights(dev).map_err(Failure::User)?;
        let model = Omni::new(&meta.config, vb)
            .map_err(|e| Failure::User(format!("{}: {e}", omni.name())))?;
        let lm = LayerModel {
            model,
            vae: bundle,
            words: Tokenizer::new(&meta.words),
            size,
        };
        Ok((lm, meta))
    }
}

/// A decomposition at an image's size.
pub struct Decomposed {
    /// The background plate.
    pub plate: Image<Straight>,
    /// Each instance's amodal layer, in the scene's order.
    pub layers: Vec<Image<Straight>>,
    /// What the user should know of how it was made (see [`Layers::observe`]).
    pub note: Option<String>,
}

impl Decomposed {
    /// The layer stack: the plate at the bottom, then each instance's layer back to front,
    /// named by its caption, with `describe` embedded.
    pub fn stack(self, scene: &ValidScene, describe: &Describe) -> LayerStack {
        let captions: Vec<String> = scene
            .scene()
            .instances
            .iter()
            .map(|i| i.caption.clone())
            .collect();
        let order = scene.graph().draw_order();
        stack_of(
            self.plate,
            "background plate",
            self.layers,
            &captions,
            &order,
            Some(describe),
        )
    }
}

/// `scene` with its canvas mapped onto `width × height` pixels.
fn on_canvas(scene: &Scene, width: usize, height: usize) -> Scene {
    let (sx, sy) = (
        width as f64 / scene.width as f64,
        height as f64 / scene.height as f64,
    );
    let mut s = scene.clone();
    (s.width, s.height) = (width as u32, height as u32);
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
/// plate and each instance's amodal layer at the image's size. With `observed`, the layers
/// then take what the image shows ([`Layers::observe`], at the image's own size), so they
/// composite back to it with its detail wherever they are visible.
pub fn decompose_image(
    lm: &LayerModel,
    image: &Image<Straight>,
    scene: &Scene,
    (steps, seed): (usize, u64),
    observed: bool,
    dev: &Device,
) -> std::result::Result<Decomposed, String> {
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
    let d = decompose(lm, &rgb, &on_canvas(scene, side, side), steps, seed, dev)?;
    let up = |px: &Rgba| {
        let img = Image {
            width: side,
            height: side,
            pixels: px.iter().map(|&p| Straight(p)).collect(),
        };
        img.resized(image.width, image.height)
            .pixels
            .iter()
            .map(|p| p.0)
            .collect()
    };
    let mut full = Layers {
        plate: up(&d.plate),
        layers: d.layers.iter().map(up).collect(),
    };
    let mut note = None;
    if observed {
        let rgb: Vec<[u8; 3]> = image
            .pixels
            .iter()
            .map(|p| [0, 1, 2].map(|c| quantize8(p.0[c])))
            .collect();
        let at_size = on_canvas(scene, image.width, image.height);
        note = full.observe(&rgb, image.width, &at_size)?;
    }
    let img = |px: Rgba| Image {
        width: image.width,
        height: image.height,
        pixels: px.into_iter().map(Straight).collect(),
    };
    Ok(Decomposed {
        plate: img(full.plate),
        layers: full.layers.into_iter().map(img).collect(),
        note,
    })
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

/// The model's decompositions of held-out scenes `0..n` of `seed` in `split`, raw and with
/// what the image shows taken from it (`layer-model+observed`, [`Layers::observe`]), scored
/// beside the two cut-out baselines and the VAE's own round trip of the exact layers.
pub fn heldout(
    lm: &LayerModel,
    (seed, n, split): (u64, usize, Split),
    steps: usize,
    dev: &Device,
) -> std::result::Result<Vec<LayerScores>, String> {
    let params = Params::new(split, lm.size);
    let sc: Vec<SynthScene> = (0..n as u64).map(|i| scene_at(seed, i, &params)).collect();
    let bar = crate::report::Progress::new(n);
    let (mut decomps, mut observed) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (i, s) in sc.iter().enumerate() {
        let mut d = decompose(lm, &s.image, &s.scene, steps, seed ^ i as u64, dev)?;
        decomps.push(d.scored());
        d.observe(&s.image, lm.size as usize, &s.scene)?;
        observed.push(d.scored());
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
    scores.push(score_decompositions("layer-model+observed", &sc, &observed));
    let ceiling = sc
        .iter()
        .map(|s| round_trip(&lm.vae, s, dev).map(|l| l.scored()))
        .collect::<Result<Vec<_>>>()
        .map_err(|e| e.to_string())?;
    scores.push(score_decompositions("vae-round-trip", &sc, &ceiling));
    Ok(scores)
}
