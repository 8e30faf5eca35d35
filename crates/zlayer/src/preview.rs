//! `zlayer preview`: a picture of what the user declared, before any generation
//! ([`zlayer_app::preview`]).

use std::path::Path;
use zlayer_app::Failure;
use zlayer_app::preview::draw;
use zlayer_composite::{BitDepth, write_png};

/// Runs the command.
pub fn run(file: &Path, output: &Path, size: u32) -> Result<(), Failure> {
    let loaded = zlayer_app::scene_file::load(file)?;
    let canvas = draw(&loaded.scene, size)
        .ok_or_else(|| Failure::Internal("could not allocate the preview".into()))?;
    write_png(output, &canvas.to_image(), BitDepth::Eight)
        .map_err(|e| Failure::User(e.to_string()))?;
    eprintln!(
        "wrote {} ({}×{})",
        output.display(),
        canvas.width(),
        canvas.height()
    );
    Ok(())
}
