//! The HTTP routes: each parses its request into a typed value, makes one call (the scene
//! crate, the preview, the job store) and formats the answer. Bad input is a 4xx with the
//! diagnostics as JSON; a full queue is 429 with `Retry-After`.

use crate::State;
use crate::jobs::{JobSpec, Refused};
use axum::Json;
use axum::extract::{Path, Query, State as Shared};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use zlayer_app::method::{BranchGuidance, Method};
use zlayer_composite::BitDepth;
use zlayer_model::base::SampleOptions;
use zlayer_scene::{Format, Loaded, export, load_str};

/// Samples per job at most.
pub const MAX_SAMPLES: usize = 8;
/// Euler steps per job at most.
pub const MAX_STEPS: usize = 100;
/// Output pixels per job at most (samples × canvas area): 16 M, a few hundred MB while the
/// images are resampled. Larger canvases can ask for the model's native size.
pub const MAX_OUTPUT_PIXELS: u64 = 1 << 24;

/// An answer other than success: a status, a JSON body, and for 429 a `Retry-After`.
pub struct ApiError {
    status: StatusCode,
    body: Value,
    retry_after: Option<u64>,
}

impl ApiError {
    /// A status with `{"error": message}`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "error": message.into() }),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// A scene of any supported format, validated; 422 with every diagnostic when it is not.
fn scene(body: &str) -> Result<Loaded, ApiError> {
    load_str(body).map_err(|e| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        body: json!({
            "ok": false,
            "error": "invalid scene",
            "diagnostics": e.diagnostics,
        }),
        retry_after: None,
    })
}

/// `GET /v1/vocabulary`: the tiny model's words (colours with their sRGB, shapes, patterns,
/// materials, backgrounds) and its caption grammar, for hints.
pub async fn vocabulary() -> Json<Value> {
    Json(json!(zlayer_synth::vocab::vocabulary()))
}

/// `POST /v1/validate`: the normalised scene, its depth levels and warnings.
pub async fn validate(body: String) -> Result<Json<Value>, ApiError> {
    Ok(Json(zlayer_app::scene_file::valid_json(&scene(&body)?)))
}

/// `?size=` of the preview.
#[derive(serde::Deserialize)]
pub struct PreviewQuery {
    size: Option<u32>,
}

fn png(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "image/png")], bytes).into_response()
}

/// `POST /v1/preview`: the declared scene as a PNG.
pub async fn preview(Query(q): Query<PreviewQuery>, body: String) -> Result<Response, ApiError> {
    let size = q.size.unwrap_or(768);
    if !(64..=4096).contains(&size) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("size {size}: the preview's longest side is 64 to 4096 px"),
        ));
    }
    let l = scene(&body)?;
    let canvas = zlayer_app::preview::draw(&l.scene, size).ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not allocate the preview",
        )
    })?;
    let bytes = zlayer_composite::io::encode_png(&canvas.to_image(), BitDepth::Eight)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(png(bytes))
}

/// `?to=` of the export.
#[derive(serde::Deserialize)]
pub struct ConvertQuery {
    to: String,
}

/// `POST /v1/convert?to=native|occlusionformer`: the scene in another format.
pub async fn convert(Query(q): Query<ConvertQuery>, body: String) -> Result<Response, ApiError> {
    let format = match q.to.as_str() {
        "native" => Format::Native,
        "occlusionformer" => Format::OcclusionFormer,
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("to={other}: export to native or occlusionformer"),
            ));
        }
    };
    let l = scene(&body)?;
    let text = export(l.scene.scene(), format).map_err(|e| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        body: json!({"ok": false, "error": "the scene cannot be written in that format", "diagnostics": e.diagnostics}),
        retry_after: None,
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
}

