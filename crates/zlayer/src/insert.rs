//! `zlayer insert`: put a new object into an image, in front of or behind what is there.

use crate::args::{Denoise, ratio};
use candle_core::Device;
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use zlayer_app::Failure;
use zlayer_app::insert::{InsertRequest, Place, insert};
use zlayer_app::method::Method;
use zlayer_app::model::ModelDir;
use zlayer_app::pipeline::{Pipeline, SceneRequest};
use zlayer_composite::{BitDepth, Image, Straight, read_png, write_png};
use zlayer_model::base::SampleOptions;
use zlayer_model::bundle::Source;
use zlayer_model::pelc::DecFormer;
use zlayer_scene::{BBox, Instance, Scene};

/// How the new object's latent is composited into the image's.
#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
pub enum LatentBlend {
    /// DecFormer when the model has one (MODEL/pelc.safetensors or --pelc), else linear.
    Auto,
    /// The latents blended under the area-downsampled mask (what diffusers and ComfyUI do).
    Linear,
    /// DecFormer (PELC): a learned per-channel blend and residual that decode like the pixel
    /// composite, with fewer halos at the seam (docs/pelc.md).
    Pelc,
}

/// Flags of `zlayer insert`.
#[derive(Debug, Args)]
pub struct InsertArgs {
    /// The image to insert into (PNG). Without it, the --scene is generated first.
    image: Option<PathBuf>,
    /// The image's scene (any importable format): its canvas maps onto the image, its ids
    /// are what --behind and --in-front-of name, and its order decides what hides the new
    /// object.
    #[arg(long, required_unless_present = "image")]
    scene: Option<PathBuf>,
    /// What to insert, e.g. "red sphere" (fitted to the tiny model's vocabulary unless
    /// --strict).
    #[arg(long)]
    caption: String,
    /// Its amodal box `x1,y1,x2,y2` in the scene's canvas pixels (the image's without a
    /// scene).
    #[arg(long = "box", value_parser = parse_box, allow_hyphen_values = true)]
    bbox: BBox,
    /// The new instance's id [default: the first free of "new", "new-2", …].
    #[arg(long)]
    id: Option<String>,
    /// Put it just behind this instance (and whatever is in front of that one).
    #[arg(long, conflicts_with = "in_front_of", requires = "scene")]
    behind: Option<String>,
    /// Put it just in front of this instance (behind whatever is in front of that one).
    #[arg(long, requires = "scene")]
    in_front_of: Option<String>,
    /// Output PNG, at the input's size.
    #[arg(short, long)]
    output: PathBuf,
    /// Write the scene with the new instance and its order here (native JSON).
    #[arg(long)]
    scene_out: Option<PathBuf>,
    /// Write the result as an OpenRaster file: the image, then each instance's visible
    /// cut-out, back to front.
    #[arg(long)]
    ora: Option<PathBuf>,
    /// The same layers as a Photoshop document (.psd), for GIMP and Photoshop.
    #[arg(long)]
    psd: Option<PathBuf>,
    /// Write the input, the result and the redrawn band (white) side by side here.
    #[arg(long)]
    show: Option<PathBuf>,
    /// Model folder, or `bundled`.
    #[arg(long, default_value = ModelDir::BUNDLED, value_parser = ModelDir::parse)]
    model: ModelDir,
    /// What draws the new object: occlusionformer (the model's branch), another trained
    /// variant, or base (the base model alone, no boxes).
    #[arg(long, default_value = "occlusionformer", value_parser = Method::parse)]
    variant: Method,
    /// How the new object's latent is composited into the image's.
    #[arg(long, value_enum, default_value_t = LatentBlend::Auto)]
    latent_blend: LatentBlend,
    /// A trained DecFormer (pelc.safetensors with its .json) [default: MODEL/pelc.safetensors].
    #[arg(long)]
    pelc: Option<PathBuf>,
    /// Where the refinement of the composite starts, as a flow time (0: no refinement;
    /// higher redraws more of the new object).
    #[arg(long, default_value_t = 0.4, value_parser = ratio)]
    refine: f64,
    /// Half-width in output pixels of the band around the new object that takes the
    /// model's pixels; everything outside is the input, bit for bit [default: 2 model pixels].
    #[arg(long)]
    band: Option<usize>,
    #[command(flatten)]
    denoise: Denoise,
    /// Fraction of the steps that run the layout branch [default: the model file's].
    #[arg(long, value_parser = ratio)]
    grounding_ratio: Option<f64>,
    /// Refuse captions outside the tiny model's vocabulary instead of fitting them.
    #[arg(long)]
    strict: bool,
}

