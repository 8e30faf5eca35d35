//! Bilinear resampling of planes and images, pixel centres aligned.
//!
//! The tiny model draws at its native side (64 or 128 px); users' scenes are 512 or 1024 px
//! canvases, and layers must lie on their layout in GIMP or Krita. Pixel `p` of an output of
//! side `d` samples the source at `(p + ½)·s/d − ½`, clamped to the outermost centres, which
//! is what image editors and PyTorch's `align_corners=False` do. Colour is resampled
//! premultiplied, so a transparent pixel's colour never bleeds into its neighbours.
//! Bilinear rather than bicubic: it never overshoots, so masks stay in [0, 1] and no ringing
//! appears at the hard edges of the synthetic world.

use crate::rgba::{Image, Premul, Straight};

/// Source index pairs and weights along one axis: for each output pixel, the two source
/// cells and the weight of the second.
fn taps(src: usize, dst: usize) -> Vec<(usize, usize, f32)> {
    (0..dst)
        .map(|p| {
            let c = ((p as f32 + 0.5) * src as f32 / dst as f32 - 0.5).clamp(0.0, (src - 1) as f32);
            let i = c.floor() as usize;
            let j = (i + 1).min(src - 1);
            (i, j, c - i as f32)
        })
        .collect()
}

/// Checks a plane against its size; false when either size is empty (nothing to resample).
fn is_resampled(src: &[f32], (sw, sh): (usize, usize), (dw, dh): (usize, usize)) -> bool {
    assert_eq!(
        src.len(),
        sw * sh,
        "plane of {sw}×{sh} has {} values",
        src.len()
    );
    sw > 0 && sh > 0 && dw > 0 && dh > 0
}

/// A `sw × sh` row-major plane resampled to `dw × dh`. Empty sizes give an empty plane.
pub fn bilinear(src: &[f32], (sw, sh): (usize, usize), (dw, dh): (usize, usize)) -> Vec<f32> {
    if !is_resampled(src, (sw, sh), (dw, dh)) {
        return Vec::new();
    }
    let (tx, ty) = (taps(sw, dw), taps(sh, dh));
    let mut out = Vec::with_capacity(dw * dh);
    for &(y0, y1, fy) in &ty {
        let (r0, r1) = (&src[y0 * sw..(y0 + 1) * sw], &src[y1 * sw..(y1 + 1) * sw]);
        out.extend(tx.iter().map(|&(x0, x1, fx)| {
            let top = r0[x0] + (r0[x1] - r0[x0]) * fx;
            let bottom = r1[x0] + (r1[x1] - r1[x0]) * fx;
            top + (bottom - top) * fy
        }));
    }
    out
}

/// A `sw × sh` plane shrunk to `dw × dh` by area: each output pixel is the mean of the
/// source pixels whose centres fall in its footprint (every source pixel counts once), so
/// downsampling does not alias as point-sampled bilinear does. Use [`bilinear`] to enlarge.
pub fn area(src: &[f32], (sw, sh): (usize, usize), (dw, dh): (usize, usize)) -> Vec<f32> {
    if !is_resampled(src, (sw, sh), (dw, dh)) {
        return Vec::new();
    }
    // Source pixel i belongs to output pixel floor((i + ½)·d/s): a partition of the source.
    let owner = |i: usize, s: usize, d: usize| (((2 * i + 1) * d) / (2 * s)).min(d - 1);
    let mut sum = vec![0f64; dw * dh];
    let mut count = vec![0u32; dw * dh];
    for y in 0..sh {
        let oy = owner(y, sh, dh);
        for x in 0..sw {
            let o = oy * dw + owner(x, sw, dw);
            sum[o] += src[y * sw + x] as f64;
            count[o] += 1;
        }
    }
    // An output pixel no source centre falls in (enlarging) takes the bilinear value.
    let fill = bilinear(src, (sw, sh), (dw, dh));
    (0..dw * dh)
        .map(|o| {
            if count[o] == 0 {
                fill[o]
            } else {
                (sum[o] / count[o] as f64) as f32
            }
        })
        .collect()
}

/// A plane resampler: source, its size, the output size.
type PlaneFilter = fn(&[f32], (usize, usize), (usize, usize)) -> Vec<f32>;

impl Image<Premul> {
    /// The image resampled to `width × height`.
    pub fn resized(&self, width: usize, height: usize) -> Image<Premul> {
        self.resampled(width, height, bilinear)
    }

    /// The image shrunk to `width × height` by [`area`] averaging.
    pub fn shrunk(&self, width: usize, height: usize) -> Image<Premul> {
        self.resampled(width, height, area)
    }

    fn resampled(&self, width: usize, height: usize, plane_fn: PlaneFilter) -> Image<Premul> {
        let planes: Vec<Vec<f32>> = (0..4)
            .map(|c| {
                let plane: Vec<f32> = self.pixels.iter().map(|p| p.0[c]).collect();
                plane_fn(&plane, (self.width, self.height), (width, height))
            })
            .collect();
        Image {
            width,
            height,
            pixels: (0..width * height)
                .map(|i| Premul([planes[0][i], planes[1][i], planes[2][i], planes[3][i]]))
                .collect(),
        }
    }
}