/// The body of `POST /v1/jobs`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// The scene, in any supported format.
    scene: Value,
    /// Samples (1 to 8).
    #[serde(default = "one")]
    n: usize,
    /// Euler steps (1 to 100).
    #[serde(default = "twenty")]
    steps: usize,
    /// Noise seed.
    #[serde(default)]
    seed: u64,
    /// The method (default occlusionformer).
    method: Option<String>,
    /// Classifier-free guidance (default: the model's tuned value).
    guidance: Option<f64>,
    /// Fraction of grounded steps.
    grounding_ratio: Option<f64>,
    /// Layout guidance λ (default: the branch file's; 1: none).
    layout_guidance: Option<f64>,
    /// Order guidance μ (default: the branch file's; 0: none).
    order_guidance: Option<f64>,
    /// The share of the steps with them (default: the branch file's).
    guided_ratio: Option<f64>,
    /// Refuse captions outside the vocabulary.
    #[serde(default)]
    strict: bool,
    /// The model's own size instead of the scene's canvas.
    #[serde(default)]
    native: bool,
}

fn one() -> usize {
    1
}

fn twenty() -> usize {
    20
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, m)
}

/// `POST /v1/jobs`: queues a generation; 202 with its id.
pub async fn submit(Shared(st): Shared<Arc<State>>, body: String) -> Result<Response, ApiError> {
    let req: JobRequest = serde_json::from_str(&body).map_err(|e| {
        bad(format!(
            "job request: {e}; send {{\"scene\": {{…}}, \"steps\": 20, \"n\": 1}}"
        ))
    })?;
    if !(1..=MAX_SAMPLES).contains(&req.n) {
        return Err(bad(format!(
            "n {}: 1 to {MAX_SAMPLES} samples per job",
            req.n
        )));
    }
    if !(1..=MAX_STEPS).contains(&req.steps) {
        return Err(bad(format!(
            "steps {}: 1 to {MAX_STEPS} per job",
            req.steps
        )));
    }
    if req
        .grounding_ratio
        .is_some_and(|r| !(0.0..=1.0).contains(&r))
    {
        return Err(bad("grounding_ratio: a fraction of the steps, 0 to 1"));
    }
    if req
        .guidance
        .is_some_and(|g| !(g.is_finite() && (0.0..=20.0).contains(&g)))
    {
        return Err(bad("guidance: 0 to 20 (1 or less: none)"));
    }
    for (name, v) in [
        ("layout_guidance", req.layout_guidance),
        ("order_guidance", req.order_guidance),
    ] {
        if v.is_some_and(|g| !(g.is_finite() && (0.0..=20.0).contains(&g))) {
            return Err(bad(format!(
                "{name}: 0 to 20 (layout guidance 1 and order guidance 0 are none)"
            )));
        }
    }
    let method = Method::parse(req.method.as_deref().unwrap_or("occlusionformer")).map_err(bad)?;
    let branch_guidance = BranchGuidance {
        layout: req.layout_guidance,
        order: req.order_guidance,
        guided: req.guided_ratio,
    };
    branch_guidance.check(method).map_err(bad)?;
    let loaded = scene(&req.scene.to_string())?;
    let s = loaded.scene.scene();
    let pixels = s.width as u64 * s.height as u64 * req.n as u64;
    if !req.native && pixels > MAX_OUTPUT_PIXELS {
        return Err(bad(format!(
            "{} samples of {}×{} are {pixels} output pixels, over the {MAX_OUTPUT_PIXELS} a job may write; ask for fewer samples, or \"native\": true for the model's own size",
            req.n, s.width, s.height
        )));
    }
    let spec = JobSpec {
        scene: loaded,
        method,
        n: req.n,
        opts: SampleOptions {
            steps: req.steps,
            guidance: req.guidance.unwrap_or_else(|| st.pipeline.model.guidance()),
            seed: req.seed,
        },
        grounding_ratio: req.grounding_ratio,
        branch_guidance,
        strict: req.strict,
        native: req.native,
    };
    match st.jobs.submit(spec) {
        Ok(id) => {
            let status = st.jobs.status(&id);
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({
                    "id": id,
                    "status": status,
                    "events": format!("/v1/jobs/{id}/events"),
                })),
            )
                .into_response())
        }
        Err(Refused::Full) => Err(ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            body: json!({"error": format!("the queue is full ({} jobs wait); try again later", st.limits_queue)}),
            retry_after: Some(st.retry_after),
        }),
        Err(Refused::Closed) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        )),
    }
}

