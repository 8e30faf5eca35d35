//! `zlayer generate --layers DIR / --ora FILE`: the layout branch's per-instance maps as
//! pictures and as an editable layer stack.

use crate::cli::Failure;
use std::path::Path;
use zlayer_composite::ora::write_ora;
use zlayer_composite::{BitDepth, Image, Layer, LayerStack, Straight, write_png};

/// One generated image and its instances' maps on the token grid.
pub struct InstanceLayers<'a> {
    /// The image, `size × size` RGB.
    pub image: &'a [[u8; 3]],
    /// Image side in pixels.
    pub size: usize,
    /// Token grid side.
    pub grid: usize,
    /// Per instance: the alignment head's mask probability on the grid.
    pub masks: Vec<Vec<f32>>,
    /// Per instance: its composition weight on the grid.
    pub weights: Vec<Vec<f32>>,
    /// Per instance: its caption.
    pub captions: Vec<String>,
    /// Instance indices, back-most first.
    pub draw_order: Vec<usize>,
}

/// Bilinear upsampling of a `g × g` grid to `s × s` pixels (pixel centres aligned).
pub fn upsample(grid: &[f32], g: usize, s: usize) -> Vec<f32> {
    let coord = |p: usize| {
        let c = ((p as f32 + 0.5) * g as f32 / s as f32 - 0.5).clamp(0.0, (g - 1) as f32);
        let i = (c.floor() as usize).min(g.saturating_sub(2));
        (i, (c - i as f32).min(1.0))
    };
    let mut out = vec![0.0; s * s];
    for y in 0..s {
        let (iy, fy) = coord(y);
        for x in 0..s {
            let (ix, fx) = coord(x);
            let at = |r: usize, c: usize| grid[(r).min(g - 1) * g + c.min(g - 1)];
            let top = at(iy, ix) * (1.0 - fx) + at(iy, ix + 1) * fx;
            let bottom = at(iy + 1, ix) * (1.0 - fx) + at(iy + 1, ix + 1) * fx;
            out[y * s + x] = top * (1.0 - fy) + bottom * fy;
        }
    }
    out
}

impl InstanceLayers<'_> {
    /// Each instance's share of the composed residual: w_i / Σ_j w_j (0 where no weight).
    fn shares(&self) -> Vec<Vec<f32>> {
        let l = self.grid * self.grid;
        let total: Vec<f32> = (0..l)
            .map(|p| self.weights.iter().map(|w| w[p]).sum())
            .collect();
        self.weights
            .iter()
            .map(|w| {
                (0..l)
                    .map(|p| if total[p] > 0.0 { w[p] / total[p] } else { 0.0 })
                    .collect()
            })
            .collect()
    }

    fn grey(&self, grid: &[f32]) -> Image<Straight> {
        let v = upsample(grid, self.grid, self.size);
        Image {
            width: self.size,
            height: self.size,
            pixels: v
                .iter()
                .map(|&a| {
                    let a = a.clamp(0.0, 1.0);
                    Straight([a, a, a, 1.0])
                })
                .collect(),
        }
    }

    /// `DIR/mask-K.png` (alignment head) and `DIR/weight-K.png` (share of the composition)
    /// per instance K; returns the files written.
    pub fn write_dir(&self, dir: &Path) -> Result<Vec<String>, Failure> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::User(format!("{}: {e}", dir.display())))?;
        let mut written = Vec::new();
        for (k, (mask, share)) in self.masks.iter().zip(self.shares()).enumerate() {
            for (name, grid) in [("mask", mask.as_slice()), ("weight", share.as_slice())] {
                let path = dir.join(format!("{name}-{k}.png"));
                write_png(&path, &self.grey(grid), BitDepth::Eight)
                    .map_err(|e| Failure::User(e.to_string()))?;
                written.push(path.display().to_string());
            }
        }
        Ok(written)
    }

    /// An OpenRaster stack: the image at the bottom; per instance, back to front, the image
    /// cut out by its composition share; the alignment masks as hidden layers on top.
    pub fn write_ora(&self, path: &Path) -> Result<(), Failure> {
        let s = self.size;
        let image = |alpha: Option<&[f32]>| {
            let mut img = crate::generate_cmd::rgb_image(self.image, s, s);
            if let Some(alpha) = alpha {
                for (px, a) in img.pixels.iter_mut().zip(alpha) {
                    px.0[3] = a.clamp(0.0, 1.0);
                }
            }
            img
        };
        let mut layers = vec![Layer::new("generated image", image(None))];
        let shares = self.shares();
        for &k in &self.draw_order {
            let a = upsample(&shares[k], self.grid, s);
            layers.push(Layer::new(
                format!("{k}: {}", self.captions[k]),
                image(Some(&a)),
            ));
        }
        for &k in &self.draw_order {
            let mut l = Layer::new(
                format!("{k}: {} (predicted amodal mask)", self.captions[k]),
                self.grey(&self.masks[k]),
            );
            l.visible = false;
            layers.push(l);
        }
        let stack = LayerStack {
            width: s,
            height: s,
            layers,
        };
        write_ora(path, &stack, BitDepth::Eight).map_err(|e| Failure::User(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::upsample;

    #[test]
    fn upsampling_keeps_constants_and_interpolates_between_cells() {
        let flat = upsample(&[0.3; 16], 4, 16);
        assert!(flat.iter().all(|&v| (v - 0.3).abs() < 1e-6));
        // A left-to-right ramp stays monotone and within the cell values.
        let ramp: Vec<f32> = (0..16).map(|i| (i % 4) as f32).collect();
        let up = upsample(&ramp, 4, 16);
        for y in 0..16 {
            let row = &up[y * 16..(y + 1) * 16];
            assert!(
                row.windows(2).all(|w| w[1] >= w[0] - 1e-6),
                "row {y}: {row:?}"
            );
            assert!((row[0] - 0.0).abs() < 1e-6 && (row[15] - 3.0).abs() < 1e-6);
        }
        // Pixel centres of a 4× upsampling sit 1/8, 3/8, 5/8, 7/8 of a cell past a centre;
        // the first two pixels lie before the first centre and take its value.
        for (x, want) in [(1, 0.0), (2, 0.125), (3, 0.375), (4, 0.625)] {
            assert!((up[x] - want).abs() < 1e-6, "pixel {x}: {} ≠ {want}", up[x]);
        }
    }
}
