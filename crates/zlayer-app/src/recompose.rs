//! `zlayer recompose`: a layered file's instances re-ordered, moved or hidden, and composited
//! exactly in pixels.
//!
//! The layers come from a file zlayer wrote (OpenRaster or PSD with its embedded metadata,
//! which names the scene and which layer is which instance) or from an SA-Z-synth scene
//! folder (`background.png`, the exact amodal `layer-K.png`, `meta.json`). Compositing is
//! 8-bit Porter-Duff source-over on premultiplied pixels, the synthetic world's own, so the
//! original order reproduces a synthetic image bit for bit.

use crate::Failure;
use crate::layers::{Describe, LayerRef, StackMeta, layer_name};
use std::path::Path;
use zlayer_composite::rgba::{Premul8, over_stack8, quantize8};
use zlayer_composite::{Image, Layer, LayerStack, Straight};
use zlayer_scene::Scene;

/// Instance layers over what lies beneath them, ready to edit.
#[derive(Debug, Clone)]
pub struct Layered {
    /// The stack: layers under, between and above the instances stay where they are.
    pub stack: LayerStack,
    /// The scene the instances belong to.
    pub scene: Scene,
    /// Which stack layer is which instance.
    pub refs: Vec<LayerRef>,
    /// How the layers were made, as their file says.
    pub provenance: serde_json::Value,
}

/// What to change.
#[derive(Debug, Clone, Default)]
pub struct Edit {
    /// A new order of every instance id, front-most first.
    pub order: Option<Vec<String>>,
    /// Instance ids to hide.
    pub hide: Vec<String>,
    /// Instance ids to move, by (dx, dy) canvas pixels.
    pub moves: Vec<(String, i64, i64)>,
    /// Instance ids to recolour: the new base colour, and its vocabulary name if it has one.
    pub recolours: Vec<(String, Recolour)>,
}

/// A new base colour for a layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Recolour {
    /// sRGB in [0, 1].
    pub rgb: [f32; 3],
    /// The colour word it came from (`red`, …), which replaces the caption's colour word.
    pub word: Option<String>,
}

impl Recolour {
    /// `#rrggbb` or a colour of the vocabulary (`zlayer synth --vocab`).
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(c) = zlayer_synth::vocab::Colour::from_name(s) {
            return Ok(Self {
                rgb: c.rgb().map(|v| v as f32 / 255.0),
                word: Some(s.to_string()),
            });
        }
        let hex = s
            .strip_prefix('#')
            .filter(|h| h.len() == 6 && h.chars().all(|c| c.is_ascii_hexdigit()));
        let Some(hex) = hex else {
            return Err(format!(
                "{s:?}: a colour is #rrggbb or a colour word (red, blue, …; see zlayer synth --vocab)"
            ));
        };
        let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0) as f32 / 255.0;
        Ok(Self {
            rgb: [byte(0), byte(2), byte(4)],
            word: None,
        })
    }
}

/// Rec. 709 luma of straight sRGB.
fn luma(c: [f32; 3]) -> f32 {
    0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]
}

/// Recolours `img` to base colour `rgb`, keeping its shading: each pixel becomes
/// `rgb × luma(pixel) / luma̅`, luma̅ the alpha-weighted mean luma of the layer, so a flat
/// layer takes `rgb` exactly and the ratios of lumas (shading, stripes) stay; alpha is kept.
pub fn recolour(img: &mut Image<Straight>, rgb: [f32; 3]) {
    let (sum, weight) = img.pixels.iter().fold((0.0f64, 0.0f64), |(s, w), p| {
        let a = p.0[3] as f64;
        (s + a * luma([p.0[0], p.0[1], p.0[2]]) as f64, w + a)
    });
    let mean = if weight > 0.0 {
        (sum / weight) as f32
    } else {
        0.0
    };
    for p in &mut img.pixels {
        let k = if mean > 0.0 {
            luma([p.0[0], p.0[1], p.0[2]]) / mean
        } else {
            1.0
        };
        let a = p.0[3];
        p.0 = [0, 1, 2, 3].map(|c| {
            if c < 3 {
                (rgb[c] * k).clamp(0.0, 1.0)
            } else {
                a
            }
        });
    }
}