fn parse_box(s: &str) -> Result<BBox, String> {
    let v: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{s:?}: four numbers x1,y1,x2,y2 in pixels, e.g. 100,120,260,300"))?;
    match v[..] {
        [x1, y1, x2, y2] if x2 > x1 && y2 > y1 => Ok(BBox::new(x1, y1, x2, y2)),
        [_, _, _, _] => Err(format!("{s:?}: x2 must exceed x1 and y2 exceed y1")),
        _ => Err(format!("{s:?}: four numbers x1,y1,x2,y2, not {}", v.len())),
    }
}

fn user(e: impl std::fmt::Display) -> Failure {
    Failure::User(e.to_string())
}

/// Whether a PNG file stores 16 bits per sample (the IHDR's bit depth, byte 24).
fn sixteen_bit(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.len() > 24 && b[24] == 16)
}

/// The DecFormer that `--latent-blend` and `--pelc` ask for, and a line saying which.
fn blender(a: &InsertArgs, dev: &Device) -> Result<(Option<DecFormer>, String), Failure> {
    let found = a.pelc.clone().map(Source::File).or_else(|| a.model.pelc());
    match (a.latent_blend, found) {
        (LatentBlend::Linear, _) => Ok((None, "linear".into())),
        (_, Some(src)) => {
            let (dec, _) = zlayer_app::pelc::load(&src, dev)?;
            Ok((Some(dec), format!("DecFormer ({})", src.name())))
        }
        (LatentBlend::Pelc, None) => Err(user(format!(
            "--latent-blend pelc: {} has no pelc.safetensors; train one with `zlayer train pelc --vae MODEL/vae.safetensors --out DIR` and pass --pelc DIR/pelc.safetensors",
            a.model.name()
        ))),
        (LatentBlend::Auto, None) => Ok((
            None,
            format!("linear ({} has no DecFormer; see --pelc)", a.model.name()),
        )),
    }
}

