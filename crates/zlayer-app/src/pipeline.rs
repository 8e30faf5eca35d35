//! The one generation pipeline: a prompt or a validated scene in; images, instance maps and
//! layers out. The CLI's `generate` and the server call it; the evaluation protocol samples
//! batches of synthetic scenes through the same [`SceneSampler`].
//!
//! Announcements (a caption fitted to the vocabulary, a prompt rebuilt from the captions) are
//! returned as notes, not printed, so each front end shows them its own way.

use crate::layers::InstanceLayers;
use crate::method::{BranchGuidance, Method, SceneSampler};
use crate::model::{Model, ModelDir};
use crate::output::at_canvas;
use crate::{Failure, internal};
use candle_core::{Device, Tensor};
use zlayer_model::base::SampleOptions;
use zlayer_model::layout_model::{InstanceMaps, SceneLayout};
use zlayer_model::text::Tokenizer;
use zlayer_scene::ValidScene;
use zlayer_synth::vocab::{Background, Colour, Fitted, Look, Shape};

/// A loaded tiny model, ready to draw.
pub struct Pipeline {
    /// The VAE and base.
    pub model: Model,
    /// Where it came from (its branches and variants are read from there on demand).
    pub dir: ModelDir,
    /// Where the tensors live.
    pub dev: Device,
}

/// What to draw for a scene.
pub struct SceneRequest<'a> {
    /// The validated scene.
    pub scene: &'a ValidScene,
    /// What draws it.
    pub method: Method,
    /// A global prompt instead of the scene's (its words must be in the vocabulary).
    pub prompt: Option<String>,
    /// Samples.
    pub n: usize,
    /// Steps, guidance, noise seed.
    pub opts: SampleOptions,
    /// Fraction of steps that run the branch (else the model file's).
    pub grounding_ratio: Option<f64>,
    /// Layout and order guidance instead of the model file's.
    pub branch_guidance: BranchGuidance,
    /// Refuse captions outside the vocabulary instead of fitting them.
    pub strict: bool,
    /// Also return the first sample's instance maps (a branch that composes layers only).
    pub maps: bool,
}

/// A scene's instance maps for the first sample, on the token grid.
pub struct Maps {
    /// Token grid side.
    pub grid: usize,
    /// Per instance: the alignment head's mask probability.
    pub masks: Vec<Vec<f32>>,
    /// Per instance: its composition weight.
    pub weights: Vec<Vec<f32>>,
}

/// What the pipeline drew for a scene.
pub struct SceneOutput {
    /// Images (n, 3, S, S) in [−1, 1], at the model's native size.
    pub images: Tensor,
    /// The first sample's maps, when asked for.
    pub maps: Option<Maps>,
    /// The prompt the model was given.
    pub prompt: String,
    /// Each instance's caption as drawn.
    pub captions: Vec<String>,
    /// What was changed to fit the tiny model, one line each.
    pub notes: Vec<String>,
}

impl SceneOutput {
    /// The first sample at `canvas` (width, height; native when `None`) with its instance
    /// maps, named by the scene's own captions; an error when no maps were drawn.
    pub fn layers(
        &self,
        scene: &ValidScene,
        canvas: Option<(usize, usize)>,
    ) -> Result<InstanceLayers, Failure> {
        let maps = self
            .maps
            .as_ref()
            .ok_or_else(|| Failure::Internal("the branch returned no instance maps".into()))?;
        let first = self.images.narrow(0, 0, 1).map_err(internal)?;
        let image = at_canvas(&first, canvas).map_err(internal)?.remove(0);
        Ok(InstanceLayers {
            image,
            grid: maps.grid,
            masks: maps.masks.clone(),
            weights: maps.weights.clone(),
            captions: scene
                .scene()
                .instances
                .iter()
                .map(|i| i.caption.clone())
                .collect(),
            draw_order: scene.graph().draw_order(),
            describe: Some(crate::layers::Describe {
                made_by: "generate".into(),
                scene: scene.scene().clone(),
                provenance: serde_json::Value::Null,
            }),
        })
    }
}