fn user(e: impl std::fmt::Display) -> Failure {
    Failure::User(e.to_string())
}

/// The pixels of `l` that land on a `w × h` canvas at its offset: (index on the canvas,
/// index in the layer's image, pixel).
fn on_canvas(l: &Layer, (w, h): (usize, usize)) -> impl Iterator<Item = (usize, usize, &Straight)> {
    l.image
        .pixels
        .iter()
        .enumerate()
        .filter_map(move |(p, px)| {
            let x = (p % l.image.width) as i64 + l.x;
            let y = (p / l.image.width) as i64 + l.y;
            let inside = x >= 0 && y >= 0 && x < w as i64 && y < h as i64;
            inside.then(|| (y as usize * w + x as usize, p, px))
        })
}

impl Layered {
    /// The layers of a zlayer OpenRaster or PSD file (by its extension), with its metadata.
    pub fn read_file(path: &Path) -> Result<Self, Failure> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let stack = match ext.to_ascii_lowercase().as_str() {
            "ora" => zlayer_composite::ora::read_ora(path).map_err(user)?,
            "psd" => zlayer_composite::psd::read_psd(path).map_err(user)?,
            _ => {
                return Err(user(format!(
                    "{}: recompose reads .ora or .psd files written by zlayer, or a `zlayer synth --format png` scene folder",
                    path.display()
                )));
            }
        };
        let text = stack.metadata.clone().ok_or_else(|| {
            user(format!(
                "{}: no zlayer metadata in it (the scene and which layer is which instance); recompose reads files written by zlayer generate --ora/--psd or zlayer insert",
                path.display()
            ))
        })?;
        let meta: StackMeta = serde_json::from_str(&text)
            .map_err(|e| user(format!("{}: its zlayer metadata: {e}", path.display())))?;
        let ok = meta
            .layers
            .iter()
            .all(|r| r.layer < stack.layers.len() && r.instance < meta.scene.instances.len());
        if !ok {
            return Err(user(format!(
                "{}: its metadata names layers or instances the file does not have",
                path.display()
            )));
        }
        Ok(Self {
            stack,
            scene: meta.scene,
            refs: meta.layers,
            provenance: meta.provenance,
        })
    }

    /// A synthetic scene folder: the background plate, then each instance's exact amodal
    /// layer in the order it was rendered.
    pub fn read_synth(dir: &Path) -> Result<Self, Failure> {
        let read = |name: &str| -> Result<String, Failure> {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(|e| user(format!("{}: {e}", p.display())))
        };
        let meta: serde_json::Value = serde_json::from_str(&read("meta.json")?)
            .map_err(|e| user(format!("{}: {e}", dir.join("meta.json").display())))?;
        let scene: Scene = serde_json::from_value(meta["scene"].clone())
            .map_err(|e| user(format!("{}: scene: {e}", dir.join("meta.json").display())))?;
        let ranks: Vec<u64> = serde_json::from_value(meta["ranks"].clone())
            .map_err(|e| user(format!("{}: ranks: {e}", dir.join("meta.json").display())))?;
        if ranks.len() != scene.instances.len() {
            return Err(user(format!(
                "{}: one rank per instance is needed",
                dir.display()
            )));
        }
        let png = |name: String| zlayer_composite::read_png(&dir.join(name)).map_err(user);
        let mut layers = vec![Layer::new("background", png("background.png".into())?)];
        // Rank 0 is the front: draw the highest rank first.
        let mut order: Vec<usize> = (0..ranks.len()).collect();
        order.sort_by_key(|&k| std::cmp::Reverse(ranks[k]));
        let mut refs = Vec::new();
        for &k in &order {
            refs.push(LayerRef {
                layer: layers.len(),
                instance: k,
            });
            let caption = &scene.instances[k].caption;
            layers.push(Layer::new(
                layer_name(k, caption),
                png(format!("layer-{k}.png"))?,
            ));
        }
        let (width, height) = (scene.width as usize, scene.height as usize);
        Ok(Self {
            stack: LayerStack {
                width,
                height,
                layers,
                metadata: None,
            },
            scene,
            refs,
            provenance: serde_json::json!({"synth": dir, "index": meta["index"]}),
        })
    }

    fn instance(&self, id: &str) -> Result<usize, Failure> {
        self.scene.index_of(id).ok_or_else(|| {
            let ids: Vec<&str> = self.scene.instances.iter().map(|i| i.id.as_str()).collect();
            user(format!(
                "no instance {id:?} (its instances: {})",
                ids.join(", ")
            ))
        })
    }

    fn layer_of(&self, instance: usize) -> Result<usize, Failure> {
        self.refs
            .iter()
            .find(|r| r.instance == instance)
            .map(|r| r.layer)
            .ok_or_else(|| {
                user(format!(
                    "instance {:?} has no layer in the file",
                    self.scene.instances[instance].id
                ))
            })
    }

    /// Applies `edit`: the instance layers take the slots they held, in the new order (so
    /// layers that are not instances stay where they were), hidden ones stay in the file
    /// but are not drawn, recoloured ones take their new colour (and caption word), and
    /// moved ones shift with their boxes.
    pub fn apply(&mut self, edit: &Edit) -> Result<(), Failure> {
        if let Some(order) = &edit.order {
            let mut front_first = Vec::new();
            for id in order {
                let k = self.instance(id)?;
                if front_first.contains(&k) {
                    return Err(user(format!("--order names {id:?} twice")));
                }
                front_first.push(k);
            }
            let missing: Vec<&str> = self
                .refs
                .iter()
                .filter(|r| !front_first.contains(&r.instance))
                .map(|r| self.scene.instances[r.instance].id.as_str())
                .collect();
            if !missing.is_empty() {
                return Err(user(format!(
                    "--order must name every instance with a layer, front-most first; missing: {}",
                    missing.join(", ")
                )));
            }
            let mut slots: Vec<usize> = self.refs.iter().map(|r| r.layer).collect();
            slots.sort_unstable();
            let old = self.stack.layers.clone();
            let mut refs = Vec::new();
            for (slot, &k) in slots.iter().zip(front_first.iter().rev()) {
                self.stack.layers[*slot] = old[self.layer_of(k)?].clone();
                refs.push(LayerRef {
                    layer: *slot,
                    instance: k,
                });
            }
            self.refs = refs;
            self.reorder_scene(&front_first);
        }
        for id in &edit.hide {
            let l = self.layer_of(self.instance(id)?)?;
            self.stack.layers[l].visible = false;
        }
        for (id, colour) in &edit.recolours {
            let k = self.instance(id)?;
            let l = self.layer_of(k)?;
            recolour(&mut self.stack.layers[l].image, colour.rgb);
            if let Some(word) = &colour.word {
                let inst = &mut self.scene.instances[k];
                let mut words: Vec<String> = inst
                    .caption
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                match words
                    .iter()
                    .position(|w| zlayer_synth::vocab::Colour::from_name(w).is_some())
                {
                    Some(i) => words[i] = word.clone(),
                    None => words.insert(0, word.clone()),
                }
                inst.caption = words.join(" ");
                let layer = &mut self.stack.layers[l];
                layer.name = layer_name(k, &inst.caption);
            }
        }
        for (id, dx, dy) in &edit.moves {
            let k = self.instance(id)?;
            let l = self.layer_of(k)?;
            let layer = &mut self.stack.layers[l];
            layer.x += dx;
            layer.y += dy;
            let b = &mut self.scene.instances[k].bbox;
            (b.x1, b.x2) = (b.x1 + *dx as f64, b.x2 + *dx as f64);
            (b.y1, b.y2) = (b.y1 + *dy as f64, b.y2 + *dy as f64);
        }
        Ok(())
    }

    /// The scene's `occludes` for a new order: every overlapping pair, front over back.
    fn reorder_scene(&mut self, front_first: &[usize]) {
        let rank = |k: usize| front_first.iter().position(|&f| f == k);
        let boxes: Vec<_> = self.scene.instances.iter().map(|i| i.bbox).collect();
        let ids: Vec<String> = self.scene.instances.iter().map(|i| i.id.clone()).collect();
        for (k, inst) in self.scene.instances.iter_mut().enumerate() {
            let Some(rk) = rank(k) else { continue };
            inst.occludes = (0..ids.len())
                .filter(|&j| j != k && boxes[j].overlaps(boxes[k]))
                .filter(|&j| rank(j).is_some_and(|rj| rj > rk))
                .map(|j| ids[j].clone())
                .collect();
        }
    }

    /// The visible layers composited by 8-bit source-over, in stack order, clipped to the
    /// canvas.
    pub fn composite(&self) -> Image<Straight> {
        let (w, h) = (self.stack.width, self.stack.height);
        let planes: Vec<Vec<Premul8>> = self
            .stack
            .layers
            .iter()
            .filter(|l| l.visible)
            .map(|l| {
                let mut plane = vec![Premul8::default(); w * h];
                let a = quantize8(l.opacity) as u32;
                for (q, _, px) in on_canvas(l, (w, h)) {
                    let mut s = px.to_u8();
                    if a < 255 {
                        s.0[3] = zlayer_composite::rgba::div255(s.0[3] as u32 * a);
                    }
                    plane[q] = s.premultiply();
                }
                plane
            })
            .collect();
        let refs: Vec<&[Premul8]> = planes.iter().map(|p| p.as_slice()).collect();
        let mut out = vec![Premul8::default(); w * h];
        over_stack8(&refs, &mut out);
        Image {
            width: w,
            height: h,
            pixels: out.iter().map(|p| p.unpremultiply().to_f32()).collect(),
        }
    }

    /// Per canvas pixel, which layer pixel shows there: that of the topmost visible layer
    /// whose alpha (after the layer's opacity) is at least one half, as (key, index of the
    /// pixel in that layer's image). The key is the instance for instance layers and
    /// `usize::MAX - slot` for the others, so it survives re-ordering; `None` where no layer
    /// covers the pixel. Comparing two of these says what an edit revealed
    /// ([`crate::harmonise::revealed`]).
    pub fn shown(&self) -> Vec<Option<(usize, usize)>> {
        let (w, h) = (self.stack.width, self.stack.height);
        let mut shown = vec![None; w * h];
        for (slot, l) in self.stack.layers.iter().enumerate() {
            if !l.visible {
                continue;
            }
            let key = self
                .refs
                .iter()
                .find(|r| r.layer == slot)
                .map_or(usize::MAX - slot, |r| r.instance);
            for (q, p, px) in on_canvas(l, (w, h)) {
                if px.0[3] * l.opacity >= 0.5 {
                    shown[q] = Some((key, p));
                }
            }
        }
        shown
    }

    /// Each layer over a grey checkerboard (how editors show transparency), bottom first,
    /// then the composite: one picture per layer, at the canvas size.
    pub fn sheet(&self) -> Vec<Image<Straight>> {
        let (w, h) = (self.stack.width, self.stack.height);
        let cell = (w.max(h) / 16).max(4);
        let board = |x: usize, y: usize| {
            if (x / cell + y / cell).is_multiple_of(2) {
                0.8
            } else {
                0.6
            }
        };
        let mut out: Vec<Image<Straight>> = self
            .stack
            .layers
            .iter()
            .map(|l| {
                let mut img = Image::new(w, h);
                for (p, px) in img.pixels.iter_mut().enumerate() {
                    let (x, y) = (p % w, p / w);
                    let (lx, ly) = (x as i64 - l.x, y as i64 - l.y);
                    let b = board(x, y);
                    let src = (lx >= 0
                        && ly >= 0
                        && (lx as usize) < l.image.width
                        && (ly as usize) < l.image.height)
                        .then(|| l.image.pixels[ly as usize * l.image.width + lx as usize].0);
                    let [r, g, bl, a] = src.unwrap_or([0.0; 4]);
                    let a = a * l.opacity * if l.visible { 1.0 } else { 0.25 };
                    *px = Straight([
                        r * a + b * (1.0 - a),
                        g * a + b * (1.0 - a),
                        bl * a + b * (1.0 - a),
                        1.0,
                    ]);
                }
                img
            })
            .collect();
        out.push(self.composite());
        out
    }

    /// The stack with its metadata brought up to date, for writing.
    pub fn to_stack(&self) -> LayerStack {
        let describe = Describe {
            made_by: "recompose".into(),
            scene: self.scene.clone(),
            provenance: self.provenance.clone(),
        };
        LayerStack {
            metadata: Some(describe.metadata(self.refs.clone())),
            ..self.stack.clone()
        }
    }
}
