//! Generate jobs: a bounded queue, a fixed pool of worker threads running the pipeline off
//! the async executor, progress and cancellation through the sampler's step observer, and
//! results kept for a bounded time and count.
//!
//! The shape follows meilisearch's tasks: a request returns an id at once, and the job's
//! state (`queued`, `running`, `succeeded`, `failed`, `canceled`) is read back, with the
//! error as data.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zlayer_app::decompose::{LayerModel, OmniMeta, decompose_image};
use zlayer_app::method::{BranchGuidance, Method};
use zlayer_app::pipeline::{Pipeline, SceneRequest};
use zlayer_composite::BitDepth;
use zlayer_model::base::SampleOptions;
use zlayer_scene::Loaded;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// A worker is sampling it.
    Running,
    /// Finished; its results can be fetched.
    Succeeded,
    /// Stopped by an error (the time limit among them).
    Failed,
    /// Canceled by a request.
    Canceled,
}

impl JobState {
    /// Whether it will not change again.
    pub fn finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Canceled)
    }
}

/// What a job draws: a validated scene and the sampler settings.
pub struct JobSpec {
    /// The scene.
    pub scene: Loaded,
    /// The method that draws it.
    pub method: Method,
    /// Samples.
    pub n: usize,
    /// Steps, guidance and seed (guidance already resolved against the model's default).
    pub opts: SampleOptions,
    /// Fraction of grounded steps (else the model file's).
    pub grounding_ratio: Option<f64>,
    /// Layout and order guidance (else the model file's).
    pub branch_guidance: BranchGuidance,
    /// Refuse captions outside the vocabulary.
    pub strict: bool,
    /// Write the model's native size instead of the canvas.
    pub native: bool,
}

/// A finished job's files.
#[derive(Default)]
pub struct Results {
    /// One PNG per sample.
    pub images: Vec<Vec<u8>>,
    /// The first sample as OpenRaster layers (methods with instance layers).
    pub ora: Option<Vec<u8>>,
    /// The same layers as a Photoshop document.
    pub psd: Option<Vec<u8>>,
    /// The first sample's maps by file name (`mask-0.png`, `weight-0.png`, …).
    pub maps: Vec<(String, Vec<u8>)>,
    /// The scene in native form.
    pub scene_json: String,
}

/// What `GET /v1/jobs/{id}` reports.
#[derive(Clone, serde::Serialize)]
pub struct Status {
    /// The job's id.
    pub id: String,
    /// Where it is.
    pub state: JobState,
    /// Sampler steps done, of `steps_total` (the samples of a job are drawn together).
    pub steps_done: usize,
    /// Steps in all.
    pub steps_total: usize,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What was changed to fit the tiny model (captions, prompt).
    pub notes: Vec<String>,
    /// Files to fetch when it succeeded.
    pub results: Vec<String>,
}

struct Job {
    status: Status,
    cancel: Arc<AtomicBool>,
    finished_at: Option<Instant>,
    results: Option<Arc<Results>>,
}

/// How the store is bounded.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Jobs waiting for a worker at most; one more is refused (429).
    pub queue: usize,
    /// Worker threads (each runs one job at a time).
    pub workers: usize,
    /// Wall-clock limit of one job's sampling.
    pub job_time: Duration,
    /// How long finished jobs are kept.
    pub keep_for: Duration,
    /// How many finished jobs are kept at most (the oldest go first).
    pub keep_max: usize,
}

/// Every job, the queue and the workers.
pub struct Jobs {
    map: Mutex<HashMap<String, Job>>,
    /// Sends work to the pool; dropping it ends the workers.
    queue: Mutex<Option<SyncSender<(String, JobSpec)>>>,
    /// The pool's end of the queue, shared by the workers (held here too, so that a store
    /// without workers still queues).
    work: Arc<Mutex<Receiver<(String, JobSpec)>>>,
    next: AtomicU64,
    limits: Limits,
}

