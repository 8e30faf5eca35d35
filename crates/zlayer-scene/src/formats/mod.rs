//! Importers and exporters: the layout formats users already have, auto-detected.
//!
//! Every format becomes a [`Scene`]. Detection looks at the top-level keys only, so a file is
//! never half-read as the wrong format:
//!
//! | format | recognised by | depth |
//! |---|---|---|
//! | native | `instances` | `occludes` ids |
//! | OcclusionFormer | `annos` whose entries have `occludes` | 1-based index string |
//! | InstanceAssemble | `annos` without `occludes` | none |
//! | LaRender | `objects` + `locations` | list order, last is front-most |
//! | GLIGEN | `phrases` + `locations` | none |
//! | InstaOrder | `occlusion` order strings | `"1<0"`: 1 occludes 0 |
//!
//! Paths in diagnostics are paths in the *source* file, so a user can find the line.

mod gligen;
mod instaorder;
mod larender;
mod occlusionformer;

pub use instaorder::parse_order_string;

use crate::diag::{Diagnostic, SceneError};
use crate::scene::Scene;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A layout format zlayer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// zlayer's own JSON.
    Native,
    /// The official OcclusionFormer layout JSON.
    OcclusionFormer,
    /// InstanceAssemble: OcclusionFormer's shape without order.
    InstanceAssemble,
    /// LaRender: objects, normalised `[top, bottom, left, right]`, list order is depth.
    LaRender,
    /// GLIGEN: phrases and normalised xyxy locations.
    Gligen,
    /// COCO-style boxes plus InstaOrder pairwise order strings.
    InstaOrder,
}

/// A field of an instance, for locating diagnostics in the source format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The instance as a whole.
    Whole,
    /// Its id.
    Id,
    /// Its caption.
    Caption,
    /// Its box.
    BBox,
    /// Its mask.
    Mask,
    /// What it occludes.
    Occludes,
    /// Its opacity.
    Opacity,
}

/// A scene read from a file, before validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    /// The scene.
    pub scene: Scene,
    /// The format it was read from.
    pub format: Format,
    /// Things changed or assumed on the way in.
    pub warnings: Vec<Diagnostic>,
}

impl Format {
    /// All formats, for help texts.
    pub const ALL: [Format; 6] = [
        Format::Native,
        Format::OcclusionFormer,
        Format::InstanceAssemble,
        Format::LaRender,
        Format::Gligen,
        Format::InstaOrder,
    ];

