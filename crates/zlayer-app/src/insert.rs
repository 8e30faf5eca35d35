//! `zlayer insert`: a new instance put into an existing image at its place in the scene's
//! order (DESIGN.md §4.4).
//!
//! 1. The image, shrunk to the model's size, is encoded: z_A.
//! 2. The scene with the new instance is drawn by the branch, keeping z_A outside the new
//!    box (velocity re-targeting, [`Known`]): z_B.
//! 3. The new object's visible mask M: the segmenter's reading of z_B's image within the
//!    box, less what the instances in front of it cover in the input.
//! 4. z_A and z_B are composited in latent space under M, by DecFormer or the linear blend,
//!    and refined by a short denoise that keeps the composite outside M.
//! 5. The decoded result, enlarged to the input's size, replaces the input on M and fades
//!    out over a band around it: every other pixel is the input's, bit for bit.

use crate::method::{Method, SceneSampler};
use crate::pipeline::{Pipeline, model_captions, scene_prompt};
use crate::{Failure, internal};
use candle_core::Tensor;
use zlayer_composite::resample::bilinear;
use zlayer_composite::{Image, Straight};
use zlayer_metrics::segment::{Target, segment};
use zlayer_model::base::SampleOptions;
use zlayer_model::inpaint::Known;
use zlayer_model::layout_model::SceneLayout;
use zlayer_model::pelc::DecFormer;
use zlayer_scene::{BBox, Instance, Scene, ValidScene};
use zlayer_synth::vocab::{Look, Material};

/// Where the new instance goes in the scene's order.
#[derive(Debug, Clone, PartialEq)]
pub enum Place {
    /// In front of every instance its box overlaps.
    Top,
    /// Just behind this instance: behind it and what is in front of it, in front of the rest.
    Behind(String),
    /// Just in front of this instance: behind what is in front of it, in front of the rest.
    InFrontOf(String),
}

/// What to insert, and how.
pub struct InsertRequest<'a> {
    /// The image to insert into, at any size; the scene's canvas maps onto it.
    pub image: &'a Image<Straight>,
    /// The image's scene (its instances may be empty).
    pub scene: &'a Scene,
    /// The new instance (box in canvas pixels); its `occludes` is set from `place`.
    pub instance: Instance,
    /// Its place in the order.
    pub place: Place,
    /// What draws it (a trained branch, or the base alone).
    pub method: Method,
    /// Steps, guidance and seed of the drawing.
    pub opts: SampleOptions,
    /// Fraction of the steps that run the branch (else the model file's).
    pub grounding_ratio: Option<f64>,
    /// The time the refinement starts at (0: none).
    pub refine: f64,
    /// Width in image pixels of the band around the mask over which the model's pixels fade
    /// into the input's.
    pub band: usize,
    /// Refuse captions outside the tiny model's vocabulary.
    pub strict: bool,
}

/// What insertion made.
pub struct Inserted {
    /// The image, at the input's size.
    pub image: Image<Straight>,
    /// The scene with the new instance last and its order relations.
    pub scene: ValidScene,
    /// Per instance of `scene`, its visible mask at the image's size, in [0, 1].
    pub visible: Vec<Vec<f32>>,
    /// The pixels that took the model's output (the mask and its band).
    pub band: Vec<bool>,
    /// What was changed to fit the tiny model, one line each.
    pub notes: Vec<String>,
    /// How far the latent blend is from pixel-equivalent: the mean error (per channel, in
    /// [0, 1]) of its decoding against the pixel composite (1 − M)·D(z_A) + M·D(z_B), within
    /// [`crate::pelc::eval::EDGE_PX`] model pixels of the new object's edge, before the
    /// refinement redraws the object.
    pub seam_l1: f64,
}

fn user(e: impl std::fmt::Display) -> Failure {
    Failure::User(e.to_string())
}

