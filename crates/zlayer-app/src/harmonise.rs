//! `zlayer recompose --harmonise`: what an edit revealed, redrawn by a short denoise.
//!
//! An edited stack composites exactly, but what a move, hide or re-order reveals (a hidden
//! part of a layer or of the plate) was never seen: the layers only guessed it, and it meets
//! the pixels around it at a seam. Harmonising encodes the exact recomposite (the pixel
//! composite, which PELC's DecFormer can only approximate from latents, is at hand here),
//! noises it to a flow time, and denoises it with the scene's prompt, keeping the latent
//! (velocity re-targeting, [`Known`]) on every token away from the revealed pixels. The
//! result replaces the recomposite there and fades out over a band: every pixel farther than
//! the band from a revealed one is the exact recomposite, bit for bit.

use crate::insert::{Drawer, dilate, feather, keep_tokens, paste, to_tensor, validated};
use crate::method::{Method, SceneSampler};
use crate::pipeline::{Pipeline, model_captions, scene_prompt};
use crate::{Failure, internal, user};
use std::collections::HashSet;
use zlayer_composite::{Image, Straight};
use zlayer_model::base::SampleOptions;
use zlayer_model::inpaint::Known;
use zlayer_scene::Scene;

/// What to harmonise, and how.
pub struct HarmoniseRequest<'a> {
    /// The exact recomposite, at the canvas size.
    pub image: &'a Image<Straight>,
    /// The canvas pixels to redraw ([`revealed`]).
    pub redraw: &'a [bool],
    /// The edited scene: its prompt, captions and (with a branch) boxes and order condition
    /// the denoise.
    pub scene: &'a Scene,
    /// What denoises: a trained branch (boxes and order), or the base alone (the prompt).
    pub method: Method,
    /// Fraction of the steps that run the branch (else the model file's).
    pub grounding_ratio: Option<f64>,
    /// Steps, guidance and seed.
    pub opts: SampleOptions,
    /// The flow time the denoise starts at, in (0, 1]: higher redraws more.
    pub refine: f64,
    /// Half-width in canvas pixels of the band around the redrawn pixels over which the
    /// model's pixels fade into the recomposite.
    pub band: usize,
    /// Refuse captions outside the tiny model's vocabulary.
    pub strict: bool,
}

/// What harmonising made.
pub struct Harmonised {
    /// The image, at the canvas size.
    pub image: Image<Straight>,
    /// The pixels that took the model's output (the redrawn ones and their band).
    pub band: Vec<bool>,
    /// What was changed to fit the tiny model, one line each.
    pub notes: Vec<String>,
}

/// What an edit revealed: the canvas pixels that now show a layer pixel that no pixel
/// showed before it, from [`crate::recompose::Layered::shown`] before and after the edit.
/// A pixel that nothing covers any more counts too.
pub fn revealed(before: &[Option<(usize, usize)>], after: &[Option<(usize, usize)>]) -> Vec<bool> {
    let seen: HashSet<(usize, usize)> = before.iter().flatten().copied().collect();
    after
        .iter()
        .zip(before)
        .map(|(a, b)| match a {
            Some(x) => !seen.contains(x),
            None => b.is_some(),
        })
        .collect()
}

/// Harmonises `req.image` where `req.redraw` says, with `p`'s base model.
pub fn harmonise(p: &Pipeline, req: &HarmoniseRequest) -> Result<Harmonised, Failure> {
    let (w, h) = (req.image.width, req.image.height);
    if req.redraw.len() != w * h {
        return Err(internal(format!(
            "redraw mask of {} pixels for a {w}×{h} image",
            req.redraw.len()
        )));
    }
    if !(req.refine > 0.0 && req.refine <= 1.0) {
        return Err(user(format!(
            "--refine {}: harmonising needs a flow time in (0, 1], e.g. 0.3",
            req.refine
        )));
    }
    let mut notes = Vec::new();
    if !req.redraw.iter().any(|&s| s) {
        notes.push("the edit revealed nothing the layers had hidden: nothing to harmonise".into());
        return Ok(Harmonised {
            image: req.image.clone(),
            band: vec![false; w * h],
            notes,
        });
    }
    let m = &p.model;
    let dev = &p.dev;
    let (size, factor) = (m.size, m.vae.cfg.factor());
    let g = size / factor;
    let valid = validated(req.scene.clone())?;
    let captions = model_captions(&valid, &m.base.tokenizer, req.strict, &mut notes)?;
    let prompt = if req.scene.prompt.trim().is_empty() {
        zlayer_synth::sample::prompt(&captions, false, zlayer_synth::vocab::Background::Plain)
    } else {
        scene_prompt(&valid, &captions, &m.base.tokenizer, &mut notes)
    };
    let sampler = SceneSampler::for_method(&p.dir, req.method, m.base.clone(), dev)?;
    let drawer = Drawer::new(p, sampler, &valid, &captions, prompt)?;

    let weight = feather(req.redraw, (w, h), req.band);
    // The model pixels whose footprint on the canvas reaches the band, and one more around
    // them, so the VAE's neighbourhood of every redrawn token is free too.
    let mut near = vec![false; size * size];
    for (q, &b) in weight.iter().enumerate() {
        if b > 0.0 {
            let (x, y) = ((q % w) * size / w, (q / w) * size / h);
            near[y * size + x] = true;
        }
    }
    let near = dilate(&near, (size, size), 1);
    let small = if (w, h) == (size, size) {
        req.image.clone()
    } else {
        req.image.shrunk(size, size)
    };
    let z = to_tensor(&small, dev)
        .and_then(|x| m.vae.encode_tokens(&x))
        .map_err(internal)?;
    let keep = keep_tokens(&near, size, g, dev).map_err(internal)?;
    let known = Known {
        latent: z,
        keep,
        start: req.refine,
    };
    let z = drawer.draw(&known, &req.opts, req.grounding_ratio)?;
    let x = m.vae.decode_tokens(&z, g, g).map_err(internal)?;
    let drawn = crate::output::at_canvas(&x, Some((w, h)))
        .map_err(internal)?
        .remove(0);
    Ok(Harmonised {
        image: paste(req.image, &drawn, &weight),
        band: weight.iter().map(|&b| b > 0.0).collect(),
        notes,
    })
}
