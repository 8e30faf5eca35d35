//! The held-out report of a GRPO run: the validation scenes drawn with the current
//! branch, scored with the full metric suite, plus the held-out flow loss and colour
//! presence, one row per report in `OUT/heldout.csv` (drawn as `OUT/heldout.png`).

use super::GrpoConfig;
use crate::data::{scenes, synth_layout, to_tensor};
use crate::method::SceneSampler;
use crate::model::Model;
use crate::protocol::{Protocol, name, score, write_truth};
use crate::tune::VALIDATION_SEED;
use crate::{Failure, internal, user};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use zlayer_composite::atomic_write;
use zlayer_metrics::eval::read_rgb;
use zlayer_metrics::reward::{Colour, Reward, Seen, Truth};
use zlayer_model::layout_model::LayoutModel;
use zlayer_model::train::export_f16;
use zlayer_synth::{Split, SynthScene};

/// The held-out report: validation scenes, their truth on disk, and `heldout.csv`.
pub(super) struct Heldout<'a> {
    m: &'a Model,
    c: &'a GrpoConfig,
    held: Vec<SynthScene>,
    gt: PathBuf,
    dir: PathBuf,
}

/// The columns of `heldout.csv`.
const HELDOUT_COLUMNS: &str = "iteration,order_accuracy,occ_f1,whdr,mask_miou,mask_o_miou,boundary_f,halo_l1,flow_loss,colour";

impl<'a> Heldout<'a> {
    pub(super) fn new(
        m: &'a Model,
        c: &'a GrpoConfig,
        splits: &[Split],
        out: &Path,
    ) -> Result<Self, Failure> {
        let dir = out.join("heldout");
        let held = scenes(
            c.seed + VALIDATION_SEED,
            0,
            c.eval_scenes * splits.len(),
            m.size as u32,
            splits,
        );
        let gt = if c.eval_every > 0 && !held.is_empty() {
            write_truth(&held, &dir, m.size)?.0
        } else {
            dir.join("gt")
        };
        Ok(Self {
            m,
            c,
            held,
            gt,
            dir,
        })
    }

    /// Draws and scores the validation scenes with the current weights; one row per
    /// iteration in `heldout.csv` (a resumed run replaces its own).
    pub(super) fn report(
        &self,
        policy: &LayoutModel,
        vm: &VarMap,
        start_meta: &serde_json::Value,
        it: usize,
        dev: &Device,
    ) -> Result<(), Failure> {
        if self.held.is_empty() {
            return Ok(());
        }
        let weights = self.dir.join(format!("layout-{it:05}.safetensors"));
        let named: std::collections::HashMap<String, Tensor> = vm
            .data()
            .lock()
            .expect("var map lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        export_f16(&named, &weights, start_meta).map_err(Failure::Internal)?;
        let sampler = SceneSampler::from_file(&weights, self.m.base.clone(), dev)?;
        let seed = self.c.seed + VALIDATION_SEED;
        let p = Protocol {
            m: self.m,
            dev,
            seed,
            steps: self.c.eval_steps,
            batch: 8,
            ratio: None,
            score_only: false,
        };
        let images = self.dir.join(format!("iteration-{it:05}"));
        p.generate(Some(&sampler), &self.held, &images)?;
        let row = score(
            &self.dir.join("eval"),
            &format!("iteration {it}"),
            &images,
            &self.gt,
            0.0,
            None,
        )?;
        let flow = self.flow_loss(policy, dev).map_err(internal)?;
        let colour = self.colour(&images)?;
        let s = &row.summary;
        let f = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.5}"));
        let line = format!(
            "{it},{},{},{},{},{},{},{},{flow:.5},{colour:.5}",
            f(s.order_accuracy),
            f(s.occ_f1),
            f(s.whdr),
            f(s.mask_miou),
            f(s.mask_o_miou),
            f(s.boundary_f),
            f(s.halo_l1)
        );
        eprintln!(
            "held-out at iteration {it}: order {} Occ. F1 {} mIoU {} boundary F {} flow {flow:.4} colour {colour:.3}",
            f(s.order_accuracy),
            f(s.occ_f1),
            f(s.mask_miou),
            f(s.boundary_f)
        );
        let path = self.csv();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut rows: Vec<String> = text
            .lines()
            .skip(1)
            .filter(|l| l.split(',').next() != Some(&it.to_string()))
            .map(str::to_string)
            .collect();
        rows.push(line);
        rows.sort_by_key(|l| l.split(',').next().and_then(|x| x.parse::<usize>().ok()));
        let body = std::iter::once(HELDOUT_COLUMNS.to_string())
            .chain(rows)
            .map(|l| l + "\n")
            .collect::<String>();
        atomic_write(&path, |f| f.write_all(body.as_bytes())).map_err(user)
    }

