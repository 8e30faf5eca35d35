//! `zlayer recompose`: re-order, move or hide the instance layers of a layered file.

use crate::args::{Denoise, flow_time};
use clap::Args;
use std::path::PathBuf;
use zlayer_app::Failure;
use zlayer_app::harmonise::{HarmoniseRequest, harmonise, revealed};
use zlayer_app::method::Method;
use zlayer_app::model::ModelDir;
use zlayer_app::pipeline::Pipeline;
use zlayer_app::recompose::{Edit, Layered, Recolour};
use zlayer_composite::{BitDepth, Image, Straight};
use zlayer_model::layout_model::Variant;

/// Flags of `zlayer recompose`.
#[derive(Debug, Args)]
pub struct RecomposeArgs {
    /// An .ora or .psd written by zlayer (generate --ora/--psd, insert, recompose), or a
    /// scene folder of `zlayer synth --format png` (its exact amodal layers).
    input: PathBuf,
    /// Output: .png (the composite), .ora or .psd (the edited layers, metadata updated).
    #[arg(short, long)]
    output: PathBuf,
    /// The new order: every instance id with a layer, front-most first, e.g. `cube,sphere`.
    #[arg(long, value_delimiter = ',')]
    order: Option<Vec<String>>,
    /// Take the order from an edited scene instead: its `occludes`, for the same ids.
    #[arg(long, conflicts_with = "order")]
    scene: Option<PathBuf>,
    /// Instance ids to hide (kept in the file, not drawn).
    #[arg(long, value_delimiter = ',')]
    hide: Vec<String>,
    /// Move an instance: `ID=DX,DY` in canvas pixels (repeatable).
    #[arg(long = "move", value_parser = parse_move)]
    moves: Vec<(String, i64, i64)>,
    /// Recolour an instance: `ID=COLOUR`, a colour word (its caption follows) or `#rrggbb`;
    /// shading and alpha are kept (repeatable).
    #[arg(long = "recolour", value_parser = parse_recolour)]
    recolours: Vec<(String, Recolour)>,
    /// Also write every layer over a checkerboard, bottom first, and the composite, side by
    /// side (hidden layers faded).
    #[arg(long)]
    sheet: Option<PathBuf>,
    /// Write the edited scene here (native JSON).
    #[arg(long)]
    scene_out: Option<PathBuf>,
    /// Redraw what the edit revealed (hidden parts of layers and of the plate, which the
    /// layers only guessed) by a short denoise with the scene's prompt, fading into the
    /// recomposite over --band; every other pixel stays the exact recomposite, bit for bit.
    /// Needs a .png output.
    #[arg(long)]
    harmonise: bool,
    /// The model that harmonises: a model folder, or `bundled`.
    #[arg(long, default_value = ModelDir::BUNDLED, value_parser = ModelDir::parse)]
    model: ModelDir,
    /// What denoises: a trained branch of the model (boxes and order), or `base` (the
    /// prompt alone) [default: occlusionformer where the model has it, else base].
    #[arg(long, value_parser = Method::parse)]
    variant: Option<Method>,
    /// Where the denoise starts, as a flow time in (0, 1]: higher redraws more.
    #[arg(long, default_value_t = 0.3, value_parser = flow_time)]
    refine: f64,
    /// Half-width in canvas pixels of the band over which the redrawn pixels fade into the
    /// recomposite [default: one model pixel].
    #[arg(long)]
    band: Option<usize>,
    #[command(flatten)]
    denoise: Denoise,
}

fn parse_move(s: &str) -> Result<(String, i64, i64), String> {
    let err = || format!("{s:?}: ID=DX,DY in whole pixels, e.g. sphere=40,-10");
    let (id, d) = s.split_once('=').ok_or_else(err)?;
    let (dx, dy) = d.split_once(',').ok_or_else(err)?;
    let n = |v: &str| v.trim().parse::<i64>().map_err(|_| err());
    Ok((id.to_string(), n(dx)?, n(dy)?))
}

fn parse_recolour(s: &str) -> Result<(String, Recolour), String> {
    let (id, c) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: ID=COLOUR, e.g. sphere=blue or sphere=#3366cc"))?;
    Ok((id.to_string(), Recolour::parse(c)?))
}

fn user(e: impl std::fmt::Display) -> Failure {
    Failure::User(e.to_string())
}

