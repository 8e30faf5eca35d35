//! `zlayer recompose`: re-order, move or hide the instance layers of a layered file.

use clap::Args;
use std::path::PathBuf;
use zlayer_app::Failure;
use zlayer_app::recompose::{Edit, Layered, Recolour};
use zlayer_composite::BitDepth;

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
    layered.apply(&edit)?;
    let ext = a
        .output
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "png" => zlayer_composite::write_png(&a.output, &layered.composite(), BitDepth::Eight)
            .map_err(user)?,
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
