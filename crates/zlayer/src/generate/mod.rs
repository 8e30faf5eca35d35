//! `zlayer generate`: images from a prompt with the tiny model.

use crate::args::ratio;
use zlayer_app::model::Model;
use zlayer_app::model::ModelDir;
use zlayer_app::output::{at_canvas, peak_rss_mb, row};
pub mod flux;

use candle_core::{Device, Tensor};
use clap::Args;
use std::path::{Path, PathBuf};
use zlayer_app::Failure;
use zlayer_app::method::SceneSampler;
use zlayer_composite::{BitDepth, write_png};
use zlayer_model::base::SampleOptions;
use zlayer_synth::vocab::{Background, Colour, Fitted, Look, Shape};

/// Flags of `zlayer generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A scene (any importable format): boxes, captions and Z-order for the layout branch.
    /// It is validated first; a rejected scene never reaches the model.
    pub(crate) scene: Option<PathBuf>,
    /// The global prompt, in the model's vocabulary (see `zlayer synth --vocab`); with a
    /// scene, defaults to the scene's prompt.
    #[arg(long, required_unless_present = "scene")]
    pub(crate) prompt: Option<String>,
    /// Fraction of the sampling steps that run the layout branch (default: the model
    /// file's tuned `grounding_ratio`, else the official 0.3; see docs/layout.md).
    #[arg(long, value_parser = ratio)]
    pub(crate) grounding_ratio: Option<f64>,
    /// Output PNG (a row of --n samples).
    #[arg(short, long)]
    pub(crate) output: PathBuf,
    /// Model folder with vae.safetensors and base.safetensors (and their .json); `bundled`,
    /// the built-in models/tiny, which goes wherever the binary goes; or `flux-dev` for
    /// FLUX.1-dev weights given with --weights (docs/flux-dev.md).
    #[arg(long, default_value = ModelDir::BUNDLED, value_parser = ModelDir::parse)]
    pub(crate) model: ModelDir,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Euler steps [default: 20; 28 for flux-dev].
    #[arg(long)]
    pub(crate) steps: Option<usize>,
    /// Guidance: classifier-free for the tiny model [default: the model's tuned `guidance`
    /// in base.json, else 1 (off); see docs/model.md]; FLUX.1-dev's distilled guidance for
    /// flux-dev [default: 3.5].
    #[arg(long)]
    pub(crate) guidance: Option<f64>,
    /// flux-dev: the FLUX.1-dev download (flux1-dev.safetensors or transformer/,
    /// ae.safetensors, text_encoder/, text_encoder_2/, tokenizer_2/).
    #[arg(long)]
    pub(crate) weights: Option<PathBuf>,
    /// flux-dev: the official OcclusionFormer checkpoint, in any published form
    /// (`lora.safetensors,occ.pth`, or `bundle_weights.safetensors`); without it the scene's
    /// boxes and order are not used.
    #[arg(long, value_delimiter = ',')]
    pub(crate) occlusionformer: Vec<PathBuf>,
    /// flux-dev: T5's tokenizer.json [default: WEIGHTS/tokenizer_2/tokenizer.json].
    #[arg(long)]
    pub(crate) t5_tokenizer: Option<PathBuf>,
    /// flux-dev: CLIP-L's tokenizer.json [default: WEIGHTS/tokenizer/tokenizer.json; FLUX.1-dev
    /// ships none, openai/clip-vit-large-patch14 does].
    #[arg(long)]
    pub(crate) clip_tokenizer: Option<PathBuf>,
    /// flux-dev: where to run: cuda (bf16; a build with `--features cuda`) or cpu (f32)
    /// [default: cuda when built with it, else cpu].
    #[arg(long)]
    pub(crate) device: Option<String>,
    /// Number of samples.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) n: u32,
    /// With a scene, the method that draws it: occlusionformer (the bundled branch), a
    /// baseline or ablation trained into MODEL/variants/NAME (global, global-rank, …), or
    /// larender (training-free).
    #[arg(long, default_value = "occlusionformer", requires = "scene")]
    variant: String,
    /// With a scene: write each instance's predicted amodal mask (alignment head,
    /// `mask-K.png`) and its share of the Z-order composition (`weight-K.png`) here, for the
    /// first sample, at the last grounded step.
    #[arg(long, requires = "scene")]
    layers: Option<PathBuf>,
    /// With a scene: write the first sample as an OpenRaster file (GIMP, Krita): the image,
    /// each instance cut out by its composition share (back to front), and the masks hidden.
    #[arg(long, requires = "scene")]
    ora: Option<PathBuf>,
    /// With a scene: write the model's native size (64 or 128 px) instead of upscaling the
    /// image, the maps and the layers to the scene's canvas.
    #[arg(long, requires = "scene")]
    native: bool,
    /// With a scene: refuse captions outside the tiny model's vocabulary instead of drawing
    /// the words it knows (e.g. "black cat" as "black disk").
    #[arg(long, requires = "scene")]
    strict: bool,
}

