//! The `global` baselines' sequences (EliGen/GLIGEN-like regional attention): one sequence
//! per scene, its layout tokens (padded to the most instances of any scene in the batch) and
//! then its whole canvas. An image token attends to every image token and to the layout
//! tokens of the boxes that contain it; a layout token attends to itself and its box. No
//! instance has a layer of its own, so there is nothing to order: overlaps mix implicitly.

use crate::layers::masked_attention;
use candle_core::{Result, Tensor};

/// Bias for a masked-out key.
const MASKED: f32 = -1e9;

/// Index tables and the attention bias of per-scene regional sequences.
#[derive(Debug, Clone)]
pub struct Regional {
    /// Instances N.
    pub n: usize,
    /// Layout slots per scene: the most instances of any scene.
    pub slots: usize,
    /// Tokens per canvas L.
    pub tokens: usize,
    /// (B·slots,) u32 instance of each slot, or N (a zero row) for padding.
    gather: Tensor,
    /// (N,) u32 slot of each instance in the flattened (B·slots) layout part.
    scatter: Tensor,
    /// (B, 1, S, S) additive attention bias, S = slots + L.
    pub bias: Tensor,
    /// (B, S, 3) RoPE ids: the layout tokens', then the canvas'.
    pub ids: Tensor,
}

impl Regional {
    /// `boxes[n] = (scene b, token indices inside the box, layout token's RoPE id)`, as for
    /// [`crate::layout::Packing::new`], with `img_ids` (B, L, 3) the canvases' RoPE ids.
    pub fn new(
        boxes: &[(usize, Vec<usize>, [f32; 3])],
        batch: usize,
        img_ids: &Tensor,
    ) -> Result<Self> {
        let dev = img_ids.device();
        let (_, l, _) = img_ids.dims3()?;
        crate::layout::check_boxes(boxes, batch, l)?;
        let n = boxes.len();
        let mut per_scene = vec![Vec::new(); batch];
        for (k, (b, _, _)) in boxes.iter().enumerate() {
            per_scene[*b].push(k);
        }
        let slots = per_scene.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let s = slots + l;
        let ids_flat: Vec<f32> = img_ids.flatten_all()?.to_vec1()?;
        let mut gather = vec![n as u32; batch * slots];
        let mut scatter = vec![0u32; n];
        let mut bias = vec![MASKED; batch * s * s];
        let mut ids = vec![0f32; batch * s * 3];
        for (b, members) in per_scene.iter().enumerate() {
            let bias = &mut bias[b * s * s..][..s * s];
            let ids = &mut ids[b * s * 3..][..s * 3];
            ids[slots * 3..].copy_from_slice(&ids_flat[b * l * 3..][..l * 3]);
            for q in slots..s {
                bias[q * s + slots..(q + 1) * s].fill(0.0);
            }
            for j in 0..slots {
                bias[j * s + j] = 0.0; // every slot sees itself, so no row is all masked
            }
            for (j, &k) in members.iter().enumerate() {
                gather[b * slots + j] = k as u32;
                scatter[k] = (b * slots + j) as u32;
                ids[j * 3..][..3].copy_from_slice(&boxes[k].2);
                for &p in &boxes[k].1 {
                    bias[j * s + slots + p] = 0.0;
                    bias[(slots + p) * s + j] = 0.0;
                }
            }
        }
        Ok(Self {
            n,
            slots,
            tokens: l,
            gather: Tensor::from_vec(gather, batch * slots, dev)?,
            scatter: Tensor::from_vec(scatter, n, dev)?,
            bias: Tensor::from_vec(bias, (batch, 1, s, s), dev)?,
            ids: Tensor::from_vec(ids, (batch, s, 3), dev)?,
        })
    }

    /// Sequences (B, slots + L, D): each scene's layout tokens from `layout` (N, D), zeros for
    /// empty slots, then its canvas from `img` (B, L, D).
    pub fn pack(&self, layout: &Tensor, img: &Tensor) -> Result<Tensor> {
        let (b, _, d) = img.dims3()?;
        let rows = Tensor::cat(
            &[
                layout,
                &Tensor::zeros((1, d), layout.dtype(), layout.device())?,
            ],
            0,
        )?;
        let lay = rows
            .index_select(&self.gather, 0)?
            .reshape((b, self.slots, d))?;
        Tensor::cat(&[&lay, img], 1)
    }

    /// The canvases (B, L, D) of sequences (B, slots + L, D), and the layout tokens (N, D).
    pub fn unpack(&self, seq: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, _, d) = seq.dims3()?;
        let lay = seq
            .narrow(1, 0, self.slots)?
            .reshape((b * self.slots, d))?
            .index_select(&self.scatter, 0)?;
        Ok((seq.narrow(1, self.slots, self.tokens)?, lay))
    }

    /// Regional attention: q, k, v (B, H, S, Dh) → (B, S, H·Dh).
    pub fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        pe: &(Tensor, Tensor),
    ) -> Result<Tensor> {
        masked_attention(q, k, v, pe, Some(&self.bias))
    }
}