    /// Whether `heldout.csv` has iteration `it`'s row.
    pub(super) fn has(&self, it: usize) -> bool {
        std::fs::read_to_string(self.csv()).is_ok_and(|t| {
            t.lines()
                .skip(1)
                .any(|l| l.split(',').next() == Some(&it.to_string()))
        })
    }

    fn csv(&self) -> PathBuf {
        self.dir.with_file_name("heldout.csv")
    }

    /// The flow loss of the validation scenes at fixed noise, in batches of 8.
    fn flow_loss(&self, policy: &LayoutModel, dev: &Device) -> candle_core::Result<f64> {
        let size = self.m.size as u32;
        let g = self.m.size / self.m.vae.cfg.factor();
        let (mut sum, mut count) = (0.0, 0usize);
        for (k, chunk) in self.held.chunks(8).enumerate() {
            let x0 = self.m.vae.encode_tokens(&to_tensor(chunk, size, dev)?)?;
            let prompts: Vec<&str> = chunk.iter().map(|s| s.scene.prompt.as_str()).collect();
            let ids = policy
                .base
                .tokenizer
                .batch(&prompts, policy.base.max_len, dev)
                .map_err(candle_core::Error::wrap)?;
            let layouts = chunk
                .iter()
                .map(|s| synth_layout(s, (g, g), false))
                .collect::<Result<Vec<_>, _>>()
                .map_err(candle_core::Error::msg)?;
            let p = policy.prepare(&layouts, (g, g), dev)?;
            let (_, flow, _) = policy.loss(&x0, &ids, &p, 0x5EED ^ k as u64)?;
            sum += flow as f64 * chunk.len() as f64;
            count += chunk.len();
        }
        Ok(sum / count.max(1) as f64)
    }

    /// Colour presence over the generated validation images.
    fn colour(&self, images: &Path) -> Result<f64, Failure> {
        let (mut sum, mut count) = (0.0, 0usize);
        for (k, s) in self.held.iter().enumerate() {
            let truth = Truth::from_synth(s).map_err(Failure::Internal)?;
            let (_, _, img) = read_rgb(&images.join(format!("{}.png", name(k)))).map_err(user)?;
            if let Some(v) = Colour.score(&Seen::new(&img, &truth), &truth) {
                sum += v;
                count += 1;
            }
        }
        Ok(sum / count.max(1) as f64)
    }

    /// Draws `heldout.csv`'s order accuracy, Occ. F1, mIoU and boundary F as `heldout.png`.
    pub(super) fn plot(&self) -> Result<(), Failure> {
        let Ok(text) = std::fs::read_to_string(self.csv()) else {
            return Ok(());
        };
        let rows: Vec<Vec<f64>> = text
            .lines()
            .skip(1)
            .map(|l| {
                l.split(',')
                    .map(|x| x.parse().unwrap_or(f64::NAN))
                    .collect()
            })
            .collect();
        let series = [
            (1, "order accuracy"),
            (2, "Occ. F1"),
            (4, "mask mIoU"),
            (6, "boundary F"),
            (9, "colour"),
        ]
        .iter()
        .map(|&(col, label)| zlayer_composite::annotate::Series {
            label: label.into(),
            points: rows
                .iter()
                .filter(|r| r.len() > col && r[col].is_finite())
                .map(|r| (r[0], r[col]))
                .collect(),
        })
        .collect::<Vec<_>>();
        let img = zlayer_composite::annotate::line_chart(
            "held-out scores",
            "iteration",
            &series,
            720,
            400,
        )
        .ok_or_else(|| Failure::Internal("no canvas".into()))?;
        zlayer_composite::write_png(
            &self.dir.with_file_name("heldout.png"),
            &img,
            zlayer_composite::BitDepth::Eight,
        )
        .map_err(user)
    }
}
