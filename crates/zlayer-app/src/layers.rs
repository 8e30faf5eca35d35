//! `zlayer generate --layers DIR / --ora FILE`: the layout branch's per-instance maps as
//! pictures and as an editable layer stack.

use crate::Failure;
use std::path::Path;
use zlayer_composite::ora::write_ora;
use zlayer_composite::psd::write_psd;
use zlayer_composite::resample::bilinear;
use zlayer_composite::{BitDepth, Image, Layer, LayerStack, Straight, write_png};
use zlayer_scene::Scene;

/// One generated image and its instances' maps on the token grid.
pub struct InstanceLayers {
    /// The image, at the size the layers are written (the scene's canvas, or the native size).
    pub image: Image<Straight>,
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
    /// What the stack's embedded metadata says of it.
    pub describe: Option<Describe>,
}

/// What a layer stack's embedded metadata records: the scene and how it was made.
#[derive(Debug, Clone)]
pub struct Describe {
    /// The command that made it (`generate`, `insert`, `recompose`).
    pub made_by: String,
    /// The scene, in native form.
    pub scene: Scene,
    /// How it was made (model, method, seed, steps), as the command records it.
    pub provenance: serde_json::Value,
}

/// A stack's embedded metadata (`zlayer.json` in OpenRaster, XMP in PSD), as JSON.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StackMeta {
    /// The zlayer version that wrote it.
    pub zlayer: String,
    /// The command that made it.
    pub made_by: String,
    /// The scene: ids, captions, boxes, order.
    pub scene: Scene,
    /// Which layer of the stack (0 at the bottom) is which instance of the scene.
    pub layers: Vec<LayerRef>,
    /// How it was made.
    #[serde(default)]
    pub provenance: serde_json::Value,
}

/// One instance's layer in a stack.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerRef {
    /// Index in the stack, 0 at the bottom.
    pub layer: usize,
    /// Index of the instance in the scene.
    pub instance: usize,
}

impl Describe {
    /// The metadata JSON of a stack whose instance layers are `layers`.
    pub fn metadata(&self, layers: Vec<LayerRef>) -> String {
        let meta = StackMeta {
            zlayer: env!("CARGO_PKG_VERSION").into(),
            made_by: self.made_by.clone(),
            scene: self.scene.clone(),
            layers,
            provenance: self.provenance.clone(),
        };
        serde_json::to_string_pretty(&meta).expect("plain data")
    }
}

impl InstanceLayers {
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

    /// A grid map at the image's size.
    fn upsample(&self, grid: &[f32]) -> Vec<f32> {
        let (w, h) = (self.image.width, self.image.height);
        bilinear(grid, (self.grid, self.grid), (w, h))
    }

    fn grey(&self, grid: &[f32]) -> Image<Straight> {
        let v = self.upsample(grid);
        Image {
            width: self.image.width,
            height: self.image.height,
            pixels: v
                .iter()
                .map(|&a| {
                    let a = a.clamp(0.0, 1.0);
                    Straight([a, a, a, 1.0])
                })
                .collect(),
        }
    }

    /// Every map as a picture at the image's size, by file name: `mask-K.png` (the
    /// alignment head's amodal mask) and `weight-K.png` (the share of the composition) per
    /// instance K.
    pub fn maps(&self) -> Vec<(String, Image<Straight>)> {
        let shares = self.shares();
        self.masks
            .iter()
            .zip(&shares)
            .enumerate()
            .flat_map(|(k, (mask, share))| {
                [
                    (format!("mask-{k}.png"), self.grey(mask)),
                    (format!("weight-{k}.png"), self.grey(share)),
                ]
            })
            .collect()
    }

