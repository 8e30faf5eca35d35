//! Reading a scene file, with errors that name the file, the JSON path and the instance.

use crate::Failure;
use std::path::Path;
use zlayer_scene::{Diagnostic, Loaded, SceneError, load_str};

/// Reads and validates a scene, printing its warnings to stderr.
pub fn load(file: &Path) -> Result<Loaded, Failure> {
    let loaded = load_quiet(file).map_err(|e| Failure::User(render(file, &e)))?;
    for w in &loaded.warnings {
        eprintln!("{}: {w}", file.display());
    }
    Ok(loaded)
}

/// Writes a scene as native JSON, atomically.
pub fn write(path: &Path, scene: &zlayer_scene::Scene) -> Result<(), Failure> {
    let text = zlayer_scene::export(scene, zlayer_scene::Format::Native)
        .map_err(|e| Failure::Internal(e.to_string()))?;
    zlayer_composite::atomic_write(path, |f| std::io::Write::write_all(f, text.as_bytes()))
        .map_err(|e| Failure::User(format!("{}: {e}", path.display())))
}

/// Reads and validates a scene; warnings stay in the result.
pub fn load_quiet(file: &Path) -> Result<Loaded, SceneError> {
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

/// Every diagnostic of `e`, one line each, prefixed with the file.
pub fn render(file: &Path, e: &SceneError) -> String {
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

/// What validation says of a valid scene, as JSON (`zlayer validate --json`, the server's
/// `/v1/validate`): the normalised scene, its format, depth levels, draw order, unordered
/// pairs and warnings.
pub fn valid_json(l: &Loaded) -> serde_json::Value {
    let g = l.scene.graph();
    serde_json::json!({
        "ok": true,
        "format": l.format.name(),
        "scene": l.scene.scene(),
        "depth_levels": g.depth_levels(),
        "draw_order": g.draw_order(),
        "unordered_pairs": g.unordered_pairs(),
        "diagnostics": l.warnings,
    })
}
