//! InstaOrder's pairwise order strings, on COCO-style annotations.
//!
//! An order string relates instance indices (0-based): `"1<0"` means 1 occludes 0; `&`
//! joins relations, and `"0<2 & 2<0"` (both directions) means the pair is mutual, i.e.
//! unordered. The file shape zlayer reads is COCO's per-image annotation list plus the order
//! annotations:
//!
//! `{width, height, prompt?, annotations: [{bbox: [x, y, w, h], category_name?, caption?}],
//!   occlusion: ["1<0", {"order": "0<2 & 2<0"}, ...]}`
//!
//! `bbox` is COCO's xywh in pixels; a missing caption falls back to the category name.

use super::{Field, Format, from_value};
use crate::bbox::BBox;
use crate::diag::{Diagnostic, SceneError};
use crate::scene::{Instance, Scene};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct IoScene {
    width: u32,
    height: u32,
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    seed: Option<u64>,
    annotations: Vec<IoAnno>,
    occlusion: Vec<OrderEntry>,
}

#[derive(Deserialize)]
struct IoAnno {
    bbox: [f64; 4],
    #[serde(default)]
    caption: Option<String>,
    #[serde(default)]
    category_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OrderEntry {
    Text(String),
    Object { order: String },
}

/// Parses an order string into `(front, back)` pairs, e.g. `"1<0 & 2<1"` → `[(1, 0), (2, 1)]`.
pub fn parse_order_string(s: &str) -> Result<Vec<(usize, usize)>, String> {
    let mut out = Vec::new();
    for part in s.split('&') {
        let part = part.trim();
        let Some((a, b)) = part.split_once('<') else {
            return Err(format!(
                "{part:?} is not of the form \"A<B\" (A occludes B)"
            ));
        };
        let parse = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("{:?} in {part:?} is not a 0-based instance index", t.trim()))
        };
        out.push((parse(a)?, parse(b)?));
    }
    Ok(out)
}

/// Reads COCO-style annotations with InstaOrder occlusion strings.
pub(super) fn import(v: Value) -> Result<(Scene, Vec<Diagnostic>), SceneError> {
    let io: IoScene = from_value(v)?;
    let n = io.annotations.len();
    let mut diags = Vec::new();
    let mut occludes: Vec<Vec<String>> = vec![Vec::new(); n];
    for (k, e) in io.occlusion.iter().enumerate() {
        let s = match e {
            OrderEntry::Text(s) | OrderEntry::Object { order: s } => s,
        };
        let path = format!("occlusion[{k}]");
        match parse_order_string(s) {
            Err(m) => {
                diags.push(Diagnostic::error(path, m).hint("write e.g. \"1<0\" or \"0<2 & 2<0\""))
            }
            Ok(pairs) => {
                for (a, b) in pairs {
                    if a >= n || b >= n {
                        diags.push(
                            Diagnostic::error(
                                path.clone(),
                                format!("index {} is out of range: there are {n} annotations, numbered 0 to {}", a.max(b), n.saturating_sub(1)),
                            )
                            .hint("order strings use 0-based positions in `annotations`"),
                        );
                    } else if !occludes[a].contains(&b.to_string()) {
                        occludes[a].push(b.to_string());
                    }
                }
            }
        }
    }
    let mut instances = Vec::with_capacity(n);
    for (i, (a, occ)) in io.annotations.into_iter().zip(occludes).enumerate() {
        let Some(caption) = a.caption.or_else(|| a.category_name.clone()) else {
            diags.push(
                Diagnostic::error(
                    Format::InstaOrder.field_path(i, Field::Whole),
                    "no caption and no category_name",
                )
                .hint("give each annotation a \"caption\" or a \"category_name\""),
            );
            continue;
        };
        let [x, y, w, h] = a.bbox;
        instances.push(Instance {
            id: i.to_string(),
            caption,
            category: a.category_name,
            bbox: BBox::new(x, y, x + w, y + h),
            mask: None,
            occludes: occ,
            opacity: None,
        });
    }
    let warnings = crate::diag::finish(diags)?;
    let scene = Scene {
        width: io.width,
        height: io.height,
        seed: io.seed,
        prompt: io.prompt,
        caption: None,
        instances,
    };
    Ok((scene, warnings))
}