    /// [`Self::maps`] as PNGs in `dir`; returns the files written.
    pub fn write_dir(&self, dir: &Path) -> Result<Vec<String>, Failure> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::User(format!("{}: {e}", dir.display())))?;
        let mut written = Vec::new();
        for (name, img) in self.maps() {
            let path = dir.join(name);
            write_png(&path, &img, BitDepth::Eight).map_err(|e| Failure::User(e.to_string()))?;
            written.push(path.display().to_string());
        }
        Ok(written)
    }

    /// Writes [`Self::stack`] as an OpenRaster file.
    pub fn write_ora(&self, path: &Path) -> Result<(), Failure> {
        write_ora(path, &self.stack(), BitDepth::Eight).map_err(|e| Failure::User(e.to_string()))
    }

    /// Writes [`Self::stack`] as a Photoshop document (GIMP 2.10 opens it; it has no ORA
    /// loader).
    pub fn write_psd(&self, path: &Path) -> Result<(), Failure> {
        write_psd(path, &self.stack()).map_err(|e| Failure::User(e.to_string()))
    }

    /// An OpenRaster stack: the image at the bottom; per instance, back to front, the image
    /// cut out by its composition share; the alignment masks as hidden layers on top.
    pub fn stack(&self) -> LayerStack {
        let shares = self.shares();
        let alphas: Vec<Vec<f32>> = shares.iter().map(|s| self.upsample(s)).collect();
        let mut stack = cutouts(
            &self.image,
            "generated image",
            &alphas,
            &self.captions,
            &self.draw_order,
            self.describe.as_ref(),
        );
        let layers = &mut stack.layers;
        for &k in &self.draw_order {
            let mut l = Layer::new(
                format!("{k}: {} (predicted amodal mask)", self.captions[k]),
                self.grey(&self.masks[k]),
            );
            l.visible = false;
            layers.push(l);
        }
        stack
    }
}

/// A layer stack of `image`: the whole image at the bottom (named `bottom`), then per
/// instance, back to front (`draw_order`), the image cut out by its alpha at the image's size
/// and named `K: caption`; `describe` becomes its embedded metadata.
pub fn cutouts(
    image: &Image<Straight>,
    bottom: &str,
    alphas: &[Vec<f32>],
    captions: &[String],
    draw_order: &[usize],
    describe: Option<&Describe>,
) -> LayerStack {
    let cut: Vec<Image<Straight>> = alphas
        .iter()
        .map(|alpha| {
            let mut img = image.clone();
            for (px, a) in img.pixels.iter_mut().zip(alpha) {
                px.0[3] = a.clamp(0.0, 1.0);
            }
            img
        })
        .collect();
    stack_of(image.clone(), bottom, cut, captions, draw_order, describe)
}

/// A layer stack: `bottom` (named `bottom_name`) at the bottom, then each instance's layer
/// (indexed as the scene's instances) back to front by `draw_order`, named `K: caption`;
/// `describe` becomes its embedded metadata, which says which layer is which instance.
pub fn stack_of(
    bottom: Image<Straight>,
    bottom_name: &str,
    mut instances: Vec<Image<Straight>>,
    captions: &[String],
    draw_order: &[usize],
    describe: Option<&Describe>,
) -> LayerStack {
    let (width, height) = (bottom.width, bottom.height);
    let mut layers = vec![Layer::new(bottom_name, bottom)];
    for &k in draw_order {
        let img = std::mem::replace(
            &mut instances[k],
            Image {
                width: 0,
                height: 0,
                pixels: Vec::new(),
            },
        );
        layers.push(Layer::new(layer_name(k, &captions[k]), img));
    }
    LayerStack {
        width,
        height,
        layers,
        metadata: describe.map(|d| d.metadata(layer_refs(draw_order))),
    }
}

/// The name of instance `k`'s layer: `K: caption`.
pub fn layer_name(k: usize, caption: &str) -> String {
    format!("{k}: {caption}")
}

/// Which stack layer is which instance when the instances sit above one bottom layer, back
/// to front by `draw_order`.
pub fn layer_refs(draw_order: &[usize]) -> Vec<LayerRef> {
    draw_order
        .iter()
        .enumerate()
        .map(|(j, &k)| LayerRef {
            layer: j + 1,
            instance: k,
        })
        .collect()
}

/// Writes `stack` as OpenRaster to `ora` and as PSD to `psd`, where given, and says so.
pub fn write_files(
    stack: &LayerStack,
    ora: Option<&Path>,
    psd: Option<&Path>,
) -> Result<(), Failure> {
    fn user(e: impl std::fmt::Display) -> Failure {
        Failure::User(e.to_string())
    }
    if let Some(path) = ora {
        write_ora(path, stack, BitDepth::Eight).map_err(user)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = psd {
        write_psd(path, stack).map_err(user)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
