//! The official OcclusionFormer checkpoint in its published forms: LoRA adapters and layout
//! modules by diffusers module names, applied onto a BFL-named base.

use super::{Adapter, Tensors, fuse, merge_one, read, split_peft, targets};
use crate::config::Config;
use candle_core::Device;
use std::collections::HashMap;
use std::path::Path;

/// Key prefixes the published OcclusionFormer files put before the module names.
const PREFIXES: [&str; 5] = [
    "lora::",
    "layout::",
    "base_model.model.",
    "transformer.",
    "model.",
];

/// Layout-only modules inside a block.
const LAYOUT_PARTS: [&str; 3] = ["layout_forward.", "norm1_layout.", "mask_predictor."];

/// An OcclusionFormer checkpoint, by diffusers module names: the LoRA adapters and the
/// layout modules (`layout_net.*`, and per block `layout_forward`, `norm1_layout`,
/// `mask_predictor`).
#[derive(Debug, Clone, Default)]
pub struct OcclusionFormer {
    /// LoRA adapters by module (`transformer_blocks.0.attn.to_q`).
    pub adapters: HashMap<String, Adapter>,
    /// Layout module tensors by key.
    pub layout: Tensors,
}

impl OcclusionFormer {
    /// Reads the published files, in any of their forms, merged: `lora.safetensors` (diffusers
    /// `lora_A.weight` or PEFT `lora_A.default.weight` keys, with or without `transformer.`),
    /// the layout weights `occ.pth` / `layout.pth` (a PyTorch pickle), and
    /// `bundle_weights.safetensors` (`lora::` and `layout::` prefixes).
    pub fn read(paths: &[&Path], dev: &Device) -> Result<Self, String> {
        let mut all = Tensors::new();
        for p in paths {
            let t = match p.extension().and_then(|e| e.to_str()) {
                Some("pth" | "pt" | "bin" | "ckpt") => candle_core::pickle::read_all(p)
                    .map_err(|e| format!("{}: {e}", p.display()))?
                    .into_iter()
                    .map(|(k, v)| v.to_device(dev).map(|v| (k, v)))
                    .collect::<candle_core::Result<Tensors>>()
                    .map_err(|e| format!("{}: {e}", p.display()))?,
                _ => read(p, dev)?,
            };
            all.extend(t);
        }
        let ckpt = Self::from_tensors(all)?;
        if ckpt.adapters.is_empty() && ckpt.layout.is_empty() {
            let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            return Err(format!(
                "{}: no OcclusionFormer LoRA (`*.lora_A.weight`) or layout weights (`layout_net.*`, `*.layout_forward.*`)",
                names.join(", ")
            ));
        }
        Ok(ckpt)
    }

    /// From named tensors in any of the published key forms; other tensors (the base
    /// transformer's, in a full state dict) are left out.
    pub fn from_tensors(t: Tensors) -> Result<Self, String> {
        let t: Tensors = t
            .into_iter()
            .map(|(mut k, v)| {
                while let Some(p) = PREFIXES.iter().find(|p| k.starts_with(*p)) {
                    k = k[p.len()..].to_string();
                }
                (
                    k.replace(".lora_A.weight", ".lora_A.default.weight")
                        .replace(".lora_B.weight", ".lora_B.default.weight"),
                    v,
                )
            })
            .collect();
        let (rest, adapters) = split_peft(t)?;
        let layout = rest
            .into_iter()
            .filter(|(k, _)| {
                k.starts_with("layout_net.")
                    || LAYOUT_PARTS.iter().any(|p| k.contains(&format!(".{p}")))
            })
            .collect();
        Ok(Self { adapters, layout })
    }

    /// The blocks its layout weights belong to: (double, single), sorted.
    pub fn branch_blocks(&self) -> (Vec<usize>, Vec<usize>) {
        let blocks = |kind: &str| {
            let mut v: Vec<usize> = self
                .layout
                .keys()
                .filter_map(|k| k.strip_prefix(kind)?.split('.').next()?.parse().ok())
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        (
            blocks("transformer_blocks."),
            blocks("single_transformer_blocks."),
        )
    }

    /// Puts the checkpoint onto base weights `base` (zlayer's BFL names, see
    /// [`diffusers_to_bfl`]) for a [`crate::dit::Flux`] whose blocks `double` and `single`
    /// have the layout branch; returns the weights and the rank to attach the branch with.
    ///
    /// The official semantics: LoRA (scale 1, no alpha/r) stays on in every pass of a block
    /// without a branch, so it is merged there; in a block with one it is off in the global
    /// pass and on in the branch, so it becomes the branch's adapter, fused where BFL fuses
    /// the projections (A stacked, B block-diagonal).
    pub fn apply(
        &self,
        mut base: Tensors,
        cfg: &Config,
        double: &[usize],
        single: &[usize],
    ) -> Result<(Tensors, usize), String> {
        // A fused module stacks at most four adapters (a single block's q, k, v and MLP input).
        let rank = self
            .adapters
            .values()
            .map(|a| a.a.dims()[0])
            .max()
            .unwrap_or(1)
            * 4;
        for k in self.layout.keys().filter(|k| k.starts_with("layout_net.")) {
            base.insert(k.clone(), self.layout[k].clone());
        }
        let kinds = [
            (
                true,
                cfg.depth,
                "transformer_blocks",
                "double_blocks",
                double,
            ),
            (
                false,
                cfg.depth_single_blocks,
                "single_transformer_blocks",
                "single_blocks",
                single,
            ),
        ];
        for (is_double, depth, from, to, branch) in kinds {
            for i in 0..depth {
                let (d, b) = (format!("{from}.{i}"), format!("{to}.{i}"));
                let with_branch = branch.contains(&i);
                for (module, parts, inp) in targets(cfg, is_double) {
                    let found: Vec<(Option<&Adapter>, usize)> = parts
                        .iter()
                        .map(|(m, n)| (self.adapters.get(&format!("{d}.{m}")), *n))
                        .collect();
                    if !with_branch && found.iter().all(|f| f.0.is_none()) {
                        continue;
                    }
                    let ad = fuse(&found, inp, rank)?;
                    if with_branch {
                        base.insert(format!("{b}.lora.{module}.lora_A.weight"), ad.a);
                        base.insert(format!("{b}.lora.{module}.lora_B.weight"), ad.b);
                    } else {
                        merge_one(&mut base, &format!("{b}.{module}"), &ad, 1.0)?;
                    }
                }
                if with_branch {
                    for (k, v) in &self.layout {
                        if let Some(rest) = k.strip_prefix(&format!("{d}."))
                            && LAYOUT_PARTS.iter().any(|p| rest.starts_with(p))
                        {
                            base.insert(format!("{b}.{rest}"), v.clone());
                        }
                    }
                }
            }
        }
        Ok((base, rank))
    }
}
