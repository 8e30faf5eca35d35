//! `zlayer generate`: images from a prompt with the tiny model.

use crate::cli::Failure;
use crate::scene_sampler::SceneSampler;
use candle_core::{Device, Tensor};
use clap::Args;
use std::path::{Path, PathBuf};
use zlayer_composite::{BitDepth, Image, Straight, write_png};
use zlayer_model::base::{BaseModel, SampleOptions};
use zlayer_model::bundle::{VaeBundle, load_base, load_vae};
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
    /// Model folder with vae.safetensors and base.safetensors (and their .json), or
    /// `flux-dev` for FLUX.1-dev weights given with --weights (docs/flux-dev.md).
    #[arg(long, default_value = "models/tiny")]
    pub(crate) model: PathBuf,
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

/// A grounding ratio: a number in [0, 1].
pub fn ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "{s:?}: a fraction of the steps, from 0 (base model only) to 1 (every step)"
        )),
    }
}

/// Runs the command.
pub fn run(a: GenerateArgs) -> Result<(), Failure> {
    let start = std::time::Instant::now();
    if a.model.as_os_str() == "flux-dev" {
        return crate::generate_flux::run(&a, start);
    }
    if let Some(flag) = a.flux_only() {
        return Err(Failure::User(format!(
            "{flag} is for --model flux-dev; the tiny model in {} needs none",
            a.model.display()
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

/// The process's peak resident memory in MB (Linux's VmHWM; `None` elsewhere).
pub(crate) fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
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
    let loaded = crate::scene_cmd::load(path)?;
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
        let out = crate::layers_out::InstanceLayers {
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

/// The tiny model: VAE, base, and the image side they were trained at.
pub struct Model {
    /// The autoencoder.
    pub vae: VaeBundle,
    /// The text-to-image model.
    pub base: BaseModel,
    /// Image side in pixels.
    pub size: usize,
    /// base.json: the configs, how the base was trained, tuned settings (null if unreadable).
    pub meta: serde_json::Value,
}

impl Model {
    /// Loads `DIR/vae.safetensors` and `DIR/base.safetensors` with their JSON.
    pub fn load(dir: &Path, dev: &Device) -> Result<Self, Failure> {
        let (vae_path, base_path) = (dir.join("vae.safetensors"), dir.join("base.safetensors"));
        for p in [&vae_path, &base_path] {
            if !p.is_file() {
                return Err(Failure::User(format!(
                    "{}: no such model file; train one with `zlayer train vae` and `zlayer train base`, or pass --model DIR",
                    p.display()
                )));
            }
        }
        let vae = load_vae(&vae_path, dev).map_err(Failure::User)?;
        let base = load_base(&base_path, dev).map_err(Failure::User)?;
        let meta = std::fs::read_to_string(base_path.with_extension("json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .unwrap_or_default();
        let size = meta["image_size"].as_u64().unwrap_or(64) as usize;
        Ok(Self {
            vae,
            base,
            size,
            meta,
        })
    }

    /// Guidance when none is asked for: base.json's tuned `guidance`, else 1 (off).
    pub fn guidance(&self) -> f64 {
        self.meta["guidance"].as_f64().unwrap_or(1.0)
    }

    /// Images (B, 3, S, S) in [−1, 1], one per row of prompt ids.
    pub fn generate(&self, ids: &Tensor, opts: &SampleOptions) -> candle_core::Result<Tensor> {
        let g = self.size / self.vae.cfg.factor();
        let tokens = self.base.sample(ids, (g, g), self.vae.cfg.latent, opts)?;
        self.vae.decode_tokens(&tokens, g, g)
    }
}

/// Images (B, 3, S, S) in [−1, 1] as 8-bit RGB pixel rows, one `Vec` per image.
pub fn to_rgb8(images: &Tensor) -> candle_core::Result<Vec<Vec<[u8; 3]>>> {
    let (b, _, h, w) = images.dims4()?;
    let v: Vec<f32> = images.flatten_all()?.to_vec1()?;
    let q = |x: f32| ((x + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
    Ok((0..b)
        .map(|k| {
            (0..h * w)
                .map(|p| [0, 1, 2].map(|c| q(v[(k * 3 + c) * h * w + p])))
                .collect()
        })
        .collect())
}

/// 8-bit RGB pixels as an opaque image.
pub fn rgb_image(pixels: &[[u8; 3]], width: usize, height: usize) -> Image<Straight> {
    Image {
        width,
        height,
        pixels: pixels
            .iter()
            .map(|p| {
                let c = p.map(|v| v as f32 / 255.0);
                Straight([c[0], c[1], c[2], 1.0])
            })
            .collect(),
    }
}

/// Images (B, 3, H, W) in [−1, 1] as opaque images, resized to `canvas` (width, height)
/// when given.
pub fn at_canvas(
    images: &Tensor,
    canvas: Option<(usize, usize)>,
) -> candle_core::Result<Vec<Image<Straight>>> {
    let (_, _, h, w) = images.dims4()?;
    Ok(to_rgb8(images)?
        .iter()
        .map(|px| {
            let img = rgb_image(px, w, h);
            match canvas {
                Some((cw, ch)) if (cw, ch) != (w, h) => img.resized(cw, ch),
                _ => img,
            }
        })
        .collect())
}

/// Images of one size side by side.
fn row(images: &[Image<Straight>]) -> Image<Straight> {
    let (w, h) = images.first().map_or((0, 0), |i| (i.width, i.height));
    let n = images.len();
    let mut out = Image::<Straight>::new(n * w, h);
    for (k, img) in images.iter().enumerate() {
        for (p, px) in img.pixels.iter().enumerate() {
            out.pixels[(p / w) * n * w + k * w + p % w] = *px;
        }
    }
    out
}