impl GenerateArgs {
    /// A flux-dev flag given to the tiny model, if any.
    fn flux_only(&self) -> Option<&'static str> {
        [
            (self.weights.is_some(), "--weights"),
            (!self.occlusionformer.is_empty(), "--occlusionformer"),
            (self.t5_tokenizer.is_some(), "--t5-tokenizer"),
            (self.clip_tokenizer.is_some(), "--clip-tokenizer"),
            (self.device.is_some(), "--device"),
        ]
        .into_iter()
        .find_map(|(given, f)| given.then_some(f))
    }
}

/// Runs the command.
pub fn run(a: GenerateArgs) -> Result<(), Failure> {
    let start = std::time::Instant::now();
    if a.model.is_named("flux-dev") {
        return flux::run(&a, start);
    }
    if let Some(flag) = a.flux_only() {
        return Err(Failure::User(format!(
            "{flag} is for --model flux-dev; the tiny model {} needs none",
            a.model.name()
        )));
    }
    let dev = Device::Cpu;
    let m = Model::load(&a.model, &dev)?;
    let n = a.n as usize;
    let opts = SampleOptions {
        steps: a.steps.unwrap_or(20),
        guidance: a.guidance.unwrap_or_else(|| m.guidance()),
        seed: a.seed,
    };
    let (images, canvas) = match &a.scene {
        None => {
            let prompt = a.prompt.clone().unwrap_or_default();
            let ids = m
                .base
                .tokenizer
                .batch(&vec![prompt.as_str(); n], m.base.max_len, &dev)
                .map_err(|e| Failure::User(e.to_string()))?;
            let images = m
                .generate(&ids, &opts)
                .map_err(|e| Failure::Internal(e.to_string()))?;
            (images, None)
        }
        Some(path) => generate_scene(m, path, &a, &opts, &dev)?,
    };
    finish(&images, &a.output, canvas, start)
}

/// Writes the images side by side to `output`, each resized to `canvas` (width, height)
/// when given, and reports time and peak memory.
pub(crate) fn finish(
    images: &Tensor,
    output: &Path,
    canvas: Option<(usize, usize)>,
    start: std::time::Instant,
) -> Result<(), Failure> {
    let img = row(&at_canvas(images, canvas).map_err(|e| Failure::Internal(e.to_string()))?);
    write_png(output, &img, BitDepth::Eight).map_err(|e| Failure::User(e.to_string()))?;
    let peak = peak_rss_mb().map_or(String::new(), |mb| format!(", peak memory {mb:.0} MB"));
    eprintln!(
        "generated {} image(s) in {:.2} s{peak}; wrote {}",
        images.dim(0).unwrap_or(0),
        start.elapsed().as_secs_f64(),
        output.display()
    );
    Ok(())
}

/// The scene's prompt when the model knows its every word; otherwise, with a note, the
/// training template over the captions (front-most first) and the background the prompt
/// names (else plain). Captions carry what matters; a file written for another model often
/// words its prompt freely ("a still life of toys").
fn scene_prompt(
    scene: &zlayer_scene::ValidScene,
    captions: &[String],
    tokenizer: &zlayer_model::text::Tokenizer,
    path: &Path,
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
    eprintln!(
        "{}: the prompt's word {:?} is not in the tiny model's vocabulary; prompting with {prompt:?}, built from the captions",
        path.display(),
        why.word
    );
    prompt
}

