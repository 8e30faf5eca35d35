//! `zlayer serve`: the HTTP API and the web layout editor, on `zlayer-app`'s pipeline.
//!
//! - Routes ([`routes`]) parse a request, make one call and format the answer; the API is
//!   described by `/openapi.json` (the file `static/openapi.json`).
//! - Generation is a job ([`jobs`]): `POST /v1/jobs` answers at once with an id; a fixed pool
//!   of worker threads runs the pipeline off the async executor; progress streams as
//!   server-sent events; a job can be cancelled.
//! - Every limit is a thing the server counts: the request body size, the validator's canvas
//!   and instance limits, the queue's capacity (a full queue answers 429 with `Retry-After`),
//!   a per-job time limit, and how long and how many results are kept.
//! - Loopback by default; any other address needs a bearer token. Requests never name files
//!   on the server: scenes are bodies, results are fetched by job id.
#![warn(missing_docs)]

pub mod jobs;
pub mod routes;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State as Shared};
use axum::http::{StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use jobs::{Jobs, Limits};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use zlayer_app::decompose::{DEFAULT_LAYER_MODEL, LayerModel};
use zlayer_app::model::ModelDir;
use zlayer_app::pipeline::Pipeline;

/// The editor page: static HTML, CSS and JavaScript, no build step.
pub const EDITOR: &str = include_str!("../static/editor.html");
/// The OpenAPI description of every route.
pub const OPENAPI: &str = include_str!("../static/openapi.json");

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The tiny model.
    pub model: ModelDir,
    /// The layer model whose amodal RGBA layers fill `layers.ora` and `layers.psd`
    /// (`bundled`, a `zlayer train layers` folder); `None` gives cut-outs of the image.
    pub layer_model: Option<PathBuf>,
    /// Request bodies larger than this many bytes are refused (413).
    pub max_body: usize,
    /// The job store's bounds.
    pub limits: Limits,
    /// A bearer token every request must carry; required off loopback.
    pub token: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 7878)),
            model: ModelDir::Bundled,
            layer_model: Some(PathBuf::from(DEFAULT_LAYER_MODEL)),
            max_body: 1 << 20,
            limits: Limits {
                queue: 8,
                workers: 1,
                job_time: Duration::from_secs(300),
                keep_for: Duration::from_secs(3600),
                keep_max: 64,
            },
            token: None,
        }
    }
}

/// What every route shares.
pub struct State {
    /// The loaded model (the server's jobs and its defaults).
    pub pipeline: Arc<Pipeline>,
    /// Generate jobs.
    pub jobs: Arc<Jobs>,
    /// The queue's capacity, for messages.
    pub limits_queue: usize,
    /// Seconds a refused client is told to wait.
    pub retry_after: u64,
    /// The bearer token, if one is required.
    pub token: Option<String>,
}

impl State {
    /// Loads the model and starts the workers.
    pub fn new(cfg: &Config) -> Result<Arc<Self>, String> {
        let pipeline = Arc::new(
            Pipeline::load(&cfg.model, candle_core::Device::Cpu).map_err(|e| e.to_string())?,
        );
        let layers = match &cfg.layer_model {
            Some(name) => Some(Arc::new(
                LayerModel::open(name, &candle_core::Device::Cpu).map_err(|e| e.to_string())?,
            )),
            None => None,
        };
        let jobs = Jobs::start(pipeline.clone(), layers, cfg.limits.clone());
        Ok(Arc::new(Self {
            pipeline,
            jobs,
            limits_queue: cfg.limits.queue,
            retry_after: 5,
            token: cfg.token.clone(),
        }))
    }
}

/// Every route, with the body limit and the token check.
pub fn router(state: Arc<State>, max_body: usize) -> Router {
    Router::new()
        .route("/", get(|| async { Html(EDITOR) }))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/v1/vocabulary", get(routes::vocabulary))
        .route("/v1/validate", post(routes::validate))
        .route("/v1/preview", post(routes::preview))
        .route("/v1/convert", post(routes::convert))
        .route("/v1/jobs", post(routes::submit))
        .route("/v1/jobs/{id}", get(routes::status).delete(routes::cancel))
        .route("/v1/jobs/{id}/events", get(routes::events))
        .route("/v1/jobs/{id}/maps/{name}", get(routes::map))
        .route("/v1/jobs/{id}/{file}", get(routes::file))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

/// Refuses a request without the bearer token, when one is set.
async fn auth(Shared(st): Shared<Arc<State>>, req: Request, next: Next) -> Response {
    if let Some(token) = &st.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            return routes::ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this server needs `Authorization: Bearer <token>` (the --token it was started with)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Runs the server until Ctrl-C (or SIGTERM); then cancels every unfinished job, so that each
/// client's event stream ends with `canceled`, and returns once the connections close.
pub fn serve(cfg: Config) -> Result<(), String> {
    if !cfg.addr.ip().is_loopback() && cfg.token.is_none() {
        return Err(format!(
            "--addr {}: a server reachable from other machines needs --token SECRET (clients send `Authorization: Bearer SECRET`)",
            cfg.addr
        ));
    }
    let state = State::new(&cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(cfg.addr)
            .await
            .map_err(|e| format!("--addr {}: {e}", cfg.addr))?;
        let addr = listener.local_addr().unwrap_or(cfg.addr);
        eprintln!(
            "zlayer serve: the editor on http://{addr}/ (API: /openapi.json), model {}; Ctrl-C stops",
            cfg.model.name()
        );
        let app = router(state.clone(), cfg.max_body);
        let jobs = state.jobs.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                stop_signal().await;
                // Before the connections drain: an open event stream ends only with its job.
                let n = jobs.close();
                eprintln!("zlayer serve: stopping; {n} unfinished job(s) canceled");
            })
            .await
            .map_err(|e| format!("server: {e}"))
    })?;
    Ok(())
}

/// Ctrl-C, or the SIGTERM a service manager or container runtime sends.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