/// Why a job was not accepted.
pub enum Refused {
    /// The queue is full: try again later.
    Full,
    /// The pool has shut down.
    Closed,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A worker that panicked holding the lock leaves consistent data: each update is whole.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Jobs {
    /// A store with `limits.workers` threads drawing with `pipeline`, their layered files
    /// decomposed by `layers` (cut-outs without it).
    pub fn start(
        pipeline: Arc<Pipeline>,
        layers: Option<Arc<(LayerModel, OmniMeta)>>,
        limits: Limits,
    ) -> Arc<Self> {
        let (tx, rx) = sync_channel(limits.queue);
        let jobs = Arc::new(Self {
            map: Mutex::new(HashMap::new()),
            queue: Mutex::new(Some(tx)),
            work: Arc::new(Mutex::new(rx)),
            next: AtomicU64::new(1),
            limits,
        });
        for _ in 0..jobs.limits.workers {
            let (jobs, pipeline, layers) = (jobs.clone(), pipeline.clone(), layers.clone());
            std::thread::spawn(move || {
                let rx = jobs.work.clone();
                worker(jobs, &rx, &pipeline, layers.as_deref())
            });
        }
        jobs
    }

    /// Queues a job; its id, or why not.
    pub fn submit(&self, spec: JobSpec) -> Result<String, Refused> {
        self.sweep();
        let id = format!("job-{}", self.next.fetch_add(1, Ordering::Relaxed));
        // Every sample of a job is drawn in one batch: one Euler step advances them all.
        let total = spec.opts.steps;
        lock(&self.map).insert(
            id.clone(),
            Job {
                status: Status {
                    id: id.clone(),
                    state: JobState::Queued,
                    steps_done: 0,
                    steps_total: total,
                    error: None,
                    notes: Vec::new(),
                    results: Vec::new(),
                },
                cancel: Arc::new(AtomicBool::new(false)),
                finished_at: None,
                results: None,
            },
        );
        let sent = match lock(&self.queue).as_ref() {
            Some(tx) => tx.try_send((id.clone(), spec)),
            None => return self.refuse(&id, Refused::Closed),
        };
        match sent {
            Ok(()) => Ok(id),
            Err(TrySendError::Full(_)) => self.refuse(&id, Refused::Full),
            Err(TrySendError::Disconnected(_)) => self.refuse(&id, Refused::Closed),
        }
    }

    fn refuse(&self, id: &str, why: Refused) -> Result<String, Refused> {
        lock(&self.map).remove(id);
        Err(why)
    }

    /// A job's status.
    pub fn status(&self, id: &str) -> Option<Status> {
        self.sweep();
        lock(&self.map).get(id).map(|j| j.status.clone())
    }

    /// A finished job's results (`Err(state)` while it has none).
    pub fn results(&self, id: &str) -> Option<Result<Arc<Results>, JobState>> {
        let map = lock(&self.map);
        let job = map.get(id)?;
        Some(job.results.clone().ok_or(job.status.state))
    }

    /// Cancels a job: a queued one never runs, a running one stops at its next step.
    pub fn cancel(&self, id: &str) -> Option<Status> {
        let mut map = lock(&self.map);
        let job = map.get_mut(id)?;
        job.cancel.store(true, Ordering::Relaxed);
        if job.status.state == JobState::Queued {
            job.status.state = JobState::Canceled;
            job.finished_at = Some(Instant::now());
        }
        Some(job.status.clone())
    }

    /// Stops accepting work and cancels every unfinished job: a queued one at once, a running
    /// one at its next step. Returns how many it canceled.
    pub fn close(&self) -> usize {
        lock(&self.queue).take();
        let mut canceled = 0;
        for job in lock(&self.map).values_mut() {
            if job.status.state.finished() {
                continue;
            }
            canceled += 1;
            job.cancel.store(true, Ordering::Relaxed);
            if job.status.state == JobState::Queued {
                job.status.state = JobState::Canceled;
                job.finished_at = Some(Instant::now());
            }
        }
        canceled
    }

    /// Drops finished jobs past their time, then the oldest past the count.
    fn sweep(&self) {
        let mut map = lock(&self.map);
        let now = Instant::now();
        map.retain(|_, j| {
            j.finished_at
                .is_none_or(|t| now.duration_since(t) < self.limits.keep_for)
        });
        let mut done: Vec<(Instant, String)> = map
            .iter()
            .filter_map(|(id, j)| j.finished_at.map(|t| (t, id.clone())))
            .collect();
        if done.len() > self.limits.keep_max {
            done.sort();
            for (_, id) in &done[..done.len() - self.limits.keep_max] {
                map.remove(id);
            }
        }
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Job)) {
        if let Some(j) = lock(&self.map).get_mut(id) {
            f(j);
        }
    }
}

fn worker(
    jobs: Arc<Jobs>,
    rx: &Mutex<Receiver<(String, JobSpec)>>,
    pipeline: &Pipeline,
    layers: Option<&(LayerModel, OmniMeta)>,
) {
    loop {
        let next = lock(rx).recv();
        let Ok((id, spec)) = next else { return };
        let Some(cancel) = lock(&jobs.map).get(&id).map(|j| j.cancel.clone()) else {
            continue; // swept while queued
        };
        if cancel.load(Ordering::Relaxed) {
            continue; // canceled while queued: already marked
        }
        jobs.update(&id, |j| j.status.state = JobState::Running);
        let outcome = run(&jobs, &id, &spec, (pipeline, layers), &cancel);
        jobs.update(&id, |j| {
            j.finished_at = Some(Instant::now());
            match outcome {
                Ok((results, notes)) => {
                    j.status.state = JobState::Succeeded;
                    j.status.notes = notes;
                    j.status.results = result_names(&results);
                    j.results = Some(Arc::new(results));
                }
                Err(_) if cancel.load(Ordering::Relaxed) => j.status.state = JobState::Canceled,
                Err(e) => {
                    j.status.state = JobState::Failed;
                    j.status.error = Some(e);
                }
            }
        });
    }
}

