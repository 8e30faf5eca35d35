//! The HTTP API as a client sees it, through the router without a socket: status codes,
//! bodies, limits, a job from queue to files, server-sent events, cancel and retention.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;
use zlayer_server::jobs::Limits;
use zlayer_server::{Config, State, router};

const SCENE: &str = include_str!("../../../examples/sphere-cube.json");

fn config(limits: Limits) -> Config {
    Config {
        limits,
        ..Config::default()
    }
}

fn limits(workers: usize, queue: usize) -> Limits {
    Limits {
        workers,
        queue,
        ..Config::default().limits
    }
}

struct Api {
    app: axum::Router,
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

impl Api {
    fn new(cfg: &Config) -> (Self, Arc<State>) {
        let st = State::new(cfg).expect("bundled model loads");
        (
            Self {
                app: router(st.clone(), cfg.max_body),
            },
            st,
        )
    }

    async fn call(&self, method: &str, uri: &str, body: impl Into<Body>) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(body.into())
            .unwrap();
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn wait(&self, id: &str) -> serde_json::Value {
        for _ in 0..600 {
            let s = self
                .call("GET", &format!("/v1/jobs/{id}"), Body::empty())
                .await
                .json();
            if !matches!(s["state"].as_str(), Some("queued" | "running")) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("job {id} did not finish");
    }
}

fn job(steps: usize) -> String {
    let scene: serde_json::Value = serde_json::from_str(SCENE).unwrap();
    serde_json::json!({"scene": scene, "steps": steps, "n": 2}).to_string()
}

#[tokio::test]
async fn validate_preview_and_convert_answer_like_the_cli() {
    let (api, _) = Api::new(&Config::default());
    let ok = api.call("POST", "/v1/validate", SCENE).await;
    assert_eq!(ok.status, StatusCode::OK);
    let v = ok.json();
    assert_eq!(v["format"], "native");
    assert_eq!(v["depth_levels"], serde_json::json!([0, 1]));
    // Every problem comes back with its JSON path and instance, as 422.
    let cycle = include_str!("../../../examples/cycle-rejected.json");
    let bad = api.call("POST", "/v1/validate", cycle).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let d = &bad.json()["diagnostics"][0];
    assert!(
        d["message"].as_str().unwrap().contains("occlusion cycle"),
        "{d}"
    );
    assert!(d["path"].is_string());
    let junk = api.call("POST", "/v1/validate", "{not json").await;
    assert_eq!(junk.status, StatusCode::UNPROCESSABLE_ENTITY);

    let png = api.call("POST", "/v1/preview?size=256", SCENE).await;
    assert_eq!(png.status, StatusCode::OK);
    assert_eq!(png.headers[header::CONTENT_TYPE], "image/png");
    let img = zlayer_composite::io::decode_png(&png.body).unwrap();
    assert_eq!(
        img.width, 256,
        "the canvas's longest side; the legend goes below"
    );
    let tiny = api.call("POST", "/v1/preview?size=8", SCENE).await;
    assert_eq!(tiny.status, StatusCode::BAD_REQUEST);

    let of = api
        .call("POST", "/v1/convert?to=occlusionformer", SCENE)
        .await;
    assert_eq!(of.status, StatusCode::OK);
    assert!(of.json()["annos"].is_array());
    let back = api
        .call("POST", "/v1/convert?to=native", of.body.clone())
        .await;
    assert_eq!(back.json()["instances"].as_array().unwrap().len(), 2);
    let wrong = api.call("POST", "/v1/convert?to=svg", SCENE).await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    let vocab = api
        .call("GET", "/v1/vocabulary", Body::empty())
        .await
        .json();
    assert_eq!(vocab["colours"].as_array().unwrap().len(), 11);
    assert_eq!(vocab["shapes"].as_array().unwrap().len(), 10);
    // The editor is served, with its caption hints wired to that route.
    let page = api.call("GET", "/", Body::empty()).await;
    assert!(page.body_text().contains("fetch(\"/v1/vocabulary\")"));
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let cfg = Config {
        max_body: 256,
        ..Config::default()
    };
    let (api, _) = Api::new(&cfg);
    let big = api.call("POST", "/v1/validate", SCENE.repeat(4)).await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_job_runs_streams_its_progress_and_hands_back_every_file() {
    let (api, _) = Api::new(&config(limits(1, 4)));
    let r = api.call("POST", "/v1/jobs", job(3)).await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let id = r.json()["id"].as_str().unwrap().to_string();
    // The event stream ends with the final state; progress events come before it.
    let sse = api
        .call("GET", &format!("/v1/jobs/{id}/events"), Body::empty())
        .await;
    assert_eq!(sse.status, StatusCode::OK);
    let text = String::from_utf8(sse.body).unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.last(), Some(&"succeeded"), "{text}");
    assert!(text.contains("\"steps_done\":3"), "{text}");
    let s = api.wait(&id).await;
    assert_eq!(s["state"], "succeeded");
    assert_eq!(s["steps_total"], 3);
    for f in [
        "image-0.png",
        "image-1.png",
        "layers.ora",
        "layers.psd",
        "scene.json",
        "maps/mask-0.png",
    ] {
        assert!(
            s["results"].as_array().unwrap().iter().any(|x| x == f),
            "{f}: {s}"
        );
    }
    let img = api
        .call("GET", &format!("/v1/jobs/{id}/image-1.png"), Body::empty())
        .await;
    let img = zlayer_composite::io::decode_png(&img.body).unwrap();
    assert_eq!((img.width, img.height), (512, 512), "at the scene's canvas");
    let ora = api
        .call("GET", &format!("/v1/jobs/{id}/layers.ora"), Body::empty())
        .await;
    let stack = zlayer_composite::ora::decode_ora(&ora.body).unwrap();
    let layer_names: Vec<&str> = stack.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        layer_names,
        ["background plate", "1: blue cube", "0: red sphere"],
        "the layer model's plate and amodal layers, bottom first"
    );
    // Taken from the image where they show, the layers composite back to the first sample.
    let first = api
        .call("GET", &format!("/v1/jobs/{id}/image-0.png"), Body::empty())
        .await;
    let first = zlayer_composite::io::decode_png(&first.body).unwrap();
    let flat = stack.flatten();
    let worst = flat
        .pixels
        .iter()
        .zip(&first.pixels)
        .flat_map(|(a, b)| (0..3).map(move |c| (a.0[c] - b.0[c]).abs()))
        .fold(0f32, f32::max);
    assert!(worst <= 2.5 / 255.0, "largest channel error {worst}");
    let psd = api
        .call("GET", &format!("/v1/jobs/{id}/layers.psd"), Body::empty())
        .await;
    let layered = zlayer_composite::psd::decode_psd(&psd.body).unwrap();
    let names = |s: &zlayer_composite::LayerStack| -> Vec<String> {
        s.layers.iter().map(|l| l.name.clone()).collect()
    };
    assert_eq!(
        names(&layered),
        names(&stack),
        "the same layers, bottom first"
    );
    let mask = api
        .call(
            "GET",
            &format!("/v1/jobs/{id}/maps/weight-1.png"),
            Body::empty(),
        )
        .await;
    assert_eq!(mask.status, StatusCode::OK);
    let scene = api
        .call("GET", &format!("/v1/jobs/{id}/scene.json"), Body::empty())
        .await;
    assert_eq!(scene.json()["width"], 512);
    let none = api
        .call("GET", &format!("/v1/jobs/{id}/image-9.png"), Body::empty())
        .await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    let nobody = api.call("GET", "/v1/jobs/job-999", Body::empty()).await;
    assert_eq!(nobody.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_full_queue_answers_429_and_a_queued_job_can_be_cancelled() {
    // No workers: jobs stay queued, so the queue's capacity is all that is tested.
    let (api, _) = Api::new(&config(limits(0, 2)));
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = api.call("POST", "/v1/jobs", job(2)).await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    let full = api.call("POST", "/v1/jobs", job(2)).await;
    assert_eq!(full.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(full.headers[header::RETRY_AFTER], "5");
    assert!(
        full.json()["error"]
            .as_str()
            .unwrap()
            .contains("queue is full")
    );
    let early = api
        .call(
            "GET",
            &format!("/v1/jobs/{}/image-0.png", ids[0]),
            Body::empty(),
        )
        .await;
    assert_eq!(early.status, StatusCode::CONFLICT);
    let c = api
        .call("DELETE", &format!("/v1/jobs/{}", ids[0]), Body::empty())
        .await;
    assert_eq!(c.json()["state"], "canceled");
}

#[tokio::test]
async fn bad_job_requests_are_4xx_with_what_to_send() {
    let (api, _) = Api::new(&config(limits(0, 4)));
    let scene: serde_json::Value = serde_json::from_str(SCENE).unwrap();
    for (body, status, says) in [
        (
            serde_json::json!({"scene": scene, "steps": 0}),
            400,
            "steps 0",
        ),
        (serde_json::json!({"scene": scene, "n": 99}), 400, "n 99"),
        (
            serde_json::json!({"scene": scene, "method": "unicorn"}),
            400,
            "unknown method",
        ),
        (
            serde_json::json!({"scene": scene, "order_guidance": -1}),
            400,
            "order_guidance: 0 to 20",
        ),
        (
            serde_json::json!({"scene": scene, "method": "larender", "layout_guidance": 2}),
            400,
            "method larender has none",
        ),
        (
            serde_json::json!({"scene": scene, "colour": "red"}),
            400,
            "unknown field",
        ),
        (
            serde_json::json!({"scene": {"width": 0}}),
            422,
            "invalid scene",
        ),
    ] {
        let r = api.call("POST", "/v1/jobs", body.to_string()).await;
        assert_eq!(
            r.status.as_u16(),
            status,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            r.json()["error"].as_str().unwrap().contains(says),
            "{says}: {}",
            r.json()
        );
    }
}

#[tokio::test]
async fn the_time_limit_fails_a_job_and_results_are_kept_within_bounds() {
    let slow = Limits {
        job_time: Duration::ZERO,
        ..limits(1, 4)
    };
    let (api, _) = Api::new(&config(slow));
    let id = api.call("POST", "/v1/jobs", job(5)).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let s = api.wait(&id).await;
    assert_eq!(s["state"], "failed");
    assert!(s["error"].as_str().unwrap().contains("time limit"), "{s}");
    assert!(s["steps_done"].as_u64().unwrap() < 5);

    let few = Limits {
        keep_max: 1,
        ..limits(1, 4)
    };
    let (api, _) = Api::new(&config(few));
    let first = api.call("POST", "/v1/jobs", job(1)).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    api.wait(&first).await;
    let second = api.call("POST", "/v1/jobs", job(1)).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    api.wait(&second).await;
    let gone = api
        .call("GET", &format!("/v1/jobs/{first}"), Body::empty())
        .await;
    assert_eq!(
        gone.status,
        StatusCode::NOT_FOUND,
        "only the newest finished job is kept"
    );
}

#[tokio::test]
async fn every_documented_route_exists_and_a_token_guards_them() {
    let cfg = Config {
        token: Some("s3cret".into()),
        ..config(limits(0, 4))
    };
    let (api, _) = Api::new(&cfg);
    let plain = api.call("GET", "/openapi.json", Body::empty()).await;
    assert_eq!(plain.status, StatusCode::UNAUTHORIZED);
    let with = |method: &str, uri: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, "Bearer s3cret")
            .body(Body::from(SCENE))
            .unwrap()
    };
    let spec = api
        .app
        .clone()
        .oneshot(with("GET", "/openapi.json"))
        .await
        .unwrap();
    let body = spec.into_body().collect().await.unwrap().to_bytes();
    let spec: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let paths = spec["paths"].as_object().unwrap();
    assert!(paths.len() >= 10);
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let uri = path
                .replace("{id}", "job-1")
                .replace("{file}", "scene.json")
                .replace("{name}", "mask-0.png")
                .replace("/v1/convert", "/v1/convert?to=native");
            let res = api
                .app
                .clone()
                .oneshot(with(&method.to_uppercase(), &uri))
                .await
                .unwrap();
            // Unknown job ids are 404 with a JSON reason; a missing route would be a bare
            // 404 or 405 without one.
            let status = res.status();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            if status == StatusCode::NOT_FOUND {
                let b = res.into_body().collect().await.unwrap().to_bytes();
                let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
                assert!(
                    v["error"].as_str().unwrap().contains("no job"),
                    "{method} {path}"
                );
            }
        }
    }
    assert!(
        zlayer_server::serve(Config {
            addr: "0.0.0.0:0".parse().unwrap(),
            ..Config::default()
        })
        .unwrap_err()
        .contains("needs --token")
    );
}

