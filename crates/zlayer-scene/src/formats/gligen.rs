//! GLIGEN's grounding input: `{prompt, phrases: [str], locations: [[x1, y1, x2, y2]]}` with
//! boxes normalised to [0, 1]. It has no order.

use super::{canvas_or_default, from_value};
use crate::bbox::BBox;
use crate::diag::{Diagnostic, SceneError};
use crate::scene::{Instance, Scene};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct GlScene {
    #[serde(default)]
    prompt: String,
    phrases: Vec<String>,
    locations: Vec<[f64; 4]>,
    #[serde(default)]
    width: Option<u32>,
    #[serde(default)]
    height: Option<u32>,
    #[serde(default)]
    seed: Option<u64>,
}

/// Reads a GLIGEN layout.
pub(super) fn import(v: Value) -> Result<(Scene, Vec<Diagnostic>), SceneError> {
    let gl: GlScene = from_value(v)?;
    if gl.locations.len() != gl.phrases.len() {
        return Err(Diagnostic::error(
            "locations",
            format!(
                "{} locations for {} phrases",
                gl.locations.len(),
                gl.phrases.len()
            ),
        )
        .hint("give one normalised [x1, y1, x2, y2] per phrase, in the same order")
        .into());
    }
    let mut warnings = Vec::new();
    let (width, height) = canvas_or_default(gl.width, gl.height, &mut warnings);
    let (w, h) = (width as f64, height as f64);
    let instances = gl
        .phrases
        .into_iter()
        .zip(gl.locations)
        .enumerate()
        .map(|(i, (caption, [x1, y1, x2, y2]))| Instance {
            id: i.to_string(),
            caption,
            category: None,
            bbox: BBox::new(x1 * w, y1 * h, x2 * w, y2 * h),
            mask: None,
            occludes: Vec::new(),
            opacity: None,
        })
        .collect();
    let scene = Scene {
        width,
        height,
        seed: gl.seed,
        prompt: gl.prompt,
        caption: None,
        instances,
    };
    Ok((scene, warnings))
}
