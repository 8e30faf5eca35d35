//! `zlayer decompose`: an image and its scene → the background plate and an amodal RGBA
//! layer per instance, from the multi-task layer model.

use candle_core::Device;
use clap::Args;
use std::path::PathBuf;
use zlayer_app::Failure;
use zlayer_app::decompose::{DEFAULT_LAYER_MODEL, LayerModel, decompose_image, write_layers_dir};
use zlayer_app::layers::{Describe, layer_refs};
use zlayer_app::recompose::Layered;
use zlayer_composite::{BitDepth, read_png, write_png};

/// Flags of `zlayer decompose`.
#[derive(Debug, Args)]
pub struct DecomposeArgs {
    /// The image (PNG).
    image: PathBuf,
    /// Its scene (any importable format): boxes, captions and order of the instances to pull
    /// out; its canvas maps onto the image.
    #[arg(long)]
    scene: PathBuf,
    /// Folder for plate.png and layer-K.png (instance K of the scene), straight alpha, at the
    /// image's size.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The layers as OpenRaster: the plate at the bottom, the instances back to front, with
    /// the scene embedded (`zlayer recompose` reads it).
    #[arg(long)]
    ora: Option<PathBuf>,
    /// The same as a Photoshop document (GIMP, Photoshop, Krita, Photopea).
    #[arg(long)]
    psd: Option<PathBuf>,
    /// Every layer over a checkerboard, then their composite, side by side (PNG).
    #[arg(long)]
    sheet: Option<PathBuf>,
    /// The layer model: `bundled` (built in), or a folder (omni.json, omni.safetensors,
    /// vae.safetensors) as `zlayer train layers` writes it.
    #[arg(long, default_value = DEFAULT_LAYER_MODEL)]
    layer_model: PathBuf,
    /// Sampling steps [default: the model's].
    #[arg(long)]
    steps: Option<usize>,
    /// Noise seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep the model's own colours everywhere. By default, wherever a layer is visible its
    /// colours are corrected, the least that makes the layers composite back to the image
    /// (alpha and hidden parts stay the model's).
    #[arg(long)]
    raw: bool,
}

fn user(e: impl std::fmt::Display) -> Failure {
    Failure::User(e.to_string())
}

/// Runs the command.
pub fn run(a: DecomposeArgs) -> Result<(), Failure> {
    if a.out.is_none() && a.ora.is_none() && a.psd.is_none() && a.sheet.is_none() {
        return Err(user(
            "nothing to write: give --out DIR, --ora FILE, --psd FILE or --sheet FILE",
        ));
    }
    let start = std::time::Instant::now();
    let dev = Device::Cpu;
    let (lm, meta) = LayerModel::open(&a.layer_model, &dev)?;
    let image = read_png(&a.image).map_err(user)?;
    let loaded = zlayer_app::scene_file::load(&a.scene)?;
    let scene = loaded.scene.scene().clone();
    let steps = a.steps.unwrap_or(meta.steps).max(1);
    let d = decompose_image(&lm, &image, &scene, (steps, a.seed), !a.raw, &dev)
        .map_err(Failure::Internal)?;
    if let Some(note) = &d.note {
        eprintln!("{}: {note}", a.scene.display());
    }
    if let Some(dir) = &a.out {
        write_layers_dir(dir, &d.plate, &d.layers)?;
    }
    let describe = Describe {
        made_by: "decompose".into(),
        scene: scene.clone(),
        provenance: serde_json::json!({
            "layer_model": a.layer_model, "steps": steps, "seed": a.seed, "input": a.image,
            "observed": !a.raw,
        }),
    };
    let count = d.layers.len();
    let stack = d.stack(&loaded.scene, &describe);
    zlayer_app::layers::write_files(&stack, a.ora.as_deref(), a.psd.as_deref())?;
    if let Some(path) = &a.sheet {
        let refs = layer_refs(&loaded.scene.graph().draw_order());
        let layered = Layered {
            stack,
            scene,
            refs,
            provenance: serde_json::Value::Null,
        };
        let sheet = zlayer_app::output::row(&layered.sheet());
        write_png(path, &sheet, BitDepth::Eight).map_err(user)?;
        eprintln!("wrote {}", path.display());
    }
    eprintln!(
        "decomposed into a plate and {} instance layers in {:.2} s ({steps} steps)",
        count,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