/// The scene with `new` added last, in front of or behind what `place` says, and validated.
pub fn placed_scene(scene: &Scene, new: &Instance, place: &Place) -> Result<ValidScene, Failure> {
    if scene.index_of(&new.id).is_some() {
        return Err(user(format!(
            "the scene already has an instance {:?}; give the new one another --id",
            new.id
        )));
    }
    let old = validated(scene.clone())?;
    let n = scene.instances.len();
    let index = |id: &str| {
        scene.index_of(id).ok_or_else(|| {
            let ids: Vec<&str> = scene.instances.iter().map(|i| i.id.as_str()).collect();
            user(format!(
                "no instance {id:?} in the scene (its ids: {})",
                if ids.is_empty() {
                    "none".into()
                } else {
                    ids.join(", ")
                }
            ))
        })
    };
    // Instances in front of the new one: the anchor (behind) and everything in front of it.
    let front: Vec<bool> = match place {
        Place::Top => vec![false; n],
        Place::Behind(id) => in_front_of(old.graph(), index(id)?, true),
        Place::InFrontOf(id) => in_front_of(old.graph(), index(id)?, false),
    };
    let mut next = scene.clone();
    let mut new = new.clone();
    new.occludes.clear();
    for (k, inst) in next.instances.iter_mut().enumerate() {
        if !inst.bbox.overlaps(new.bbox) {
            continue;
        }
        if front[k] {
            inst.occludes.push(new.id.clone());
        } else {
            new.occludes.push(inst.id.clone());
        }
    }
    next.instances.push(new);
    validated(next)
}

/// Who is in front of `anchor` (transitively), and `anchor` itself when `with_anchor`.
fn in_front_of(g: &zlayer_scene::OcclusionGraph, anchor: usize, with_anchor: bool) -> Vec<bool> {
    let mut front = vec![false; g.len()];
    let mut stack = g.occluders(anchor).to_vec();
    while let Some(k) = stack.pop() {
        if !front[k] {
            front[k] = true;
            stack.extend_from_slice(g.occluders(k));
        }
    }
    front[anchor] = with_anchor;
    front
}

pub(crate) fn validated(scene: Scene) -> Result<ValidScene, Failure> {
    zlayer_scene::validate_native(scene)
        .map(|l| l.scene)
        .map_err(|e| user(crate::scene_file::render(std::path::Path::new("scene"), &e)))
}

/// `mask` (w × h) grown by `r` pixels in every direction (a square of half-width r).
pub fn dilate(mask: &[bool], (w, h): (usize, usize), r: usize) -> Vec<bool> {
    let grow = |m: &[bool], step: (usize, usize), len: usize, lines: usize| {
        let mut out = m.to_vec();
        for line in 0..lines {
            let at = |i: usize| line * step.1 + i * step.0;
            let mut last: Option<usize> = None;
            for i in 0..len {
                if m[at(i)] {
                    last = Some(i);
                }
                if last.is_some_and(|l| i - l <= r) {
                    out[at(i)] = true;
                }
            }
            last = None;
            for i in (0..len).rev() {
                if m[at(i)] {
                    last = Some(i);
                }
                if last.is_some_and(|l| l - i <= r) {
                    out[at(i)] = true;
                }
            }
        }
        out
    };
    let rows = grow(mask, (1, w), w, h);
    grow(&rows, (w, 1), h, w)
}

/// How much of the model's pixels each pixel takes: 1 on `inside`, falling linearly with
/// the (square) distance d to it as 1 − d/(r + 1), and 0 beyond `r` pixels: the seam is
/// feathered over the band, and outside it the input stays as it was.
pub fn feather(inside: &[bool], (w, h): (usize, usize), r: usize) -> Vec<f32> {
    let mut weight: Vec<f32> = inside.iter().map(|&b| f32::from(u8::from(b))).collect();
    let mut reached = inside.to_vec();
    for d in 1..=r {
        reached = dilate(&reached, (w, h), 1);
        let v = 1.0 - d as f32 / (r + 1) as f32;
        for (wt, &on) in weight.iter_mut().zip(&reached) {
            if on && *wt == 0.0 {
                *wt = v;
            }
        }
    }
    weight
}

/// `input` where `weight` is 0 (bit for bit), `drawn` where it is 1, and their mix between.
pub fn paste(input: &Image<Straight>, drawn: &Image<Straight>, weight: &[f32]) -> Image<Straight> {
    let mut out = input.clone();
    for ((px, d), &b) in out.pixels.iter_mut().zip(&drawn.pixels).zip(weight) {
        if b >= 1.0 {
            *px = *d;
        } else if b > 0.0 {
            for c in 0..4 {
                px.0[c] += (d.0[c] - px.0[c]) * b;
            }
        }
    }
    out
}