fn unknown(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no job {id:?} (finished jobs are kept for a limited time and count)"),
    )
}

/// `GET /v1/jobs/{id}`.
pub async fn status(
    Shared(st): Shared<Arc<State>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let s = st.jobs.status(&id).ok_or_else(|| unknown(&id))?;
    Ok(Json(json!(s)))
}

/// `DELETE /v1/jobs/{id}`: cancels it.
pub async fn cancel(
    Shared(st): Shared<Arc<State>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let s = st.jobs.cancel(&id).ok_or_else(|| unknown(&id))?;
    Ok(Json(json!(s)))
}

/// `GET /v1/jobs/{id}/events`: the status as server-sent events, whenever it changes, until
/// the job ends (the last event is named after its final state).
pub async fn events(
    Shared(st): Shared<Arc<State>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    st.jobs.status(&id).ok_or_else(|| unknown(&id))?;
    let stream = futures_util::stream::unfold(
        (st, id, None::<String>, false),
        |(st, id, last, ended)| async move {
            if ended {
                return None;
            }
            loop {
                let Some(s) = st.jobs.status(&id) else {
                    let ev = Event::default().event("gone").data("{}");
                    return Some((Ok::<_, std::convert::Infallible>(ev), (st, id, last, true)));
                };
                let text = serde_json::to_string(&s).unwrap_or_default();
                if last.as_deref() != Some(&text) {
                    let state = serde_json::to_value(s.state).unwrap_or_default();
                    let name = state.as_str().unwrap_or("progress").to_string();
                    let done = s.state.finished();
                    let ev = Event::default().event(name).data(text.clone());
                    return Some((Ok(ev), (st, id, Some(text), done)));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// `GET /v1/jobs/{id}/{file}`: `image-K.png`, `layers.ora`, `layers.psd`, `scene.json` or
/// `maps/NAME`.
pub async fn file(
    Shared(st): Shared<Arc<State>>,
    Path((id, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    fetch(&st, &id, &file)
}

/// `GET /v1/jobs/{id}/maps/{name}`.
pub async fn map(
    Shared(st): Shared<Arc<State>>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    fetch(&st, &id, &format!("maps/{name}"))
}

fn fetch(st: &State, id: &str, file: &str) -> Result<Response, ApiError> {
    let r = match st.jobs.results(id).ok_or_else(|| unknown(id))? {
        Ok(r) => r,
        Err(state) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "job {id} is {}: it has no results",
                    json!(state).as_str().unwrap_or("?")
                ),
            ));
        }
    };
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("job {id} has no file {file:?}"),
        )
    };
    if let Some(k) = file
        .strip_prefix("image-")
        .and_then(|f| f.strip_suffix(".png"))
    {
        let k: usize = k.parse().map_err(|_| missing())?;
        return r.images.get(k).cloned().map(png).ok_or_else(missing);
    }
    match file {
        "scene.json" => Ok((
            [(header::CONTENT_TYPE, "application/json")],
            r.scene_json.clone(),
        )
            .into_response()),
        "layers.ora" => r
            .ora
            .clone()
            .map(|b| ([(header::CONTENT_TYPE, "image/openraster")], b).into_response())
            .ok_or_else(missing),
        "layers.psd" => r
            .psd
            .clone()
            .map(|b| ([(header::CONTENT_TYPE, "image/vnd.adobe.photoshop")], b).into_response())
            .ok_or_else(missing),
        _ => {
            let name = file.strip_prefix("maps/").ok_or_else(missing)?;
            r.maps
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, b)| png(b.clone()))
                .ok_or_else(missing)
        }
    }
}
