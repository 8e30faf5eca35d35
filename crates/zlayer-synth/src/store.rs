//! Storage: safetensors shards for training, PNG folders for people.
//!
//! A dataset folder holds `dataset.json` (parameters, vocabulary, shard list) and, per shard,
//! `shard-NNNNN.safetensors` with u8 tensors padded to [`MAX_PER_SCENE`] instances:
//!
//! | tensor | shape |
//! |---|---|
//! | `image`, `background` | (N, S, S, 3) |
//! | `layers` | (N, 8, S, S, 4), straight alpha |
//! | `amodal`, `visible` | (N, 8, S, S) |
//! | `count` | (N,) |
//!
//! and `shard-NNNNN.jsonl`, one line per scene: its index, the native scene JSON (captions,
//! tight boxes, `occludes`), depth ranks and background. Each file is written atomically.
//! Everything in a shard can also be rendered on the fly from (seed, index, split, size).

use crate::render::{SynthScene, render};
use crate::sample::{Params, sample};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use zlayer_composite::io::{BitDepth, atomic_write, encode_grey_png, encode_png};
use zlayer_composite::{Image, Straight, Straight8};
use zlayer_scene::Scene;

/// Instances per scene in the padded shard tensors (the complex split's maximum).
pub const MAX_PER_SCENE: usize = 8;

/// What went wrong storing or loading.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// File system.
    #[error(transparent)]
    Io(#[from] zlayer_composite::IoError),
    /// Reading a file.
    #[error("{0}: {1}")]
    Read(String, std::io::Error),
    /// A shard is malformed.
    #[error("{0}: {1}")]
    Format(String, String),
}

/// One scene's metadata line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SceneMeta {
    /// Index within the seed's sequence.
    pub index: u64,
    /// Depth rank per instance (0 = front).
    pub ranks: Vec<usize>,
    /// Background kind.
    pub background: String,
    /// The native scene.
    pub scene: Scene,
}

/// The dataset description.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// Format tag.
    pub format: String,
    /// Split name.
    pub split: String,
    /// Canvas side.
    pub size: u32,
    /// Overlap probability.
    pub overlap: f32,
    /// Seed.
    pub seed: u64,
    /// Number of scenes.
    pub n: u64,
    /// Shard file stems, in order.
    pub shards: Vec<String>,
}

fn meta(s: &SynthScene) -> SceneMeta {
    SceneMeta {
        index: s.spec.index,
        ranks: s.spec.instances.iter().map(|i| i.rank).collect(),
        background: s.spec.background.name().to_string(),
        scene: s.scene.clone(),
    }
}

/// Writes scenes as one shard (`<stem>.safetensors` + `<stem>.jsonl`) in `dir`.
pub fn write_shard(dir: &Path, stem: &str, scenes: &[SynthScene]) -> Result<(), StoreError> {
    let n = scenes.len();
    let size = scenes.first().map_or(0, |s| s.spec.params.size as usize);
    let px = size * size;
    let mut image = Vec::with_capacity(n * px * 3);
    let mut background = Vec::with_capacity(n * px * 3);
    let mut layers = vec![0u8; n * MAX_PER_SCENE * px * 4];
    let mut amodal = vec![0u8; n * MAX_PER_SCENE * px];
    let mut visible = vec![0u8; n * MAX_PER_SCENE * px];
    let mut count = Vec::with_capacity(n);
    for (s, sc) in scenes.iter().enumerate() {
        if sc.spec.params.size as usize != size || sc.layers.len() > MAX_PER_SCENE {
            return Err(StoreError::Format(
                stem.into(),
                "scenes of one shard must share a size and have ≤ 8 instances".into(),
            ));
        }
        image.extend(sc.image.iter().flatten());
        background.extend(sc.background.iter().flatten());
        count.push(sc.layers.len() as u8);
        for (k, l) in sc.layers.iter().enumerate() {
            let at = (s * MAX_PER_SCENE + k) * px;
            layers[at * 4..(at + px) * 4]
                .copy_from_slice(l.iter().flat_map(|p| p.0).collect::<Vec<u8>>().as_slice());
            amodal[at..at + px].copy_from_slice(&sc.amodal[k]);
            visible[at..at + px].copy_from_slice(&sc.visible[k]);
        }
    }
    fn view(data: &[u8], shape: Vec<usize>) -> TensorView<'_> {
        TensorView::new(Dtype::U8, shape, data).expect("shape matches data")
    }
    let (m, s) = (MAX_PER_SCENE, size);
    let tensors = [
        ("image", view(&image, vec![n, s, s, 3])),
        ("background", view(&background, vec![n, s, s, 3])),
        ("layers", view(&layers, vec![n, m, s, s, 4])),
        ("amodal", view(&amodal, vec![n, m, s, s])),
        ("visible", view(&visible, vec![n, m, s, s])),
        ("count", view(&count, vec![n])),
    ];
    let bytes = safetensors::tensor::serialize(tensors, None)
        .map_err(|e| StoreError::Format(stem.into(), e.to_string()))?;
    atomic_write(&dir.join(format!("{stem}.safetensors")), |f| {
        f.write_all(&bytes)
    })?;
    let mut lines = String::new();
    for sc in scenes {
        lines += &serde_json::to_string(&meta(sc)).expect("plain data serialises");
        lines.push('\n');
    }
    atomic_write(&dir.join(format!("{stem}.jsonl")), |f| {
        f.write_all(lines.as_bytes())
    })?;
    Ok(())
}