/// Segmenter targets for `scene`'s instances drawn with `captions`, boxes at `size` px.
fn targets(scene: &Scene, captions: &[String], size: usize) -> Result<Vec<Target>, Failure> {
    let (sx, sy) = (
        size as f64 / scene.width as f64,
        size as f64 / scene.height as f64,
    );
    scene
        .instances
        .iter()
        .zip(captions)
        .map(|(inst, caption)| {
            let look = Look::parse(caption).map_err(|e| user(format!("{caption:?}: {e}")))?;
            let b = inst.bbox;
            Ok(Target {
                bbox: [b.x1 * sx, b.y1 * sy, b.x2 * sx, b.y2 * sy],
                rgb: look.colour.rgb(),
                glass: look.material == Material::Glass,
            })
        })
        .collect()
}

/// 1 for tokens of a `g × g` grid whose cell touches `free` (a `size²` pixel mask), else 0:
/// the tokens to keep, as (1, g², 1).
pub(crate) fn keep_tokens(
    free: &[bool],
    size: usize,
    g: usize,
    dev: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let f = size / g;
    let keep: Vec<f32> = (0..g * g)
        .map(|t| {
            let (tx, ty) = (t % g, t / g);
            let touched = (0..f * f).any(|q| free[(ty * f + q / f) * size + tx * f + q % f]);
            if touched { 0.0 } else { 1.0 }
        })
        .collect();
    Tensor::from_vec(keep, (1, g * g, 1), dev)
}

/// The pixels of a box (canvas coordinates of `scene`) on a `w × h` image of the canvas.
fn box_pixels(scene: &Scene, b: BBox, (w, h): (usize, usize)) -> Vec<bool> {
    let (sx, sy) = (
        w as f64 / scene.width as f64,
        h as f64 / scene.height as f64,
    );
    (0..w * h)
        .map(|p| {
            let (x, y) = ((p % w) as f64 + 0.5, (p / w) as f64 + 0.5);
            x >= b.x1 * sx && x < b.x2 * sx && y >= b.y1 * sy && y < b.y2 * sy
        })
        .collect()
}

/// An image (1, 3, S, S) in [−1, 1] from pixels.
pub(crate) fn to_tensor(
    img: &Image<Straight>,
    dev: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let n = img.width * img.height;
    let mut v = vec![0f32; 3 * n];
    for (p, px) in img.pixels.iter().enumerate() {
        for c in 0..3 {
            // Composited over white, as the synthetic world's images are opaque.
            let a = px.0[3];
            v[c * n + p] = (px.0[c] * a + (1.0 - a)) * 2.0 - 1.0;
        }
    }
    Tensor::from_vec(v, (1, 3, img.height, img.width), dev)
}

/// Tokens (1, L, C) ↔ latents (1, C, g, g).
fn to_grid(tokens: &Tensor, g: usize) -> candle_core::Result<Tensor> {
    let c = tokens.dim(2)?;
    tokens.transpose(1, 2)?.reshape((1, c, g, g))
}

fn to_tokens(z: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = z.dims4()?;
    z.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()
}

/// What draws a scene's latent around a known region: the method's sampler with the
/// scene's layout (captions as the model reads them), or the base alone, and the prompt.
pub(crate) struct Drawer<'a> {
    p: &'a Pipeline,
    sampler: Option<SceneSampler>,
    prompt: String,
    ids: Tensor,
    layout: SceneLayout,
}

impl<'a> Drawer<'a> {
    /// A drawer of `scene` with `prompt`, by `sampler` (`None`: the base alone).
    pub(crate) fn new(
        p: &'a Pipeline,
        sampler: Option<SceneSampler>,
        scene: &ValidScene,
        captions: &[String],
        prompt: String,
    ) -> Result<Self, Failure> {
        let m = &p.model;
        let g = m.size / m.vae.cfg.factor();
        let mut layout = SceneLayout::from_scene(scene, (g, g));
        for (inst, caption) in layout.instances.iter_mut().zip(captions) {
            inst.caption = caption.clone();
        }
        let ids = m
            .base
            .tokenizer
            .batch(&[prompt.as_str()], m.base.max_len, &p.dev)
            .map_err(user)?;
        Ok(Self {
            p,
            sampler,
            prompt,
            ids,
            layout,
        })
    }

