//! `validate` and `convert`, and reading a scene file with errors that name it.

use crate::cli::{Failure, Target};
use std::io::Write;
use std::path::Path;
use zlayer_composite::atomic_write;
use zlayer_scene::{Diagnostic, Format, Loaded, SceneError, export, load_str};

/// Reads and validates a scene, printing its warnings to stderr.
pub fn load(file: &Path) -> Result<Loaded, Failure> {
    let loaded = load_quiet(file).map_err(|e| Failure::User(render(file, &e)))?;
    for w in &loaded.warnings {
        eprintln!("{}: {w}", file.display());
    }
    Ok(loaded)
}

fn load_quiet(file: &Path) -> Result<Loaded, SceneError> {
    let bytes = std::fs::read(file)
        .map_err(|e| Diagnostic::error("", format!("cannot read the file: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Diagnostic::error(
            "",
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        )
        .hint("scene files are JSON, which is UTF-8")
    })?;
    load_str(&text)
}

fn render(file: &Path, e: &SceneError) -> String {
    let n = e.errors().count();
    let mut s: Vec<String> = e
        .diagnostics
        .iter()
        .map(|d| format!("{}: {d}", file.display()))
        .collect();
    if n > 1 {
        s.push(format!("{}: {n} errors", file.display()));
    }
    s.join("\n")
}

/// `zlayer validate`.
pub fn validate(file: &Path, json: bool) -> Result<(), Failure> {
    if !json {
        let l = load(file)?;
        let s = l.scene.scene();
        let g = l.scene.graph();
        let native = export(s, Format::Native).map_err(|e| Failure::Internal(e.to_string()))?;
        crate::cli::print_stdout(&native)?;
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
            let g = l.scene.graph();
            let v = serde_json::json!({
                "ok": true,
                "file": file.display().to_string(),
                "format": l.format.name(),
                "scene": l.scene.scene(),
                "depth_levels": g.depth_levels(),
                "draw_order": g.draw_order(),
                "unordered_pairs": g.unordered_pairs(),
                "diagnostics": l.warnings,
            });
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
