//! Scenes on the token grid, and a batch of them as the tensors the layout branch reads:
//! what stage 2 (DESIGN.md §4.3) consumes, apart from the model.

use crate::base::BaseModel;
use crate::layout::{Packing, box_points};
use crate::regional::Regional;
use candle_core::{Result, Tensor};
use zlayer_scene::TokenGrid;
use zlayer_scene::ValidScene;

/// Depth levels `global-rank` embeds; deeper instances share the last.
pub const RANK_LEVELS: usize = 16;

/// One instance on the token grid.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceLayout {
    /// Its caption, in the model's vocabulary.
    pub caption: String,
    /// Box `[x1, y1, x2, y2]` normalised to [0, 1].
    pub bbox: [f32; 4],
    /// Row-major tokens its box covers (at-least-one-token rule).
    pub tokens: Vec<usize>,
    /// Soft box mask (L,): the covered fraction of each token.
    pub soft: Vec<f32>,
    /// Indices (in its scene) of the instances in front of it.
    pub occluders: Vec<usize>,
    /// Its depth level: 0 for the front-most, one more than its deepest occluder otherwise.
    pub level: usize,
    /// Ground-truth amodal mask on the grid (L,), 1 inside, for the alignment loss.
    pub amodal: Option<Vec<f32>>,
}

/// A scene's instances on the token grid.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneLayout {
    /// The instances, in scene order.
    pub instances: Vec<InstanceLayout>,
}

impl SceneLayout {
    /// A validated scene on an `h × w` token grid (no amodal targets).
    pub fn from_scene(scene: &ValidScene, grid: (usize, usize)) -> Self {
        let s = scene.scene();
        let g = TokenGrid::new(grid.1, grid.0);
        let (w, h) = (s.width as f32, s.height as f32);
        let instances = s
            .instances
            .iter()
            .enumerate()
            .map(|(i, inst)| InstanceLayout {
                caption: inst.caption.clone(),
                bbox: [
                    inst.bbox.x1 as f32 / w,
                    inst.bbox.y1 as f32 / h,
                    inst.bbox.x2 as f32 / w,
                    inst.bbox.y2 as f32 / h,
                ],
                tokens: g.box_tokens(inst.bbox, s.width, s.height),
                soft: g.soft_box_mask(inst.bbox, s.width, s.height).data,
                occluders: scene.graph().occluders(i).to_vec(),
                level: scene.graph().depth_levels()[i],
                amodal: None,
            })
            .collect();
        Self { instances }
    }
}

/// A batch of layouts as tensors (everything but the trainable layout tokens).
#[derive(Clone)]
pub struct Prepared {
    /// The packed instances.
    pub packing: Packing,
    /// Pooled captions (N, pooled), from the frozen text encoder.
    pub pooled: Tensor,
    /// Box points (N, 72).
    pub points: Tensor,
    /// Soft masks (N, L).
    pub masks: Tensor,
    /// Occluders as indices into 0..N.
    pub occluders: Vec<Vec<usize>>,
    /// Amodal targets (N, L), when every instance has one.
    pub amodal: Option<Tensor>,
    /// Per-scene regional sequences, for the `global` variants.
    pub regional: Option<Regional>,
    /// Depth levels (N,) u32, clamped to [`RANK_LEVELS`].
    pub levels: Tensor,
    grid: (usize, usize),
}

impl Prepared {
    /// The same layouts with every declared occlusion reversed (j occludes i becomes i
    /// occludes j).
    pub fn reversed(&self) -> Self {
        let mut r = self.clone();
        r.occluders = vec![Vec::new(); self.occluders.len()];
        for (i, occ) in self.occluders.iter().enumerate() {
            for &j in occ {
                r.occluders[j].push(i);
            }
        }
        r
    }

    /// Tensors for a batch of scene layouts on `grid`, with each instance's pooled caption
    /// (N, pooled) from whatever text encoder the model uses; `regional` adds the per-scene
    /// sequences of the `global` variants.
    pub fn new(
        scenes: &[SceneLayout],
        grid: (usize, usize),
        pooled: Tensor,
        regional: bool,
    ) -> Result<Self> {
        let dev = pooled.device().clone();
        let l = grid.0 * grid.1;
        let mut boxes = Vec::new();
        let (mut points, mut masks, mut occluders, mut amodal) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut levels = Vec::new();
        for (s, scene) in scenes.iter().enumerate() {
            let first = boxes.len();
            for inst in &scene.instances {
                if inst.soft.len() != l {
                    candle_core::bail!("a soft mask has {} tokens, the grid {l}", inst.soft.len());
                }
                let b = inst.bbox;
                let centre = [
                    0.0,
                    (b[1] + b[3]) / 2.0 * grid.0 as f32,
                    (b[0] + b[2]) / 2.0 * grid.1 as f32,
                ];
                boxes.push((s, inst.tokens.clone(), centre));
                levels.push(inst.level.min(RANK_LEVELS - 1) as u32);
                points.extend_from_slice(&box_points(b));
                masks.extend_from_slice(&inst.soft);
                occluders.push(
                    inst.occluders
                        .iter()
                        .map(|&j| first + j)
                        .collect::<Vec<_>>(),
                );
                if let Some(a) = &inst.amodal {
                    amodal.extend_from_slice(a);
                }
            }
        }
        let n = boxes.len();
        if n == 0 {
            candle_core::bail!("no instances in the batch");
        }
        if pooled.dim(0)? != n {
            candle_core::bail!("{} pooled captions for {n} instances", pooled.dim(0)?);
        }
        let dtype = pooled.dtype();
        let img_ids = BaseModel::image_ids(scenes.len(), grid.0, grid.1, &dev)?;
        let regional = regional
            .then(|| Regional::new(&boxes, scenes.len(), &img_ids))
            .transpose()?;
        Ok(Self {
            packing: Packing::new(&boxes, scenes.len(), &img_ids)?,
            regional,
            levels: Tensor::from_vec(levels, n, &dev)?,
            pooled,
            points: Tensor::from_vec(points, (n, 72), &dev)?.to_dtype(dtype)?,
            masks: Tensor::from_vec(masks, (n, l), &dev)?.to_dtype(dtype)?,
            occluders,
            amodal: (amodal.len() == n * l)
                .then(|| Tensor::from_vec(amodal, (n, l), &dev))
                .transpose()?,
            grid,
        })
    }

    /// The token grid (h, w) it was prepared for.
    pub fn grid_size(&self) -> (usize, usize) {
        self.grid
    }
}
