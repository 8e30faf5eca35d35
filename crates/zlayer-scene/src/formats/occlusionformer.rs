//! The official OcclusionFormer layout JSON (FudanCVL/OcclusionFormer), and InstanceAssemble,
//! which has the same shape without `occludes`.
//!
//! `{prompt, caption, height, width, seed, annos: [{bbox, caption, category_name, occludes}]}`:
//! - `bbox` is xyxy in pixels; a box that is not a valid xyxy is read as xywh, like the
//!   official loader does;
//! - `occludes` is a string of **1-based** indices, e.g. `"2,4"`, `""` for none. A list of
//!   integers is accepted too.
//!
//! Instance ids become the 1-based positions (`"1"`, `"2"`, …), so they read the same as the
//! indices in `occludes`.

use super::{Field, Format, from_value};
use crate::bbox::{BBox, Coord};
use crate::diag::{Diagnostic, SceneError};
use crate::scene::{Instance, Scene};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Deserialize)]
struct OfScene {
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    caption: Option<String>,
    width: u32,
    height: u32,
    #[serde(default)]
    seed: Option<u64>,
    annos: Vec<OfAnno>,
}

#[derive(Deserialize)]
struct OfAnno {
    bbox: [f64; 4],
    caption: String,
    #[serde(default)]
    category_name: Option<String>,
    #[serde(default)]
    occludes: Option<Occludes>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Occludes {
    Text(String),
    List(Vec<i64>),
}

#[derive(Serialize)]
struct OfSceneOut<'a> {
    prompt: &'a str,
    caption: &'a str,
    height: u32,
    width: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    annos: Vec<OfAnnoOut<'a>>,
}

#[derive(Serialize)]
struct OfAnnoOut<'a> {
    bbox: [Coord; 4],
    caption: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    category_name: Option<&'a str>,
    occludes: String,
}

/// Reads the official layout (or InstanceAssemble's) into a scene.
pub(super) fn import(v: Value, format: Format) -> Result<(Scene, Vec<Diagnostic>), SceneError> {
    let of: OfScene = from_value(v)?;
    let n = of.annos.len();
    let mut diags = Vec::new();
    let mut instances = Vec::with_capacity(n);
    for (i, a) in of.annos.into_iter().enumerate() {
        let id = (i + 1).to_string();
        let bbox = read_box(a.bbox, format.field_path(i, Field::BBox), &id, &mut diags);
        let occludes = match a.occludes {
            None => Vec::new(),
            Some(o) => parse_indices(o, n, format.field_path(i, Field::Occludes), &id, &mut diags),
        };
        instances.push(Instance {
            id,
            caption: a.caption,
            category: a.category_name,
            bbox,
            mask: None,
            occludes,
            opacity: None,
        });
    }
    crate::diag::finish(diags.clone())?;
    let caption = of.caption.filter(|c| *c != of.prompt);
    let scene = Scene {
        width: of.width,
        height: of.height,
        seed: of.seed,
        prompt: of.prompt,
        caption,
        instances,
    };
    Ok((scene, diags))
}

/// xyxy when valid, else xywh (with a warning), as the official loader reads boxes.
fn read_box(b: [f64; 4], path: String, id: &str, diags: &mut Vec<Diagnostic>) -> BBox {
    let [x, y, c, d] = b;
    if c > x && d > y {
        return BBox::new(x, y, c, d);
    }
    if c > 0.0 && d > 0.0 {
        diags.push(
            Diagnostic::warning(
                path,
                format!("{b:?} is not a valid [x1, y1, x2, y2]; read it as [x, y, width, height]"),
            )
            .on(id)
            .hint("write boxes as [x1, y1, x2, y2] with x2 > x1 and y2 > y1"),
        );
        return BBox::new(x, y, x + c, y + d);
    }
    // Neither reading works: keep xyxy so validation reports the box as it was written.
    BBox::new(x, y, c, d)
}

fn parse_indices(
    o: Occludes,
    n: usize,
    path: String,
    id: &str,
    diags: &mut Vec<Diagnostic>,
) -> Vec<String> {
    let raw: Vec<Result<i64, String>> = match o {
        Occludes::List(v) => v.into_iter().map(Ok).collect(),
        Occludes::Text(s) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| t.parse::<i64>().map_err(|_| t.to_string()))
            .collect(),
    };
    let mut out = Vec::new();
    for r in raw {
        match r {
            Ok(k) if (1..=n as i64).contains(&k) => out.push(k.to_string()),
            Ok(k) => diags.push(
                Diagnostic::error(
                    path.clone(),
                    format!("index {k} is out of range: the file has {n} annos, numbered 1 to {n}"),
                )
                .on(id)
                .hint("`occludes` indices are 1-based positions in `annos`, e.g. \"1,3\""),
            ),
            Err(t) => diags.push(
                Diagnostic::error(path.clone(), format!("{t:?} is not an index"))
                    .on(id)
                    .hint("write `occludes` as comma-separated 1-based indices, e.g. \"2,4\", or \"\" for none"),
            ),
        }
    }
    out
}

/// Writes a scene in the official layout format. Ids become 1-based positions.
pub(super) fn export(scene: &Scene) -> Result<Value, SceneError> {
    let mut diags = Vec::new();
    let annos = scene
        .instances
        .iter()
        .enumerate()
        .map(|(i, inst)| {
            let idx: Vec<String> = inst
                .occludes
                .iter()
                .filter_map(|id| match scene.index_of(id) {
                    Some(k) => Some((k + 1).to_string()),
                    None => {
                        diags.push(
                            Diagnostic::error(
                                Format::Native.field_path(i, Field::Occludes),
                                format!("unknown instance id {id:?}"),
                            )
                            .on(&inst.id),
                        );
                        None
                    }
                })
                .collect();
            OfAnnoOut {
                bbox: inst.bbox.to_array().map(Coord),
                caption: &inst.caption,
                category_name: inst.category.as_deref(),
                occludes: idx.join(","),
            }
        })
        .collect();
    let out = OfSceneOut {
        prompt: &scene.prompt,
        caption: scene.caption.as_deref().unwrap_or(&scene.prompt),
        height: scene.height,
        width: scene.width,
        seed: scene.seed,
        annos,
    };
    crate::diag::finish(diags)?;
    Ok(serde_json::to_value(out).expect("plain data always serialises"))
}
