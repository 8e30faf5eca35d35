//! What zlayer's front ends (the `zlayer` command, the server) share, so that each front end
//! is flag or request parsing plus one call here.
//!
//! - [`error`]: errors by layer ([`Failure`]: the user's, exit 2; internal, exit 1).
//! - [`scene_file`]: reading a scene file with diagnostics that name it.
//! - [`model`], [`bundled`]: a tiny model (built in, or a folder): VAE, base, typed metadata.
//! - [`method`]: what draws a scene (a trained branch of any variant, or LaRender).
//! - [`pipeline`]: the one generation pipeline (a prompt or a scene in; images, maps,
//!   layers and notes out).
//! - [`output`], [`layers`]: tensors as pictures at the canvas size; instance maps and
//!   OpenRaster layer stacks.
//! - [`insert`]: a new instance put into an existing image at its place in the order (PELC).
//! - [`recompose`]: a layered file's instances re-ordered, moved or hidden, composited exactly.
//! - [`harmonise`]: what an edit of a stack revealed, redrawn by a short denoise; the rest kept.
//! - [`layer_eval`]: RGBA layers scored against exact amodal layers (visible, hidden, alpha).
//! - [`preview`]: the picture of a declared scene (boxes by depth, arrows, hatched overlaps).
//! - [`data`]: the synthetic world as scenes, batches, tensors and layouts.
//! - [`protocol`], [`flip`]: the paired evaluation of methods on held-out scenes, and the
//!   order-flip test.
//! - [`grpo`]: Flow-GRPO on a trained branch, rewarded on decoded images, with held-out reports.
//! - [`alpha`]: the alpha-aware VAE's RGBA data (opaque images, amodal layers) and scores.
//! - [`pelc`]: latent-compositing pairs (four mask kinds), their composite, DecFormer's loss.
//! - [`tune`]: the grounding ratio a trained branch samples with, chosen on validation scenes.
//! - [`report`]: progress bars, loss curves, evaluation reports.
//! - [`device`]: where the Flux-scale model runs.
#![warn(missing_docs)]

pub mod alpha;
pub mod bundled;
pub mod data;
pub mod decompose;
pub mod device;
pub mod error;
pub mod flip;
pub mod grpo;
pub mod harmonise;
pub mod insert;
pub mod layer_eval;
pub mod layers;
pub mod method;
pub mod model;
pub mod output;
pub mod pelc;
pub mod pipeline;
pub mod preview;
pub mod protocol;
pub mod recompose;
pub mod report;
pub mod scene_file;
pub mod tune;

pub use error::{Failure, internal, user};
