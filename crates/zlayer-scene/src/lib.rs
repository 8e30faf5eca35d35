//! Scenes for zlayer: instances with amodal boxes and captions, the Z-order graph that says
//! who is in front of whom, importers for the layout formats users already have, validation
//! with errors that say what, where and how to fix, and rasterisation to pixel and token grids.
//!
//! The usual entry point is [`load_str`]: JSON text in any known format → a [`ValidScene`]
//! plus warnings, or a [`SceneError`] listing every problem.
#![warn(missing_docs)]

mod bbox;
mod diag;
pub mod formats;
mod graph;
pub mod raster;
pub mod rng;
mod scene;
mod validate;

pub use bbox::BBox;
pub use diag::{Diagnostic, SceneError, Severity};
pub use formats::{Format, Imported, export, import_str, import_value, parse_order_string};
pub use graph::{Cycle, OcclusionGraph};
pub use raster::{Mask, MaskError, TokenGrid, TokenMask};
pub use scene::{Instance, MaskSpec, RleCounts, Scene};
pub use validate::{
    Loaded, MAX_INSTANCES, MAX_SIDE, ValidScene, load_str, validate, validate_native,
};
