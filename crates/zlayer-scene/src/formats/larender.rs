//! LaRender's object list: `objects: [str]`, `locations: [[top, bottom, left, right]]`
//! normalised to [0, 1], and `alpha` per object (a list, or one number for all).
//!
//! List order is depth, last front-most: a total order. It becomes `occludes` edges only
//! between objects whose boxes overlap, since an order between disjoint boxes draws nothing.

use super::{canvas_or_default, from_value};
use crate::bbox::BBox;
use crate::diag::{Diagnostic, SceneError};
use crate::scene::{Instance, Scene};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct LaScene {
    #[serde(default)]
    prompt: String,
    objects: Vec<String>,
    locations: Vec<[f64; 4]>,
    #[serde(default)]
    alpha: Option<Alpha>,
    #[serde(default)]
    width: Option<u32>,
    #[serde(default)]
    height: Option<u32>,
    #[serde(default)]
    seed: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Alpha {
    One(f64),
    Each(Vec<f64>),
}

/// Reads a LaRender layout.
pub(super) fn import(v: Value) -> Result<(Scene, Vec<Diagnostic>), SceneError> {
    let la: LaScene = from_value(v)?;
    let n = la.objects.len();
    if la.locations.len() != n {
        return Err(Diagnostic::error(
            "locations",
            format!("{} locations for {n} objects", la.locations.len()),
        )
        .hint("give one [top, bottom, left, right] per object, in the same order")
        .into());
    }
    let alphas: Vec<Option<f64>> = match la.alpha {
        None => vec![None; n],
        Some(Alpha::One(a)) => vec![Some(a); n],
        Some(Alpha::Each(v)) if v.len() == n => v.into_iter().map(Some).collect(),
        Some(Alpha::Each(v)) => {
            return Err(
                Diagnostic::error("alpha", format!("{} alphas for {n} objects", v.len()))
                    .hint("give one alpha per object, or a single number for all")
                    .into(),
            );
        }
    };
    let mut warnings = Vec::new();
    let (width, height) = canvas_or_default(la.width, la.height, &mut warnings);
    let (w, h) = (width as f64, height as f64);
    let boxes: Vec<BBox> = la
        .locations
        .iter()
        .map(|&[top, bottom, left, right]| BBox::new(left * w, top * h, right * w, bottom * h))
        .collect();
    let instances = (0..n)
        .map(|i| Instance {
            id: i.to_string(),
            caption: la.objects[i].clone(),
            category: None,
            bbox: boxes[i],
            mask: None,
            occludes: (0..i)
                .filter(|&j| boxes[i].overlaps(boxes[j]))
                .map(|j| j.to_string())
                .collect(),
            opacity: alphas[i],
        })
        .collect();
    let scene = Scene {
        width,
        height,
        seed: la.seed,
        prompt: la.prompt,
        caption: None,
        instances,
    };
    Ok((scene, warnings))
}
