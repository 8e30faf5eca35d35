//! `zlayer generate`: images from a prompt with the tiny model.

use crate::args::{ratio, share, weight};
use zlayer_app::decompose::{
    DEFAULT_LAYER_MODEL, LayerModel, OmniMeta, decompose_image, write_layers_dir,
};
use zlayer_app::layers::Describe;
use zlayer_app::method::{BranchGuidance, Method};
use zlayer_app::model::ModelDir;
use zlayer_app::output::{at_canvas, peak_rss_mb, row};
use zlayer_app::pipeline::{Pipeline, SceneRequest};
pub mod flux;

use candle_core::{Device, Tensor};
use clap::Args;
use std::path::{Path, PathBuf};
use zlayer_app::Failure;
use zlayer_composite::{BitDepth, write_png};
use zlayer_model::base::SampleOptions;

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
    /// Layout guidance λ on the grounded steps, instead of the model file's tuned
    /// `layout_guidance` (bundled: 4): 1 takes the branch's velocity as it is and skips one
    /// base pass a step (docs/layout.md).
    #[arg(long, value_parser = weight, requires = "scene")]
    pub(crate) layout_guidance: Option<f64>,
    /// Order guidance μ on the grounded steps, instead of the model file's tuned
    /// `order_guidance` (bundled: 2): 0 skips the branch pass with the order reversed, for
    /// faster images that follow the declared order less often (docs/layout.md).
    #[arg(long, value_parser = weight, requires = "scene")]
    pub(crate) order_guidance: Option<f64>,
    /// The share of the steps, the first ones, that get the layout and order guidance,
    /// instead of the model file's `guided_ratio` (bundled: 1, every grounded step): 0.25
    /// draws an 8-instance image in about half the time, following the declared order
    /// less often (docs/layout.md).
    #[arg(long, value_parser = share, requires = "scene")]
    pub(crate) guided_ratio: Option<f64>,
    /// Output PNG (a row of --n samples).
    #[arg(short, long)]
    pub(crate) output: PathBuf,
    /// Model folder with vae.safetensors and base.safetensors (and their .json); `bundled`,
    /// the built-in models/tiny16, which goes wherever the binary goes; or `flux-dev` for
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
    #[arg(long, default_value = "occlusionformer", requires = "scene", value_parser = Method::parse)]
    variant: Method,
    /// With a scene: decompose the first sample with the layer model and write, at the
    /// scene's canvas, the background plate (`plate.png`) and each instance's amodal RGBA
    /// layer, hidden parts included (`layer-K.png`), here.
    #[arg(long, requires = "scene")]
    layers: Option<PathBuf>,
    /// With a scene: write each instance's predicted amodal mask (alignment head,
    /// `mask-K.png`) and its share of the Z-order composition (`weight-K.png`) here, for the
    /// first sample, at the last grounded step.
    #[arg(long, requires = "scene")]
    maps: Option<PathBuf>,
    /// The layer model for --layers, --ora and --psd: `bundled` (built in), a `zlayer train
    /// layers` folder, or `none`. With `none`, --ora and --psd hold cut-outs of the image by
    /// each instance's composition share, and the predicted masks hidden.
    #[arg(long, default_value = DEFAULT_LAYER_MODEL, requires = "scene")]
    layer_model: String,
    /// With a scene: write the first sample as an OpenRaster file (GIMP, Krita): the plate
    /// and the instances' layers back to front, with the scene embedded.
    #[arg(long, requires = "scene")]
    ora: Option<PathBuf>,
    /// With a scene: the same layers as a Photoshop document (.psd: GIMP, Photoshop,
    /// Krita, Photopea), names from the captions, back to front.
    #[arg(long, requires = "scene")]
    psd: Option<PathBuf>,
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
    let pipeline = Pipeline::load(&a.model, Device::Cpu)?;
    let opts = SampleOptions {
        steps: a.steps.unwrap_or(20),
        guidance: a.guidance.unwrap_or_else(|| pipeline.model.guidance()),
        seed: a.seed,
    };
    let (images, canvas) = match &a.scene {
        None => {
            let prompt = a.prompt.clone().unwrap_or_default();
            (pipeline.prompt(&prompt, a.n as usize, &opts)?, None)
        }
        Some(path) => generate_scene(&pipeline, path, &a, opts)?,
    };
    finish(&images, &a.output, canvas, start)
}