/// The one tokenize → sample → decode path: images (B, 3, S, S) in [−1, 1] for one prompt per
/// sample, drawn by `sampler` over `layouts` (the base alone, ignoring them, when `None`),
/// and the instance maps where the method has them.
pub fn draw(
    m: &Model,
    dev: &Device,
    sampler: Option<&SceneSampler>,
    prompts: &[&str],
    layouts: &[SceneLayout],
    opts: &SampleOptions,
    ratio: Option<f64>,
) -> Result<(Tensor, Option<InstanceMaps>), Failure> {
    let base = sampler.map_or(&m.base, SceneSampler::base);
    let ids = base
        .tokenizer
        .batch(prompts, base.max_len, dev)
        .map_err(|e| Failure::User(e.to_string()))?;
    let g = m.size / m.vae.cfg.factor();
    let (tokens, maps) = match sampler {
        None => (
            base.sample(&ids, (g, g), m.vae.cfg.latent, opts)
                .map_err(internal)?,
            None,
        ),
        Some(s) => s
            .sample(
                &ids,
                prompts,
                layouts,
                ((g, g), m.vae.cfg.latent),
                opts,
                ratio,
                None,
            )
            .map_err(internal)?,
    };
    let images = m.vae.decode_tokens(&tokens, g, g).map_err(internal)?;
    Ok((images, maps))
}

impl Pipeline {
    /// Loads the tiny model in `dir`.
    pub fn load(dir: &ModelDir, dev: Device) -> Result<Self, Failure> {
        Ok(Self {
            model: Model::load(dir, &dev)?,
            dir: dir.clone(),
            dev,
        })
    }

    /// `n` images (n, 3, S, S) in [−1, 1] of a global prompt.
    pub fn prompt(&self, prompt: &str, n: usize, opts: &SampleOptions) -> Result<Tensor, Failure> {
        let prompts = vec![prompt; n];
        Ok(draw(&self.model, &self.dev, None, &prompts, &[], opts, None)?.0)
    }

    /// Draws a scene.
    pub fn scene(&self, req: &SceneRequest) -> Result<SceneOutput, Failure> {
        let m = &self.model;
        let scene = req.scene.scene();
        let mut notes = Vec::new();
        let captions = model_captions(req.scene, &m.base.tokenizer, req.strict, &mut notes)?;
        let prompt = match &req.prompt {
            Some(p) => p.clone(),
            None => scene_prompt(req.scene, &captions, &m.base.tokenizer, &mut notes),
        };
        req.branch_guidance
            .check(req.method)
            .map_err(Failure::User)?;
        let mut sampler =
            SceneSampler::for_method(&self.dir, req.method, m.base.clone(), &self.dev)?;
        if let Some(s) = sampler.as_mut() {
            s.steer(req.branch_guidance);
        }
        if req.maps {
            let has = sampler.as_ref().is_some_and(SceneSampler::has_maps);
            let zero = sampler.as_ref().and_then(|s| s.ratio(req.grounding_ratio)) == Some(0.0);
            if !has || zero {
                return Err(Failure::User(format!(
                    "--layers/--ora need instance layers: the {} variant has none{}; use --variant occlusionformer",
                    req.method,
                    if zero { " at --grounding-ratio 0" } else { "" }
                )));
            }
        }
        let g = m.size / m.vae.cfg.factor();
        let mut layout = SceneLayout::from_scene(req.scene, (g, g));
        for (inst, caption) in layout.instances.iter_mut().zip(&captions) {
            inst.caption = caption.clone();
        }
        let prompts = vec![prompt.as_str(); req.n];
        let (images, maps) = draw(
            m,
            &self.dev,
            sampler.as_ref(),
            &prompts,
            &vec![layout; req.n],
            &req.opts,
            req.grounding_ratio,
        )?;
        let k = scene.instances.len();
        let rows = |t: &Tensor| -> Result<Vec<Vec<f32>>, Failure> {
            t.narrow(0, 0, k)
                .and_then(|t| t.to_vec2())
                .map_err(internal)
        };
        let maps = match maps.filter(|_| req.maps) {
            Some(mp) => Some(Maps {
                grid: g,
                masks: rows(&mp.masks)?,
                weights: rows(&mp.weights)?,
            }),
            None => None,
        };
        Ok(SceneOutput {
            images,
            maps,
            prompt,
            captions,
            notes,
        })
    }
}