/// Runs the command.
pub fn run(a: RecomposeArgs) -> Result<(), Failure> {
    let mut layered = if a.input.is_dir() {
        Layered::read_synth(&a.input)?
    } else {
        Layered::read_file(&a.input)?
    };
    let order = match &a.scene {
        Some(path) => {
            let edited = zlayer_app::scene_file::load(path)?;
            let g = edited.scene.graph();
            let ids = &edited.scene.scene().instances;
            // draw_order is back first; --order is front first.
            Some(
                g.draw_order()
                    .iter()
                    .rev()
                    .map(|&k| ids[k].id.clone())
                    .collect(),
            )
        }
        None => a.order.clone(),
    };
    let edit = Edit {
        order,
        hide: a.hide.clone(),
        moves: a.moves.clone(),
        recolours: a.recolours.clone(),
    };
    let ext = a
        .output
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if a.harmonise && ext != "png" {
        return Err(user(format!(
            "{}: --harmonise changes the flat image, not the layers; write a .png (and the layers, exact, in a second run without --harmonise)",
            a.output.display()
        )));
    }
    let before = a.harmonise.then(|| layered.shown());
    layered.apply(&edit)?;
    match ext.as_str() {
        "png" => {
            let mut image = layered.composite();
            if let Some(before) = before {
                image = harmonised(&a, &layered, before, image)?;
            }
            zlayer_composite::write_png(&a.output, &image, BitDepth::Eight).map_err(user)?
        }
        "ora" => zlayer_composite::ora::write_ora(&a.output, &layered.to_stack(), BitDepth::Eight)
            .map_err(user)?,
        "psd" => zlayer_composite::psd::write_psd(&a.output, &layered.to_stack()).map_err(user)?,
        _ => {
            return Err(user(format!(
                "{}: the output's extension chooses what is written: .png, .ora or .psd",
                a.output.display()
            )));
        }
    }
    if let Some(path) = &a.sheet {
        let sheet = zlayer_app::output::row(&layered.sheet());
        zlayer_composite::write_png(path, &sheet, BitDepth::Eight).map_err(user)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &a.scene_out {
        zlayer_app::scene_file::write(path, &layered.scene)?;
        eprintln!("wrote {}", path.display());
    }
    let front: Vec<&str> = {
        let mut refs = layered.refs.clone();
        refs.sort_by_key(|r| std::cmp::Reverse(r.layer));
        refs.iter()
            .map(|r| layered.scene.instances[r.instance].id.as_str())
            .collect()
    };
    eprintln!(
        "recomposed {} instance layers (front first: {}); wrote {}",
        front.len(),
        front.join(", "),
        a.output.display()
    );
    Ok(())
}

/// The recomposite `after` with what the edit revealed redrawn (`before`: what each pixel
/// showed before it, [`Layered::shown`]).
fn harmonised(
    a: &RecomposeArgs,
    layered: &Layered,
    before: Vec<Option<(usize, usize)>>,
    after: Image<Straight>,
) -> Result<Image<Straight>, Failure> {
    let (w, h) = (after.width, after.height);
    let redraw = revealed(&before, &layered.shown());
    let pipeline = Pipeline::load(&a.model, candle_core::Device::Cpu)?;
    let size = pipeline.model.size;
    let band = a.band.unwrap_or_else(|| w.max(h).div_ceil(size));
    let opts = a.denoise.options(&pipeline.model);
    let method = a
        .variant
        .unwrap_or(if a.model.layout("occlusionformer").is_some() {
            Method::Branch(Variant::Occlusionformer)
        } else {
            Method::Base
        });
    let out = harmonise(
        &pipeline,
        &HarmoniseRequest {
            image: &after,
            redraw: &redraw,
            scene: &layered.scene,
            method,
            grounding_ratio: None,
            opts,
            refine: a.refine,
            band,
            strict: false,
        },
    )?;
    for note in &out.notes {
        eprintln!("{note}");
    }
    let shown = redraw.iter().filter(|&&b| b).count();
    let redrawn = out.band.iter().filter(|&&b| b).count();
    eprintln!(
        "harmonised with {} ({}) from flow time {}: {shown} revealed pixels, {redrawn} of {} with the band redrawn, the rest exact",
        a.model.name(),
        method.name(),
        a.refine,
        w * h
    );
    Ok(out.image)
}
