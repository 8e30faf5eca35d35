//! Layer stacks: named RGBA layers with offsets, opacity and visibility, bottom first.

use crate::rgba::{Image, Premul, Straight};

/// One layer of a stack.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// Display name.
    pub name: String,
    /// Straight-alpha pixels.
    pub image: Image<Straight>,
    /// Offset of the layer's left edge on the canvas.
    pub x: i64,
    /// Offset of the layer's top edge on the canvas.
    pub y: i64,
    /// Opacity in [0, 1], applied on top of the pixels' alpha.
    pub opacity: f32,
    /// Hidden layers are kept but not composed.
    pub visible: bool,
}

/// Layers over a canvas, bottom first (index 0 is drawn first).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerStack {
    /// Canvas width.
    pub width: usize,
    /// Canvas height.
    pub height: usize,
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    /// zlayer's description of the stack (JSON: the scene, how it was made, which layer is
    /// which instance), embedded in the file: a `zlayer.json` entry in OpenRaster, an XMP
    /// packet in PSD.
    pub metadata: Option<String>,
}

impl Layer {
    /// A visible, opaque layer at the origin.
    pub fn new(name: impl Into<String>, image: Image<Straight>) -> Self {
        Self {
            name: name.into(),
            image,
            x: 0,
            y: 0,
            opacity: 1.0,
            visible: true,
        }
    }
}

impl LayerStack {
    /// A stack whose canvas just holds every layer placed at the origin.
    pub fn from_layers(layers: Vec<Layer>) -> Self {
        let width = layers.iter().map(|l| l.image.width).max().unwrap_or(0);
        let height = layers.iter().map(|l| l.image.height).max().unwrap_or(0);
        Self {
            width,
            height,
            layers,
            metadata: None,
        }
    }

    /// Composes the visible layers by source-over, in stack order, clipped to the canvas.
    pub fn composite(&self) -> Image<Premul> {
        let mut out = Image::<Premul>::new(self.width, self.height);
        for l in self.layers.iter().filter(|l| l.visible && l.opacity > 0.0) {
            let img = &l.image;
            let x0 = l.x.clamp(0, self.width as i64) as usize;
            let x1 = (l.x + img.width as i64).clamp(0, self.width as i64) as usize;
            let y0 = l.y.clamp(0, self.height as i64) as usize;
            let y1 = (l.y + img.height as i64).clamp(0, self.height as i64) as usize;
            for y in y0..y1 {
                let sy = (y as i64 - l.y) as usize;
                for x in x0..x1 {
                    let sx = (x as i64 - l.x) as usize;
                    let src = img.pixels[sy * img.width + sx]
                        .premultiply()
                        .scale(l.opacity);
                    let d = &mut out.pixels[y * self.width + x];
                    *d = src.over(*d);
                }
            }
        }
        out
    }

    /// The composite as straight alpha, ready to save.
    pub fn flatten(&self) -> Image<Straight> {
        self.composite().map(Premul::unpremultiply)
    }
}

/// Downscales to fit in `max_side` pixels (box filter on premultiplied pixels), keeping the
/// aspect ratio; images already small enough are returned as they are.
pub fn thumbnail(img: &Image<Straight>, max_side: usize) -> Image<Straight> {
    let longest = img.width.max(img.height);
    if longest <= max_side || longest == 0 {
        return img.clone();
    }
    let tw = (img.width * max_side).div_ceil(longest).max(1);
    let th = (img.height * max_side).div_ceil(longest).max(1);
    let mut out = Image::<Straight>::new(tw, th);
    for ty in 0..th {
        let (ya, yb) = (
            ty * img.height / th,
            ((ty + 1) * img.height / th).max(ty * img.height / th + 1),
        );
        for tx in 0..tw {
            let (xa, xb) = (
                tx * img.width / tw,
                ((tx + 1) * img.width / tw).max(tx * img.width / tw + 1),
            );
            let mut acc = [0.0f32; 4];
            for y in ya..yb {
                for x in xa..xb {
                    let p = img.pixels[y * img.width + x].premultiply();
                    for (a, v) in acc.iter_mut().zip(p.0) {
                        *a += v;
                    }
                }
            }
            let n = ((yb - ya) * (xb - xa)) as f32;
            out.pixels[ty * tw + tx] = Premul(acc.map(|v| v / n)).unpremultiply();
        }
    }
    out
}