/// Images (n, 3, S, S) for a scene, drawn by the chosen variant (for a branch, on the first
/// grounding steps only), and the canvas (width, height) to write them at (`None` with
/// `--native`).
fn generate_scene(
    m: Model,
    path: &Path,
    a: &GenerateArgs,
    opts: &SampleOptions,
    dev: &Device,
) -> Result<(Tensor, Option<(usize, usize)>), Failure> {
    let loaded = zlayer_app::scene_file::load(path)?;
    let scene = loaded.scene.scene();
    let g = m.size / m.vae.cfg.factor();
    let captions = model_captions(scene, &m.base.tokenizer, path, a.strict)?;
    let prompt = match &a.prompt {
        Some(p) => p.clone(),
        None => scene_prompt(&loaded.scene, &captions, &m.base.tokenizer, path),
    };
    let canvas = (scene.width as usize, scene.height as usize);
    let canvas = (!a.native).then_some(canvas);
    match canvas {
        Some((w, h)) if (w, h) != (m.size, m.size) => eprintln!(
            "the model draws {0}×{0} px; upscaled to the scene's {w}×{h} canvas (--native writes {0}×{0})",
            m.size
        ),
        _ => {}
    }
    let sampler = SceneSampler::by_name(&a.model, &a.variant, m.base, dev)?;
    let wants_maps = a.layers.is_some() || a.ora.is_some();
    if wants_maps && (!sampler.has_maps() || sampler.ratio(a.grounding_ratio) == Some(0.0)) {
        return Err(Failure::User(format!(
            "--layers/--ora need instance layers: the {} variant has none{}; use --variant occlusionformer",
            sampler.name(),
            if sampler.has_maps() {
                " at --grounding-ratio 0"
            } else {
                ""
            }
        )));
    }
    let n = a.n as usize;
    let mut layout = zlayer_model::layout_model::SceneLayout::from_scene(&loaded.scene, (g, g));
    for (inst, caption) in layout.instances.iter_mut().zip(&captions) {
        inst.caption = caption.clone();
    }
    let int = |e: candle_core::Error| Failure::Internal(e.to_string());
    let prompts = vec![prompt.as_str(); n];
    let base = sampler.base();
    let ids = base
        .tokenizer
        .batch(&prompts, base.max_len, dev)
        .map_err(|e| Failure::User(e.to_string()))?;
    let (tokens, maps) = sampler
        .sample(
            &ids,
            &prompts,
            &vec![layout; n],
            ((g, g), m.vae.cfg.latent),
            opts,
            a.grounding_ratio,
        )
        .map_err(|e| Failure::User(e.to_string()))?;
    let images = m.vae.decode_tokens(&tokens, g, g).map_err(int)?;
    if wants_maps {
        let Some(maps) = maps else {
            return Err(Failure::Internal(
                "the branch returned no instance maps".into(),
            ));
        };
        let k = scene.instances.len();
        let rows =
            |t: &Tensor| -> candle_core::Result<Vec<Vec<f32>>> { t.narrow(0, 0, k)?.to_vec2() };
        let first = at_canvas(&images.narrow(0, 0, 1).map_err(int)?, canvas).map_err(int)?;
        let out = zlayer_app::layers::InstanceLayers {
            image: &first[0],
            grid: g,
            masks: rows(&maps.masks).map_err(int)?,
            weights: rows(&maps.weights).map_err(int)?,
            captions: scene.instances.iter().map(|i| i.caption.clone()).collect(),
            draw_order: loaded.scene.graph().draw_order(),
        };
        if let Some(dir) = &a.layers {
            let files = out.write_dir(dir)?;
            eprintln!("wrote {} instance maps to {}", files.len(), dir.display());
        }
        if let Some(path) = &a.ora {
            out.write_ora(path)?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok((images, canvas))
}

/// Each instance's caption as the tiny model draws it. With `strict`, every caption must be
/// in its vocabulary; otherwise each is fitted to the synthetic world's grammar
/// ([`Look::fit`]) and every change is announced, one line per instance. A caption without
/// a colour takes one no other instance uses, so the objects stay apart.
fn model_captions(
    scene: &zlayer_scene::Scene,
    tokenizer: &zlayer_model::text::Tokenizer,
    path: &Path,
    strict: bool,
) -> Result<Vec<String>, Failure> {
    let given: Vec<&str> = scene.instances.iter().map(|i| i.caption.as_str()).collect();
    if strict {
        for (inst, c) in scene.instances.iter().zip(&given) {
            tokenizer.encode(c).map_err(|e| {
                Failure::User(format!("{}: instance {:?}: {e}", path.display(), inst.id))
            })?;
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
    for ((inst, c), f) in scene.instances.iter().zip(&given).zip(&fits) {
        if f.exact(c) {
            continue;
        }
        let kept = match f.kept.as_slice() {
            [] => "no word of it is known".to_string(),
            k => format!("kept {:?}", k.join(" ")),
        };
        eprintln!(
            "{}: instance {:?}: {c:?} drawn as {:?} ({kept}; the tiny model knows {colours} colours and {shapes} shapes; --model flux-dev for open vocabulary, --strict to refuse)",
            path.display(),
            inst.id,
            f.look.caption()
        );
    }
    Ok(fits.iter().map(|f| f.look.caption()).collect())
}