fn result_names(r: &Results) -> Vec<String> {
    let mut names: Vec<String> = (0..r.images.len())
        .map(|k| format!("image-{k}.png"))
        .collect();
    names.push("scene.json".into());
    if r.ora.is_some() {
        names.push("layers.ora".into());
    }
    if r.psd.is_some() {
        names.push("layers.psd".into());
    }
    names.extend(r.maps.iter().map(|(n, _)| format!("maps/{n}")));
    names
}

/// Runs one job on this thread, reporting its steps and stopping on cancel or time-out.
fn run(
    jobs: &Arc<Jobs>,
    id: &str,
    spec: &JobSpec,
    (pipeline, layer_model): (&Pipeline, Option<&(LayerModel, OmniMeta)>),
    cancel: &Arc<AtomicBool>,
) -> Result<(Results, Vec<String>), String> {
    let deadline = Instant::now() + jobs.limits.job_time;
    let timed_out = Arc::new(AtomicBool::new(false));
    let observe = {
        let (jobs, id, flag, late) = (
            jobs.clone(),
            id.to_string(),
            cancel.clone(),
            timed_out.clone(),
        );
        move |done: usize, _total: usize| {
            jobs.update(&id, |j| {
                j.status.steps_done = done.min(j.status.steps_total)
            });
            if Instant::now() > deadline {
                late.store(true, Ordering::Relaxed);
            }
            !flag.load(Ordering::Relaxed) && !late.load(Ordering::Relaxed)
        }
    };
    let req = SceneRequest {
        scene: &spec.scene.scene,
        method: spec.method,
        prompt: None,
        n: spec.n,
        opts: spec.opts,
        grounding_ratio: spec.grounding_ratio,
        branch_guidance: spec.branch_guidance,
        strict: spec.strict,
        maps: spec.method.has_layers(),
    };
    let out = zlayer_model::sampling::observed(observe, || pipeline.scene(&req));
    let late = || {
        format!(
            "the job ran past its time limit of {} s; ask for fewer --steps or samples, or start the server with a longer --job-time",
            jobs.limits.job_time.as_secs()
        )
    };
    if timed_out.load(Ordering::Relaxed) {
        return Err(late());
    }
    let out = out.map_err(|e| e.to_string())?;
    let mut notes = out.notes.clone();
    let scene = spec.scene.scene.scene();
    let canvas = (!spec.native).then_some((scene.width as usize, scene.height as usize));
    let images = zlayer_app::output::at_canvas(&out.images, canvas).map_err(|e| e.to_string())?;
    let mut results = Results {
        images: images
            .iter()
            .map(|img| zlayer_composite::io::encode_png(img, BitDepth::Eight))
            .collect::<Result<_, _>>()?,
        scene_json: zlayer_scene::export(scene, zlayer_scene::Format::Native)
            .map_err(|e| e.to_string())?,
        ..Default::default()
    };
    if out.maps.is_some() {
        let layers = out
            .layers(&spec.scene.scene, canvas)
            .map_err(|e| e.to_string())?;
        let stack = match layer_model {
            // The plate and amodal RGBA layers of the first sample, at the canvas.
            Some((lm, meta)) => {
                let d = decompose_image(
                    lm,
                    &layers.image,
                    scene,
                    (meta.steps, spec.opts.seed),
                    true,
                    &candle_core::Device::Cpu,
                )?;
                // The limit covers the decomposition too, though it cannot stop midway.
                if Instant::now() > deadline {
                    return Err(late());
                }
                notes.extend(d.note.clone());
                let describe = layers
                    .describe
                    .as_ref()
                    .ok_or("a scene's layers describe it")?;
                d.stack(&spec.scene.scene, describe)
            }
            None => layers.stack(),
        };
        results.ora = Some(zlayer_composite::ora::encode_ora(&stack, BitDepth::Eight)?);
        results.psd = Some(zlayer_composite::psd::encode_psd(&stack)?);
        for (name, img) in layers.maps() {
            let png = zlayer_composite::io::encode_png(&img, BitDepth::Eight)?;
            results.maps.push((name, png));
        }
    }
    Ok((results, notes))
}