    /// The latent tokens (1, g², C) drawn keeping `known`.
    pub(crate) fn draw(
        &self,
        known: &Known,
        opts: &SampleOptions,
        grounding_ratio: Option<f64>,
    ) -> Result<Tensor, Failure> {
        let m = &self.p.model;
        let g = m.size / m.vae.cfg.factor();
        match &self.sampler {
            None => m
                .base
                .sample_known(&self.ids, (g, g), m.vae.cfg.latent, opts, Some(known)),
            Some(s) => s
                .sample(
                    &self.ids,
                    &[self.prompt.as_str()],
                    std::slice::from_ref(&self.layout),
                    ((g, g), m.vae.cfg.latent),
                    opts,
                    grounding_ratio,
                    Some(known),
                )
                .map(|(t, _)| t),
        }
        .map_err(internal)
    }
}

/// Inserts `req.instance` into `req.image`; `dec` blends the latents (the linear blend
/// when `None`).
pub fn insert(
    p: &Pipeline,
    dec: Option<&DecFormer>,
    req: &InsertRequest,
) -> Result<Inserted, Failure> {
    let m = &p.model;
    let dev = &p.dev;
    let (size, factor) = (m.size, m.vae.cfg.factor());
    let g = size / factor;
    if let Some(d) = dec {
        crate::pelc::fits(d.config(), &m.vae.cfg).map_err(|e| {
            user(format!(
                "{e}: train one for this model's VAE with `zlayer train pelc --vae …`"
            ))
        })?;
    }
    let placed = placed_scene(req.scene, &req.instance, &req.place)?;
    let scene = placed.scene();
    let new = scene.instances.len() - 1;
    let mut notes = Vec::new();
    let captions = model_captions(&placed, &m.base.tokenizer, req.strict, &mut notes)?;
    let sampler = SceneSampler::for_method(&p.dir, req.method, m.base.clone(), dev)?;
    // The base alone sees no boxes: its prompt names the new object only. An image without
    // a scene has no prompt: the training template over the captions.
    let template = |c: &[String]| {
        zlayer_synth::sample::prompt(c, false, zlayer_synth::vocab::Background::Plain)
    };
    let prompt = if sampler.is_none() {
        template(&captions[new..])
    } else if scene.prompt.trim().is_empty() {
        template(&captions)
    } else {
        scene_prompt(&placed, &captions, &m.base.tokenizer, &mut notes)
    };
    let drawer = Drawer::new(p, sampler, &placed, &captions, prompt)?;
    let draw = |known: &Known, seed: u64| {
        drawer.draw(
            known,
            &SampleOptions { seed, ..req.opts },
            req.grounding_ratio,
        )
    };

    // 1. The input at the model's size, and who shows where in it.
    let (w, h) = (req.image.width, req.image.height);
    let small = if (w, h) == (size, size) {
        req.image.clone()
    } else {
        req.image.shrunk(size, size)
    };
    let x_a = to_tensor(&small, dev).map_err(internal)?;
    let z_a = m.vae.encode_tokens(&x_a).map_err(internal)?;
    let all = targets(scene, &captions, size)?;
    let rgb = |img: &Tensor| -> Result<Vec<[u8; 3]>, Failure> {
        Ok(crate::output::to_rgb8(img).map_err(internal)?.remove(0))
    };
    let seen_a = segment(&rgb(&x_a)?, size, size, &all[..new]);

    // 2. The scene drawn with the input kept outside the new box.
    let in_box = box_pixels(scene, scene.instances[new].bbox, (size, size));
    let keep = keep_tokens(&in_box, size, g, dev).map_err(internal)?;
    let z_b = draw(
        &Known {
            latent: z_a.clone(),
            keep,
            start: 1.0,
        },
        req.opts.seed,
    )?;
    let x_b = m.vae.decode_tokens(&z_b, g, g).map_err(internal)?;

    // 3. The new object's visible mask.
    let front = in_front_of(placed.graph(), new, false);
    let seen_b = segment(&rgb(&x_b)?, size, size, &all);
    let mask: Vec<bool> = (0..size * size)
        .map(|q| seen_b[q] == Some(new) && in_box[q] && !seen_a[q].is_some_and(|k| front[k]))
        .collect();
    if !mask.iter().any(|&b| b) {
        return Err(user(format!(
            "the model drew nothing the segmenter reads as {:?} in its box; try another --seed or a larger box",
            captions[new]
        )));
    }

    // 4. The latent composite, refined where the object is.
    let mask_t = Tensor::from_vec(
        mask.iter()
            .map(|&b| f32::from(u8::from(b)))
            .collect::<Vec<f32>>(),
        (1, 1, size, size),
        dev,
    )
    .map_err(internal)?;
    let (za, zb) = (
        to_grid(&z_a, g).map_err(internal)?,
        to_grid(&z_b, g).map_err(internal)?,
    );
    let blended = match dec {
        Some(d) => d.forward(&za, &zb, &mask_t, 1.0).map(|b| b.z),
        None => DecFormer::linear_blend(&za, &zb, &mask_t, factor),
    }
    .and_then(|z| to_tokens(&z))
    .map_err(internal)?;
    let seam_l1 = seam_error(p, &[&z_a, &blended], &x_b, &mask_t, &mask).map_err(internal)?;
    let z = if req.refine > 0.0 {
        let near = dilate(&mask, (size, size), factor);
        let keep = keep_tokens(&near, size, g, dev).map_err(internal)?;
        draw(
            &Known {
                latent: blended,
                keep,
                start: req.refine,
            },
            req.opts.seed.wrapping_add(1),
        )?
    } else {
        blended
    };
    let x = m.vae.decode_tokens(&z, g, g).map_err(internal)?;

    // 5. Back at the input's size, pasted within the band only.
    let drawn = crate::output::at_canvas(&x, Some((w, h)))
        .map_err(internal)?
        .remove(0);
    let soft = |bits: &dyn Fn(usize) -> bool| -> Vec<f32> {
        let plane: Vec<f32> = (0..size * size)
            .map(|q| f32::from(u8::from(bits(q))))
            .collect();
        bilinear(&plane, (size, size), (w, h))
    };
    // Within its box at the image's size too: enlarging spreads a model pixel's edge.
    let box_big = box_pixels(scene, scene.instances[new].bbox, (w, h));
    let new_mask: Vec<f32> = soft(&|q| mask[q])
        .into_iter()
        .enumerate()
        .map(|(q, a)| if box_big[q] { a } else { 0.0 })
        .collect();
    let inside: Vec<bool> = new_mask.iter().map(|&a| a > 0.0).collect();
    let weight = feather(&inside, (w, h), req.band);
    let image = paste(req.image, &drawn, &weight);
    let band = weight.iter().map(|&b| b > 0.0).collect();
    let visible = (0..scene.instances.len())
        .map(|k| {
            if k == new {
                new_mask.clone()
            } else {
                soft(&|q| seen_a[q] == Some(k) && !mask[q])
            }
        })
        .collect();
    Ok(Inserted {
        image,
        scene: placed,
        visible,
        band,
        notes,
        seam_l1,
    })
}

/// [`Inserted::seam_l1`]: `[z_A, ẑ]` as tokens, D(z_B) as `x_b`, M as a tensor and as bits.
fn seam_error(
    p: &Pipeline,
    [z_a, blended]: &[&Tensor; 2],
    x_b: &Tensor,
    mask_t: &Tensor,
    mask: &[bool],
) -> candle_core::Result<f64> {
    let (size, vae) = (p.model.size, &p.model.vae);
    let g = size / vae.cfg.factor();
    let x_star = crate::pelc::pixel_composite(&vae.decode_tokens(z_a, g, g)?, x_b, mask_t)?;
    let got = vae.decode_tokens(blended, g, g)?;
    // Images are in [−1, 1]: half the mean absolute difference over channels is in [0, 1].
    let err: Vec<f64> = ((got - x_star)?.abs()?.mean(1)? / 2.0)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect();
    Ok(
        zlayer_metrics::boundary::halo_l1(&err, mask, size, size, crate::pelc::eval::EDGE_PX)
            .unwrap_or(0.0),
    )
}
