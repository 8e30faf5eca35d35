//! `validate` and `convert`, and reading a scene file with errors that name it.

use crate::args::Target;
use std::io::Write;
use std::path::Path;
use zlayer_app::Failure;
use zlayer_app::scene_file::{load, load_quiet, render, valid_json};
use zlayer_composite::atomic_write;
use zlayer_scene::{Format, export};

/// `zlayer validate`.
pub fn validate(file: &Path, json: bool) -> Result<(), Failure> {
    if !json {
        let l = load(file)?;
        let s = l.scene.scene();
        let g = l.scene.graph();
        let native = export(s, Format::Native).map_err(|e| Failure::Internal(e.to_string()))?;
        crate::args::print_stdout(&native)?;
        eprintln!(
            "{}: valid {} scene, {}×{}, {} instances, {} depth levels, {} occlusion relations, {} unordered pairs",
            file.display(),
            l.format,
            s.width,
            s.height,
            s.instances.len(),
            g.level_count(),
            g.edges().count(),
            g.unordered_pairs().len(),
        );
        return Ok(());
    }
    let (value, ok) = match load_quiet(file) {
        Ok(l) => {
            let mut v = valid_json(&l);
            v["file"] = file.display().to_string().into();
            (v, true)
        }
        Err(e) => (
            serde_json::json!({"ok": false, "file": file.display().to_string(), "diagnostics": e.diagnostics}),
            false,
        ),
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&value).expect("JSON values print")
    );
    if ok {
        Ok(())
    } else {
        Err(Failure::User(format!("{}: invalid scene", file.display())))
    }
}

/// `zlayer convert`.
pub fn convert(file: &Path, to: Target, output: Option<&Path>) -> Result<(), Failure> {
    let l = load(file)?;
    let format = match to {
        Target::Native => Format::Native,
        Target::Occlusionformer => Format::OcclusionFormer,
    };
    let text = export(l.scene.scene(), format).map_err(|e| Failure::User(render(file, &e)))?;
    match output {
        None => {
            std::io::stdout()
                .write_all(text.as_bytes())
                .map_err(|e| Failure::Internal(e.to_string()))?;
        }
        Some(out) => {
            atomic_write(out, |f| f.write_all(text.as_bytes()))
                .map_err(|e| Failure::User(e.to_string()))?;
            eprintln!("wrote {} ({format})", out.display());
        }
    }
    Ok(())
}