/// The scene's prompt when the model knows its every word; otherwise, with a note, the
/// training template over the fitted captions (front-most first) and the background the
/// prompt names (else plain). Captions carry what matters; a file written for another model
/// often words its prompt freely ("a still life of toys").
pub(crate) fn scene_prompt(
    scene: &ValidScene,
    captions: &[String],
    tokenizer: &Tokenizer,
    notes: &mut Vec<String>,
) -> String {
    let given = &scene.scene().prompt;
    let Err(why) = tokenizer.encode(given) else {
        return given.clone();
    };
    let levels = scene.graph().depth_levels();
    let mut order: Vec<usize> = (0..levels.len()).collect();
    order.sort_by_key(|&i| levels[i]);
    let captions: Vec<String> = order.iter().map(|&i| captions[i].clone()).collect();
    let ordered_pair = captions.len() == 2 && scene.graph().edges().next().is_some();
    let background = Background::ALL
        .iter()
        .copied()
        .find(|b| given.contains(&format!("{} background", b.name())))
        .unwrap_or(Background::Plain);
    let prompt = zlayer_synth::sample::prompt(&captions, ordered_pair, background);
    notes.push(format!(
        "the prompt's word {:?} is not in the tiny model's vocabulary; prompting with {prompt:?}, built from the captions",
        why.word
    ));
    prompt
}

/// Each instance's caption as the tiny model draws it. With `strict`, every caption must be
/// in its vocabulary; otherwise each is fitted to the synthetic world's grammar
/// ([`Look::fit`]) and every change is noted, one line per instance. A caption without a
/// colour takes one no other instance uses, so the objects stay apart.
pub(crate) fn model_captions(
    scene: &ValidScene,
    tokenizer: &Tokenizer,
    strict: bool,
    notes: &mut Vec<String>,
) -> Result<Vec<String>, Failure> {
    let instances = &scene.scene().instances;
    let given: Vec<&str> = instances.iter().map(|i| i.caption.as_str()).collect();
    if strict {
        for (inst, c) in instances.iter().zip(&given) {
            tokenizer
                .encode(c)
                .map_err(|e| Failure::User(format!("instance {:?}: {e}", inst.id)))?;
        }
        return Ok(given.iter().map(|c| c.to_string()).collect());
    }
    let mut fits: Vec<Fitted> = given.iter().map(|c| Look::fit(c, &[])).collect();
    let mut taken: Vec<Colour> = fits
        .iter()
        .filter(|f| !f.chose_colour)
        .map(|f| f.look.colour)
        .collect();
    for (f, c) in fits.iter_mut().zip(&given) {
        if f.chose_colour {
            *f = Look::fit(c, &taken);
            taken.push(f.look.colour);
        }
    }
    let (colours, shapes) = (Colour::ALL.len(), Shape::ALL.len());
    for ((inst, c), f) in instances.iter().zip(&given).zip(&fits) {
        if f.exact(c) {
            continue;
        }
        let kept = match f.kept.as_slice() {
            [] => "no word of it is known".to_string(),
            k => format!("kept {:?}", k.join(" ")),
        };
        notes.push(format!(
            "instance {:?}: {c:?} drawn as {:?} ({kept}; the tiny model knows {colours} colours and {shapes} shapes; --model flux-dev for open vocabulary, --strict to refuse)",
            inst.id,
            f.look.caption()
        ));
    }
    Ok(fits.iter().map(|f| f.look.caption()).collect())
}