    /// A short lower-case name, as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::Native => "native",
            Format::OcclusionFormer => "occlusionformer",
            Format::InstanceAssemble => "instanceassemble",
            Format::LaRender => "larender",
            Format::Gligen => "gligen",
            Format::InstaOrder => "instaorder",
        }
    }

    /// The JSON path of instance `i`'s `field` in this format.
    pub fn field_path(self, i: usize, field: Field) -> String {
        use Field::*;
        let key = |name: &str| format!("{}[{i}].{name}", self.list_key());
        match (self, field) {
            (Format::LaRender, Caption) => format!("objects[{i}]"),
            (Format::LaRender, BBox) => format!("locations[{i}]"),
            (Format::LaRender, Opacity) => format!("alpha[{i}]"),
            (Format::LaRender, Occludes) => "objects".into(),
            (Format::Gligen, Caption) => format!("phrases[{i}]"),
            (Format::Gligen, BBox) => format!("locations[{i}]"),
            (Format::LaRender | Format::Gligen, _) => format!("{}[{i}]", self.list_key()),
            (Format::InstaOrder, Occludes) => "occlusion".into(),
            (_, Whole) => format!("{}[{i}]", self.list_key()),
            (Format::Native, Id) => key("id"),
            (_, Id) => format!("{}[{i}]", self.list_key()),
            (_, Caption) => key("caption"),
            (_, BBox) => key("bbox"),
            (_, Mask) => key("mask"),
            (_, Occludes) => key("occludes"),
            (_, Opacity) => key("opacity"),
        }
    }

    fn list_key(self) -> &'static str {
        match self {
            Format::Native => "instances",
            Format::OcclusionFormer | Format::InstanceAssemble => "annos",
            Format::LaRender => "objects",
            Format::Gligen => "phrases",
            Format::InstaOrder => "annotations",
        }
    }

    /// Recognises a format from the top-level keys of a JSON object.
    pub fn detect(v: &Value) -> Result<Format, Diagnostic> {
        let Some(obj) = v.as_object() else {
            return Err(Diagnostic::error(
                "",
                format!("expected a JSON object at the top level, found {}", kind(v)),
            )
            .hint("a scene is an object such as {\"width\": 512, \"height\": 512, \"instances\": [...]}"));
        };
        let has = |k: &str| obj.contains_key(k);
        let annos_have_occludes = obj
            .get("annos")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x.get("occludes").is_some()));
        Ok(if has("instances") {
            Format::Native
        } else if has("occlusion") {
            Format::InstaOrder
        } else if has("annos") && annos_have_occludes {
            Format::OcclusionFormer
        } else if has("annos") {
            Format::InstanceAssemble
        } else if has("objects") && has("locations") {
            Format::LaRender
        } else if has("phrases") && has("locations") {
            Format::Gligen
        } else {
            let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            keys.truncate(8);
            return Err(Diagnostic::error(
                "",
                format!("not a scene in any known format (top-level keys: {keys:?})"),
            )
            .hint(
                "zlayer reads: native {instances}, OcclusionFormer/InstanceAssemble {annos}, \
                 LaRender {objects, locations}, GLIGEN {phrases, locations}, \
                 InstaOrder {annotations, occlusion}; see docs/scene-format.md",
            ));
        })
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Reads a scene from JSON text in any known format.
pub fn import_str(text: &str) -> Result<Imported, SceneError> {
    let v: Value = serde_json::from_str(text).map_err(|e| {
        Diagnostic::error("", format!("malformed JSON: {e}"))
            .hint("a trailing comma, a missing quote or a missing bracket is the usual cause")
    })?;
    import_value(v)
}

/// Reads a scene from a parsed JSON value in any known format.
pub fn import_value(v: Value) -> Result<Imported, SceneError> {
    let format = Format::detect(&v)?;
    let (scene, warnings) = match format {
        Format::Native => (from_value::<Scene>(v)?, Vec::new()),
        Format::OcclusionFormer | Format::InstanceAssemble => occlusionformer::import(v, format)?,
        Format::LaRender => larender::import(v)?,
        Format::Gligen => gligen::import(v)?,
        Format::InstaOrder => instaorder::import(v)?,
    };
    Ok(Imported {
        scene,
        format,
        warnings,
    })
}

/// Writes a scene in a format zlayer can export (native or OcclusionFormer), pretty-printed.
pub fn export(scene: &Scene, format: Format) -> Result<String, SceneError> {
    let v = match format {
        Format::Native => serde_json::to_value(scene).expect("a Scene always serialises"),
        Format::OcclusionFormer => occlusionformer::export(scene)?,
        other => {
            return Err(Diagnostic::error(
                "",
                format!("cannot export to {other}: only native and occlusionformer are writable"),
            )
            .into());
        }
    };
    Ok(serde_json::to_string_pretty(&v).expect("a JSON value always prints") + "\n")
}

/// Deserialises with the JSON path of the first mismatch in the error.
pub(crate) fn from_value<T: DeserializeOwned>(v: Value) -> Result<T, Diagnostic> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        Diagnostic::error(path, e.inner().to_string())
    })
}

/// Canvas size for formats with normalised boxes, which often leave it out.
pub(crate) fn canvas_or_default(
    width: Option<u32>,
    height: Option<u32>,
    warnings: &mut Vec<Diagnostic>,
) -> (u32, u32) {
    const DEFAULT: u32 = 512;
    if width.is_none() || height.is_none() {
        warnings.push(
            Diagnostic::warning(
                "",
                format!("no canvas size given; assuming {DEFAULT}×{DEFAULT}"),
            )
            .hint("add \"width\" and \"height\" in pixels"),
        );
    }
    (width.unwrap_or(DEFAULT), height.unwrap_or(DEFAULT))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