/// Reads a shard back into scenes (the spec is re-sampled from seed and index).
pub fn read_shard(
    dir: &Path,
    stem: &str,
    seed: u64,
    params: &Params,
) -> Result<Vec<SynthScene>, StoreError> {
    let st_path = dir.join(format!("{stem}.safetensors"));
    let name = st_path.display().to_string();
    let bytes = std::fs::read(&st_path).map_err(|e| StoreError::Read(name.clone(), e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| StoreError::Format(name.clone(), e.to_string()))?;
    let get = |k: &str| {
        st.tensor(k)
            .map_err(|e| StoreError::Format(name.clone(), format!("tensor {k}: {e}")))
    };
    let (image, background, layers, amodal, visible, count) = (
        get("image")?,
        get("background")?,
        get("layers")?,
        get("amodal")?,
        get("visible")?,
        get("count")?,
    );
    let jl_path = dir.join(format!("{stem}.jsonl"));
    let text = std::fs::read_to_string(&jl_path)
        .map_err(|e| StoreError::Read(jl_path.display().to_string(), e))?;
    let size = params.size as usize;
    let px = size * size;
    let mut out = Vec::new();
    for (s, line) in text.lines().enumerate() {
        let m: SceneMeta = serde_json::from_str(line).map_err(|e| {
            StoreError::Format(
                jl_path.display().to_string(),
                format!("line {}: {e}", s + 1),
            )
        })?;
        let k = count.data()[s] as usize;
        let rgb = |d: &[u8]| {
            d[s * px * 3..(s + 1) * px * 3]
                .chunks_exact(3)
                .map(|c| [c[0], c[1], c[2]])
                .collect()
        };
        let plane = |d: &[u8], i: usize| d[(s * MAX_PER_SCENE + i) * px..][..px].to_vec();
        out.push(SynthScene {
            spec: sample(seed, m.index, params),
            image: rgb(image.data()),
            background: rgb(background.data()),
            layers: (0..k)
                .map(|i| {
                    layers.data()[(s * MAX_PER_SCENE + i) * px * 4..][..px * 4]
                        .chunks_exact(4)
                        .map(|c| Straight8([c[0], c[1], c[2], c[3]]))
                        .collect()
                })
                .collect(),
            amodal: (0..k).map(|i| plane(amodal.data(), i)).collect(),
            visible: (0..k).map(|i| plane(visible.data(), i)).collect(),
            scene: m.scene,
        });
    }
    Ok(out)
}

/// Writes one scene as a browsable folder of PNGs plus `scene.json`.
pub fn write_png_folder(dir: &Path, s: &SynthScene) -> Result<(), StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::Read(dir.display().to_string(), e))?;
    let size = s.spec.params.size as usize;
    let fmt = |e: String| StoreError::Format(dir.display().to_string(), e);
    let rgb = |v: &[[u8; 3]]| Image {
        width: size,
        height: size,
        pixels: v
            .iter()
            .map(|&[r, g, b]| Straight8([r, g, b, 255]).to_f32())
            .collect::<Vec<Straight>>(),
    };
    let put = |name: &str, bytes: Vec<u8>| atomic_write(&dir.join(name), |f| f.write_all(&bytes));
    put(
        "image.png",
        encode_png(&rgb(&s.image), BitDepth::Eight).map_err(fmt)?,
    )?;
    put(
        "background.png",
        encode_png(&rgb(&s.background), BitDepth::Eight).map_err(fmt)?,
    )?;
    for k in 0..s.layers.len() {
        let layer = Image {
            width: size,
            height: size,
            pixels: s.layers[k].iter().map(|p| p.to_f32()).collect(),
        };
        put(
            &format!("layer-{k}.png"),
            encode_png(&layer, BitDepth::Eight).map_err(fmt)?,
        )?;
        put(
            &format!("amodal-{k}.png"),
            encode_grey_png(size, size, &s.amodal[k]).map_err(fmt)?,
        )?;
        put(
            &format!("visible-{k}.png"),
            encode_grey_png(size, size, &s.visible[k]).map_err(fmt)?,
        )?;
    }
    let scene = zlayer_scene::export(&s.scene, zlayer_scene::Format::Native)
        .map_err(|e| fmt(e.to_string()))?;
    put("scene.json", scene.into_bytes())?;
    put(
        "meta.json",
        serde_json::to_vec_pretty(&meta(s)).expect("plain data serialises"),
    )?;
    Ok(())
}

/// Renders scene `index` of `seed` on the fly (what a training loader calls).
pub fn scene_at(seed: u64, index: u64, params: &Params) -> SynthScene {
    render(&sample(seed, index, params))
}
