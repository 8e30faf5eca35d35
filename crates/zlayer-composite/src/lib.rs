//! Exact compositing for zlayer, in plain f32 with no ML dependency.
//!
//! - [`volume`]: OcclusionFormer's volume-rendering Z-order composition of feature layers,
//!   and its weights (DESIGN.md §4.1). The model crate's candle op is tested against it.
//! - [`rgba`]: straight and premultiplied pixels as distinct types, Porter-Duff over.
//! - [`layers`]: layer stacks with offsets, opacity, visibility.
//! - [`io`]: PNG 8/16-bit read and write, atomic file writes.
//! - [`ora`]: OpenRaster export and import.
#![warn(missing_docs)]

pub mod annotate;
pub mod io;
pub mod layers;
pub mod ora;
pub mod rgba;
pub mod volume;

pub use io::{BitDepth, IoError, atomic_write, read_png, write_png};
pub use layers::{Layer, LayerStack};
pub use rgba::{Image, Premul, Premul8, Straight, Straight8};
