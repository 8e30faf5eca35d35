//! SA-Z-synth: a procedural occlusion world with exact ground truth.
//!
//! The paper's SA-Z (1M photos with SAM-3D amodal masks) cannot be rebuilt here; a procedural
//! world gives unlimited scenes whose amodal masks, visible masks, RGBA layers and Z-order
//! are exact. It trains and evaluates every model in zlayer.
//!
//! - [`vocab`]: the closed vocabulary and caption grammar.
//! - [`sample`]: (seed, index, split, size) → a scene description, deterministically.
//! - [`render`]: description → image, background, RGBA layers, masks, native scene.
//! - [`store`]: safetensors shards + JSONL, or browsable PNG folders.
//! - [`sheet`]: contact sheets for people.
#![warn(missing_docs)]

pub mod render;
pub mod sample;
pub mod sheet;
pub mod store;
pub mod vocab;

pub use render::{SynthScene, render};
pub use sample::{Params, SceneSpec, Split, sample};
pub use store::scene_at;