impl Image<Straight> {
    /// The image resampled to `width × height`, through premultiplied colour.
    pub fn resized(&self, width: usize, height: usize) -> Image<Straight> {
        self.map(Straight::premultiply)
            .resized(width, height)
            .map(Premul::unpremultiply)
    }

    /// The image shrunk to `width × height` by [`area`] averaging, through premultiplied
    /// colour.
    pub fn shrunk(&self, width: usize, height: usize) -> Image<Straight> {
        self.map(Straight::premultiply)
            .shrunk(width, height)
            .map(Premul::unpremultiply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook definition, one output pixel at a time.
    fn naive(src: &[f32], sw: usize, sh: usize, x: usize, y: usize, dw: usize, dh: usize) -> f32 {
        let cx = ((x as f64 + 0.5) * sw as f64 / dw as f64 - 0.5).clamp(0.0, (sw - 1) as f64);
        let cy = ((y as f64 + 0.5) * sh as f64 / dh as f64 - 0.5).clamp(0.0, (sh - 1) as f64);
        let mut v = 0.0;
        for yy in 0..sh {
            for xx in 0..sw {
                let wx = (1.0 - (cx - xx as f64).abs()).max(0.0);
                let wy = (1.0 - (cy - yy as f64).abs()).max(0.0);
                v += wx * wy * src[yy * sw + xx] as f64;
            }
        }
        v as f32
    }

    #[test]
    fn area_is_the_block_mean_on_integral_shrinks_and_keeps_the_total_on_any() {
        let mut rng = zlayer_scene::rng::Rng::new(11);
        for _ in 0..300 {
            let (dw, dh) = (1 + rng.below(8), 1 + rng.below(8));
            let (fx, fy) = (1 + rng.below(5), 1 + rng.below(5));
            let (sw, sh) = (dw * fx, dh * fy);
            let src: Vec<f32> = (0..sw * sh).map(|_| rng.f32()).collect();
            let out = area(&src, (sw, sh), (dw, dh));
            for y in 0..dh {
                for x in 0..dw {
                    let mut m = 0.0f64;
                    for yy in y * fy..(y + 1) * fy {
                        for xx in x * fx..(x + 1) * fx {
                            m += src[yy * sw + xx] as f64;
                        }
                    }
                    let want = (m / (fx * fy) as f64) as f32;
                    assert!((out[y * dw + x] - want).abs() < 1e-6);
                }
            }
            // Any shrink: a constant plane stays constant, and every source pixel counts.
            let (tw, th) = (1 + rng.below(sw), 1 + rng.below(sh));
            let flat = area(&vec![0.25; sw * sh], (sw, sh), (tw, th));
            assert!(flat.iter().all(|&v| (v - 0.25).abs() < 1e-6));
        }
    }

    #[test]
    fn matches_the_tent_filter_definition_on_random_planes() {
        let mut rng = zlayer_scene::rng::Rng::new(7);
        for _ in 0..200 {
            let (sw, sh) = (1 + rng.below(9), 1 + rng.below(9));
            let (dw, dh) = (1 + rng.below(40), 1 + rng.below(40));
            let src: Vec<f32> = (0..sw * sh).map(|_| rng.f32()).collect();
            let out = bilinear(&src, (sw, sh), (dw, dh));
            assert_eq!(out.len(), dw * dh);
            for y in 0..dh {
                for x in 0..dw {
                    let want = naive(&src, sw, sh, x, y, dw, dh);
                    let got = out[y * dw + x];
                    assert!(
                        (got - want).abs() < 1e-5,
                        "{sw}×{sh}→{dw}×{dh} at ({x},{y})"
                    );
                }
            }
        }
    }

    #[test]
    fn identity_size_and_constants_are_kept() {
        let src: Vec<f32> = (0..12).map(|i| i as f32 * 0.1).collect();
        assert_eq!(bilinear(&src, (4, 3), (4, 3)), src);
        let flat = bilinear(&[0.25; 6], (3, 2), (17, 9));
        assert!(flat.iter().all(|&v| (v - 0.25).abs() < 1e-7));
        assert!(bilinear(&src, (4, 3), (0, 5)).is_empty());
    }

    #[test]
    fn transparent_colour_does_not_bleed() {
        // Opaque red beside fully transparent green: upsampled, every pixel with any alpha
        // is pure red, as premultiplied resampling promises.
        let img = Image {
            width: 2,
            height: 1,
            pixels: vec![
                Straight([1.0, 0.0, 0.0, 1.0]),
                Straight([0.0, 1.0, 0.0, 0.0]),
            ],
        };
        let up = img.resized(8, 3);
        for p in &up.pixels {
            if p.0[3] > 1e-6 {
                assert!((p.0[0] - 1.0).abs() < 1e-5 && p.0[1].abs() < 1e-6, "{p:?}");
            }
        }
        assert!(up.pixels.iter().any(|p| p.0[3] > 0.2 && p.0[3] < 0.8));
    }
}
