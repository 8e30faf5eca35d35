//! The scene: a canvas, a global prompt and instances with amodal boxes and a Z-order.
//!
//! This is zlayer's native JSON format (documented in `docs/scene-format.md`, schema in
//! `docs/scene.schema.json`). Every importer produces a [`Scene`]; nothing downstream sees the
//! source format. A `Scene` is not yet known to be valid: [`crate::validate`] turns it into a
//! [`crate::ValidScene`].

use crate::bbox::BBox;
use serde::{Deserialize, Serialize};

/// A scene as the user declared it: canvas, prompt, instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scene {
    /// Canvas width in pixels.
    pub width: u32,
    /// Canvas height in pixels.
    pub height: u32,
    /// Seed for generation; the same seed and scene give the same bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The global prompt.
    #[serde(default)]
    pub prompt: String,
    /// OcclusionFormer's top-level `caption`, kept only when it differs from `prompt`, so that
    /// importing and exporting that format is lossless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    /// The instances, in file order. Order carries no depth: `occludes` does.
    #[serde(default)]
    pub instances: Vec<Instance>,
}

/// One object: a caption, an amodal box (the whole object, hidden part included), what it covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// Unique id within the scene; numbers in the file are read as their decimal text.
    #[serde(deserialize_with = "id_from_string_or_number")]
    pub id: String,
    /// What the object is, e.g. "red striped sphere".
    pub caption: String,
    /// Coarse class, used to match boxes per category in layout metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Amodal box `[x1, y1, x2, y2]` in canvas pixels.
    pub bbox: BBox,
    /// Optional amodal mask; the box stays the reference for layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<MaskSpec>,
    /// Ids of the instances this one is in front of.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "ids_from_strings_or_numbers"
    )]
    pub occludes: Vec<String>,
    /// Opacity in [0, 1] (LaRender's per-object alpha); `None` means the method's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opacity: Option<f64>,
}

/// Where an instance's mask comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MaskSpec {
    /// COCO run-length encoding: `size` is `[height, width]`; `counts` a list or COCO's string.
    Rle {
        /// `[height, width]` of the mask.
        size: [u32; 2],
        /// Run lengths, column-major, starting with a run of zeros.
        counts: RleCounts,
    },
    /// COCO polygons: each `[x0, y0, x1, y1, ...]` in canvas pixels; their union is the mask.
    Polygons(Vec<Vec<f64>>),
    /// A grey or RGBA PNG, path relative to the scene file; alpha or luma is the coverage.
    Png {
        /// Path of the PNG file.
        png: String,
    },
}

/// The two spellings of COCO RLE counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RleCounts {
    /// Uncompressed: a list of run lengths.
    List(Vec<u64>),
    /// Compressed: pycocotools' LEB128-like string.
    Compressed(String),
}

impl Scene {
    /// Position of the instance with this id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.instances.iter().position(|i| i.id == id)
    }

    /// The canvas as a box.
    pub fn canvas(&self) -> BBox {
        BBox::new(0.0, 0.0, self.width as f64, self.height as f64)
    }

    /// The prompt the official OcclusionFormer pipeline sends: `prompt + ", " + join(captions)`.
    pub fn full_prompt(&self) -> String {
        let captions: Vec<&str> = self.instances.iter().map(|i| i.caption.as_str()).collect();
        if captions.is_empty() {
            self.prompt.clone()
        } else {
            format!("{}, {}", self.prompt, captions.join(", "))
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IdRepr {
    S(String),
    N(u64),
}

impl From<IdRepr> for String {
    fn from(v: IdRepr) -> String {
        match v {
            IdRepr::S(s) => s,
            IdRepr::N(n) => n.to_string(),
        }
    }
}

fn id_from_string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    IdRepr::deserialize(d)
        .map(String::from)
        .map_err(|_| serde::de::Error::custom("an id must be a string or a non-negative integer"))
}

fn ids_from_strings_or_numbers<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<String>, D::Error> {
    let v = Vec::<IdRepr>::deserialize(d).map_err(|_| {
        serde::de::Error::custom("`occludes` must be a list of instance ids, e.g. [\"cube\", 2]")
    })?;
    Ok(v.into_iter().map(String::from).collect())
}
