//! `zlayer generate --model flux-dev`: FLUX.1-dev weights with the official OcclusionFormer
//! checkpoint (docs/flux-dev.md). Memory is estimated from the files' headers and checked
//! against the device before anything loads.

use super::{GenerateArgs, finish};
use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;
use zlayer_app::Failure;
use zlayer_app::device::device;
use zlayer_model::checkpoint::OcclusionFormer;
use zlayer_model::flux_dev::{
    self, Conditioning, Files, MAX_INSTANCES, Options, Transformer, available, estimate, gib,
};
use zlayer_model::layout_model::SceneLayout;

/// Pixels per token side: the VAE's 8 times FLUX's 2×2 patches.
const TOKEN_PX: usize = 16;

/// The scene's layout on the token grid, its prompt and its canvas.
struct SceneInput {
    layout: Option<SceneLayout>,
    prompt: String,
    size: (usize, usize),
}

fn scene_input(a: &GenerateArgs, path: Option<&Path>) -> Result<SceneInput, Failure> {
    let Some(path) = path else {
        return Ok(SceneInput {
            layout: None,
            prompt: a.prompt.clone().unwrap_or_default(),
            size: (1024, 1024),
        });
    };
    let loaded = zlayer_app::scene_file::load(path)?;
    let s = loaded.scene.scene();
    let (w, h) = (s.width as usize, s.height as usize);
    if !w.is_multiple_of(TOKEN_PX) || !h.is_multiple_of(TOKEN_PX) {
        return Err(Failure::User(format!(
            "{}: the canvas is {w}×{h}; FLUX.1-dev needs sides that are multiples of {TOKEN_PX} (e.g. 1024×1024): scale the scene (`zlayer scene` can convert it)",
            path.display()
        )));
    }
    if s.instances.len() > MAX_INSTANCES {
        return Err(Failure::User(format!(
            "{}: {} instances; the official OcclusionFormer takes at most {MAX_INSTANCES}",
            path.display(),
            s.instances.len()
        )));
    }
    let prompt = match (&a.prompt, s.prompt.trim()) {
        (Some(p), _) => p.clone(),
        (None, "") => s
            .instances
            .iter()
            .map(|i| i.caption.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        (None, p) => p.to_string(),
    };
    Ok(SceneInput {
        layout: Some(SceneLayout::from_scene(
            &loaded.scene,
            (h / TOKEN_PX, w / TOKEN_PX),
        )),
        prompt,
        size: (w, h),
    })
}

/// Runs `zlayer generate --model flux-dev`.
pub fn run(a: &GenerateArgs, start: std::time::Instant) -> Result<(), Failure> {
    let user = Failure::User;
    let Some(weights) = &a.weights else {
        return Err(user(
            "--model flux-dev needs --weights DIR: the FLUX.1-dev download (flux1-dev.safetensors or transformer/, ae.safetensors, text_encoder/, text_encoder_2/, tokenizer_2/)".into(),
        ));
    };
    let dev = device(a.device.as_deref())?;
    let dtype = flux_dev::run_dtype(&dev);
    let files = Files::locate(
        weights,
        a.t5_tokenizer.as_deref(),
        a.clip_tokenizer.as_deref(),
    )
    .map_err(user)?;
    let input = scene_input(a, a.scene.as_deref())?;
    let (w, h) = input.size;
    if input.layout.is_some() && a.occlusionformer.is_empty() {
        eprintln!(
            "note: no --occlusionformer checkpoint, so FLUX.1-dev draws the prompt alone; the scene's boxes and order are not used"
        );
    }
    let layout = input.layout.filter(|_| !a.occlusionformer.is_empty());
    let boxes: Vec<usize> = layout
        .iter()
        .flat_map(|l| l.instances.iter().map(|i| i.tokens.len()))
        .collect();
    let need = estimate(&files, &a.occlusionformer, (w, h), &boxes, dtype).map_err(user)?;
    match available(&dev) {
        Some(free) if need.peak() > free => {
            return Err(user(format!(
                "refusing to start: FLUX.1-dev at {w}×{h} with {} instance(s) in {dtype:?} needs about {need}, and the {} has {:.1} GiB free. Use a smaller canvas or fewer instances, free memory, or run on a larger GPU",
                boxes.len(),
                if dev.is_cpu() { "host" } else { "GPU" },
                gib(free)
            )));
        }
        Some(free) => eprintln!("memory: about {need}; {:.1} GiB free", gib(free)),
        None => eprintln!("memory: about {need}; free memory unknown"),
    }
    let ckpt = (!a.occlusionformer.is_empty())
        .then(|| {
            let paths: Vec<&Path> = a.occlusionformer.iter().map(|p| p.as_path()).collect();
            OcclusionFormer::read(&paths, &dev)
        })
        .transpose()
        .map_err(user)?;
    let spinner = ProgressBar::new_spinner();
    spinner.set_message("encoding the prompt and captions (CLIP-L, T5)");
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let captions: Vec<&str> = layout
        .iter()
        .flat_map(|l| l.instances.iter().map(|i| i.caption.as_str()))
        .collect();
    let cond = Conditioning::encode(&files, &input.prompt, &captions, dtype, &dev).map_err(user)?;
    spinner.set_message("loading the transformer");
    let model = Transformer::load(&files, ckpt.as_ref(), dtype, &dev).map_err(user)?;
    spinner.finish_and_clear();
    let opts = Options {
        steps: a.steps.unwrap_or(Options::default().steps),
        guidance: a.guidance.unwrap_or(Options::default().guidance),
        grounding_ratio: a
            .grounding_ratio
            .unwrap_or(Options::default().grounding_ratio),
        seed: a.seed,
    };
    let n = a.n as usize;
    let bar = ProgressBar::new((n * opts.steps) as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let int = |e: candle_core::Error| Failure::Internal(e.to_string());
    let mut latents = Vec::with_capacity(n);
    for k in 0..n {
        let o = Options {
            seed: opts.seed + k as u64,
            ..opts
        };
        let z = model
            .sample(&cond, layout.as_ref(), (h / 8, w / 8), &o, &|_| bar.inc(1))
            .map_err(int)?;
        latents.push(z);
    }
    bar.finish_and_clear();
    drop(model);
    let z = Tensor::cat(&latents, 0).map_err(int)?;
    let images = flux_dev::decode(&files, &z).map_err(Failure::Internal)?;
    finish(&images, &a.output, None, start)
}