/// Runs the command.
pub fn run(a: InsertArgs) -> Result<(), Failure> {
    let start = std::time::Instant::now();
    let dev = Device::Cpu;
    let pipeline = Pipeline::load(&a.model, dev.clone())?;
    let (dec, blend) = blender(&a, &dev)?;
    let opts = a.denoise.options(&pipeline.model);
    let loaded = a
        .scene
        .as_deref()
        .map(zlayer_app::scene_file::load)
        .transpose()?;
    let image = match (&a.image, &loaded) {
        (Some(path), _) => read_png(path).map_err(user)?,
        (None, Some(l)) => generated(&pipeline, l, &a, opts)?,
        (None, None) => unreachable!("clap requires an image or a scene"),
    };
    let scene = match &loaded {
        Some(l) => l.scene.scene().clone(),
        None => Scene {
            width: image.width as u32,
            height: image.height as u32,
            seed: None,
            prompt: String::new(),
            caption: None,
            instances: Vec::new(),
        },
    };
    let id = a.id.clone().unwrap_or_else(|| {
        (1..)
            .map(|k| {
                if k == 1 {
                    "new".to_string()
                } else {
                    format!("new-{k}")
                }
            })
            .find(|id| scene.index_of(id).is_none())
            .expect("an unused id")
    });
    let place = match (&a.behind, &a.in_front_of) {
        (Some(id), _) => Place::Behind(id.clone()),
        (_, Some(id)) => Place::InFrontOf(id.clone()),
        _ => Place::Top,
    };
    let size = pipeline.model.size;
    let band = a
        .band
        .unwrap_or_else(|| (2 * image.width.max(image.height)).div_ceil(size));
    let req = InsertRequest {
        image: &image,
        scene: &scene,
        instance: Instance {
            id: id.clone(),
            caption: a.caption.clone(),
            category: None,
            bbox: a.bbox,
            mask: None,
            occludes: Vec::new(),
            opacity: None,
        },
        place,
        method: a.variant,
        opts,
        grounding_ratio: a.grounding_ratio,
        refine: a.refine,
        band,
        strict: a.strict,
    };
    let out = insert(&pipeline, dec.as_ref(), &req)?;
    for note in &out.notes {
        eprintln!("{note}");
    }
    let depth = if a.image.as_deref().is_some_and(sixteen_bit) {
        BitDepth::Sixteen
    } else {
        BitDepth::Eight
    };
    write_png(&a.output, &out.image, depth).map_err(user)?;
    let s = out.scene.scene();
    let g = out.scene.graph();
    let new = s.instances.len() - 1;
    let names = |ks: &[usize]| -> String {
        let v: Vec<&str> = ks.iter().map(|&k| s.instances[k].id.as_str()).collect();
        if v.is_empty() {
            "nothing".into()
        } else {
            v.join(", ")
        }
    };
    let changed = out.band.iter().filter(|&&b| b).count();
    eprintln!(
        "inserted {:?} as {id:?}: behind {}, in front of {}; latent blend {blend}, {:.4} from the pixel composite within 8 model px of the edge; {changed} of {} pixels within {band} px of it redrawn, the rest kept bit for bit",
        a.caption,
        names(g.occluders(new)),
        names(g.occludees(new)),
        out.seam_l1,
        image.width * image.height,
    );
    if let Some(path) = &a.show {
        let mut band = Image::new(image.width, image.height);
        for (px, &b) in band.pixels.iter_mut().zip(&out.band) {
            let v = if b { 1.0 } else { 0.0 };
            *px = Straight([v, v, v, 1.0]);
        }
        let side = zlayer_app::output::row(&[image.clone(), out.image.clone(), band]);
        write_png(path, &side, BitDepth::Eight).map_err(user)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &a.scene_out {
        zlayer_app::scene_file::write(path, s)?;
        eprintln!("wrote {}", path.display());
    }
    if a.ora.is_some() || a.psd.is_some() {
        let captions: Vec<String> = s.instances.iter().map(|i| i.caption.clone()).collect();
        let describe = zlayer_app::layers::Describe {
            made_by: "insert".into(),
            scene: s.clone(),
            provenance: serde_json::json!({
                "model": a.model, "method": a.variant, "seed": a.denoise.seed, "steps": a.denoise.steps,
                "refine": a.refine, "band": band, "latent_blend": blend, "seam_l1": out.seam_l1, "input": a.image,
            }),
        };
        let stack = zlayer_app::layers::cutouts(
            &out.image,
            "image",
            &out.visible,
            &captions,
            &g.draw_order(),
            Some(&describe),
        );
        zlayer_app::layers::write_files(&stack, a.ora.as_deref(), a.psd.as_deref())?;
    }
    eprintln!(
        "done in {:.2} s; wrote {}",
        start.elapsed().as_secs_f64(),
        a.output.display()
    );
    Ok(())
}

/// The scene drawn first when no image is given, at its canvas size.
fn generated(
    p: &Pipeline,
    loaded: &zlayer_scene::Loaded,
    a: &InsertArgs,
    opts: SampleOptions,
) -> Result<Image<Straight>, Failure> {
    let s = loaded.scene.scene();
    let req = SceneRequest {
        scene: &loaded.scene,
        method: a.variant,
        prompt: None,
        n: 1,
        opts,
        grounding_ratio: a.grounding_ratio,
        branch_guidance: Default::default(),
        strict: a.strict,
        maps: false,
    };
    let out = p.scene(&req)?;
    eprintln!(
        "no image given: generated the scene first (seed {})",
        opts.seed
    );
    Ok(
        zlayer_app::output::at_canvas(&out.images, Some((s.width as usize, s.height as usize)))
            .map_err(|e| Failure::Internal(e.to_string()))?
            .remove(0),
    )
}