/// Images (n, 3, S, S) for a scene, drawn by the chosen method through the one pipeline,
/// and the canvas (width, height) to write them at (`None` with `--native`); writes the
/// instance maps and layers that were asked for.
fn generate_scene(
    pipeline: &Pipeline,
    path: &Path,
    a: &GenerateArgs,
    opts: SampleOptions,
) -> Result<(Tensor, Option<(usize, usize)>), Failure> {
    let loaded = zlayer_app::scene_file::load(path)?;
    let scene = loaded.scene.scene();
    let canvas = (!a.native).then_some((scene.width as usize, scene.height as usize));
    let size = pipeline.model.size;
    if let Some((w, h)) = canvas.filter(|&c| c != (size, size)) {
        eprintln!(
            "the model draws {size}×{size} px; upscaled to the scene's {w}×{h} canvas (--native writes {size}×{size})"
        );
    }
    let lm = layer_model(a)?;
    let req = SceneRequest {
        scene: &loaded.scene,
        method: a.variant,
        prompt: a.prompt.clone(),
        n: a.n as usize,
        opts,
        grounding_ratio: a.grounding_ratio,
        branch_guidance: BranchGuidance {
            layout: a.layout_guidance,
            order: a.order_guidance,
            guided: a.guided_ratio,
        },
        strict: a.strict,
        maps: a.maps.is_some() || (lm.is_none() && (a.ora.is_some() || a.psd.is_some())),
    };
    let out = pipeline.scene(&req).map_err(|e| e.in_file(path))?;
    for note in &out.notes {
        eprintln!("{}: {note}", path.display());
    }
    let provenance = serde_json::json!({
        "model": a.model, "method": a.variant, "seed": opts.seed, "steps": opts.steps,
        "guidance": opts.guidance, "grounding_ratio": a.grounding_ratio,
        "layout_guidance": a.layout_guidance, "order_guidance": a.order_guidance,
        "guided_ratio": a.guided_ratio, "prompt": out.prompt,
    });
    if req.maps {
        let mut layers = out.layers(&loaded.scene, canvas)?;
        if let Some(d) = &mut layers.describe {
            d.provenance = provenance.clone();
        }
        if let Some(dir) = &a.maps {
            let files = layers.write_dir(dir)?;
            eprintln!("wrote {} instance maps to {}", files.len(), dir.display());
        }
        if lm.is_none() {
            zlayer_app::layers::write_files(&layers.stack(), a.ora.as_deref(), a.psd.as_deref())?;
        }
    }
    if let Some((lm, meta)) = &lm {
        let first = out
            .images
            .narrow(0, 0, 1)
            .map_err(|e| Failure::Internal(e.to_string()))?;
        let image = at_canvas(&first, canvas)
            .map_err(|e| Failure::Internal(e.to_string()))?
            .remove(0);
        let d = decompose_image(
            lm,
            &image,
            scene,
            (meta.steps, opts.seed),
            true,
            &Device::Cpu,
        )
        .map_err(Failure::Internal)?;
        if let Some(note) = &d.note {
            eprintln!("{}: {note}", path.display());
        }
        if let Some(dir) = &a.layers {
            write_layers_dir(dir, &d.plate, &d.layers)?;
        }
        let mut provenance = provenance;
        provenance["layer_model"] = a.layer_model.clone().into();
        let describe = Describe {
            made_by: "generate".into(),
            scene: scene.clone(),
            provenance,
        };
        let stack = d.stack(&loaded.scene, &describe);
        zlayer_app::layers::write_files(&stack, a.ora.as_deref(), a.psd.as_deref())?;
    }
    Ok((out.images, canvas))
}

/// The layer model that --layers, --ora and --psd use; none when they are not asked for or
/// with `--layer-model none` (--ora and --psd hold cut-outs then).
fn layer_model(a: &GenerateArgs) -> Result<Option<(LayerModel, OmniMeta)>, Failure> {
    if a.layer_model == "none" {
        if a.layers.is_some() {
            return Err(Failure::User(
                "--layers needs a layer model (--layer-model DIR); --maps DIR writes the instance maps".into(),
            ));
        }
        return Ok(None);
    }
    let wanted = a.layers.is_some() || a.ora.is_some() || a.psd.is_some();
    if !wanted {
        return Ok(None);
    }
    LayerModel::open(Path::new(&a.layer_model), &Device::Cpu).map(Some)
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
