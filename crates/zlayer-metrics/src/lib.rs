//! Metrics for zlayer. Every definition is DESIGN.md §5, cited in each doc comment.
//!
//! - [`occlusion`]: pairwise order accuracy, InstaOrder Occ. F1 and Dep. WHDR.
//! - [`layout`]: mask IoU, mIoU and O-mIoU, and OverLayBench's box-based mIoU / O-mIoU.
//! - [`matting`]: SAD, MSE, Grad, Conn (the DIM protocol as mmeval implements it).
//! - [`boundary`]: error against signed distance, halo-band L1, DAVIS boundary F, boundary IoU.
//! - [`segment`]: which pixel of a synthetic-world image belongs to which instance.
//! - [`fidelity`]: PSNR and SSIM of whole images.
//! - [`eval`]: scoring generated images of synthetic scenes against their ground truth.
//! - [`reward`]: rewards on decoded images (order, layout, colour) for reinforcement learning.
//! - [`summary`]: means over scenes, the Markdown report and the per-scene CSV.
//! - [`grid`]: distance transforms and connected components they share.
#![warn(missing_docs)]

pub mod boundary;
pub mod eval;
pub mod fidelity;
pub mod grid;
pub mod layout;
pub mod matting;
pub mod occlusion;
pub mod reward;
pub mod seeds;
pub mod segment;
pub mod summary;