#[tokio::test]
async fn the_validators_canvas_and_instance_limits_hold_and_output_is_bounded() {
    let (api, _) = Api::new(&config(limits(0, 4)));
    let many: Vec<serde_json::Value> = (0..51)
        .map(
            |i| serde_json::json!({"id": i, "caption": "red disk", "bbox": [i, i, i + 10, i + 10]}),
        )
        .collect();
    let crowd = serde_json::json!({"width": 512, "height": 512, "prompt": "x", "instances": many});
    let r = api.call("POST", "/v1/validate", crowd.to_string()).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body_text().contains("at most 50"), "{}", r.body_text());
    let huge = serde_json::json!({"width": 9000, "height": 512, "prompt": "x", "instances": [
        {"id": "a", "caption": "red disk", "bbox": [0, 0, 10, 10]}]});
    let r = api
        .call(
            "POST",
            "/v1/jobs",
            serde_json::json!({"scene": huge}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.body_text().contains("outside 1..=8192"),
        "{}",
        r.body_text()
    );
    // A valid canvas can still ask for more pixels than a job may write.
    let big = serde_json::json!({"width": 8192, "height": 8192, "prompt": "x", "instances": [
        {"id": "a", "caption": "red disk", "bbox": [0, 0, 100, 100]}]});
    let r = api
        .call(
            "POST",
            "/v1/jobs",
            serde_json::json!({"scene": big, "n": 2}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let err = r.json()["error"].as_str().unwrap().to_string();
    assert!(err.contains("\"native\": true"), "{err}");
    let r = api
        .call(
            "POST",
            "/v1/jobs",
            serde_json::json!({"scene": big, "n": 2, "native": true}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // Malformed bodies are 4xx, never 500.
    for body in ["", "[]", "{\"scene\": 3}", "\u{0}"] {
        let r = api.call("POST", "/v1/jobs", body).await;
        assert!(r.status.is_client_error(), "{body:?}: {}", r.status);
    }
    let r = api.call("POST", "/v1/validate", vec![0xff, 0xfe]).await;
    assert!(r.status.is_client_error());
}
