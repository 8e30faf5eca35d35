//! Exact compositing for zlayer, in plain f32 with no ML dependency.
//!
//! - [`volume`]: OcclusionFormer's volume-rendering Z-order composition of feature layers,
//!   and its weights (DESIGN.md §4.1). The model crate's candle op is tested against it.
//! - [`rgba`]: straight and premultiplied pixels as distinct types, Porter-Duff over.
//! - [`layers`]: layer stacks with offsets, opacity, visibility.
//! - [`io`]: PNG 8/16-bit read and write, atomic file writes.
//! - [`ora`]: OpenRaster export and import.
//! - [`psd`]: Photoshop document export (layered, straight alpha, named) and its reader.
//! - [`reconcile`]: the least change of a layer stack's colours that makes it composite back
//!   to an observed image.
//! - [`resample`]: bilinear resampling of planes and images (native model size to canvas).
//! - [`with_avx2_fma`]: runs a kernel compiled for AVX2 and FMA where the CPU has them.
#![warn(missing_docs)]

pub mod annotate;
pub mod io;
pub mod layers;
pub mod ora;
pub mod psd;
pub mod reconcile;
pub mod resample;
pub mod rgba;
pub mod volume;

pub use io::{BitDepth, IoError, atomic_write, read_png, write_png};
pub use layers::{Layer, LayerStack};
pub use rgba::{Image, Premul, Premul8, Straight, Straight8};

/// Runs `f` compiled for AVX2 and FMA when the CPU has them, else as built. The default
/// x86-64 target is SSE2, where LLVM vectorises loops four wide and without fused
/// multiply-add. `f` and what it calls with `#[inline(always)]` are inlined into the AVX2
/// instance, so kernels are written once, as plain loops. Mark the closure itself
/// `#[inline(always)]`: it has two callers here, and LLVM leaves a large one out of line,
/// compiled for plain x86-64, where `mul_add` becomes a call into software `fmaf`.
#[inline(always)]
pub fn with_avx2_fma<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has both features the instance was compiled for.
            return unsafe { avx2(f) };
        }
    }
    f()
}
