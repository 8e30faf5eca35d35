//! The editor in a real headless Chromium, driven as a user would: two boxes drawn with the
//! mouse, captions typed, the depth order dragged, an empty caption's error seen and fixed,
//! a generation watched to its image and layers, then the order swapped and generated again.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); skips with a
//! notice without them outside CI. `ZLAYER_UPDATE_DOCS=1` writes the last screenshot to
//! `docs/editor.png`; otherwise it goes to the target folder.

use std::path::PathBuf;
use std::time::Duration;
use zlayer_server::{Config, State, router};
use zlayer_testkit::webdriver::{self, Browser};

/// The server on a loopback port, on its own runtime thread for the test's lifetime.
fn start_server() -> String {
    let cfg = Config::default();
    let state = State::new(&cfg).expect("the bundled model loads");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, router(state, cfg.max_body))
                .await
                .unwrap();
        });
    });
    format!("http://{addr}")
}

const WAIT: Duration = Duration::from_secs(60);
/// One generation (two 20-step samples with the bundle's layout and order guidance, then
/// their layers) takes tens of seconds in a test build on an idle 2-core machine; beside
/// another job it once took over 60.
const GENERATION_WAIT: Duration = Duration::from_secs(240);

/// The id of the job that finished after `before` ("" for the first), once its image and
/// both layers have loaded in the page.
fn finished_job(b: &Browser, before: &str) -> String {
    let state = b.wait_for(
        &format!(
            "const t = document.getElementById('state').innerText; return /: (succeeded|failed|canceled)/.test(t) && ('{before}' === '' || !t.startsWith('{before}:')) ? t : null;"
        ),
        "a generation to finish",
        GENERATION_WAIT,
    );
    let state = state.as_str().unwrap();
    assert!(state.ends_with(": succeeded"), "{state}");
    b.wait_for(
        "const imgs = [...document.querySelectorAll('#result > img')]; return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0) && document.querySelectorAll('#layerview canvas.layer').length === 2;",
        "the image and two layers",
        WAIT,
    );
    state.split(':').next().unwrap().to_string()
}

#[test]
fn a_user_draws_orders_fixes_generates_and_swaps_in_the_editor() {
    let Some((chromium, driver)) = webdriver::find() else {
        return;
    };
    let url = start_server();
    let b = Browser::start(&chromium, &driver, 1500, 1000);
    b.goto(&format!("{url}/"));
    assert_eq!(b.js("return document.title"), "zlayer editor");
    b.wait_for(
        "return document.querySelectorAll('#vocab option').length > 0",
        "the vocabulary hints",
        WAIT,
    );
    b.click(&b.find("#clear"));
    assert_eq!(
        b.js("return document.querySelectorAll('#stage .box').length"),
        0
    );

    // Scene pixels to the window's: the stage is drawn at the scale that fits.
    let r = b.js("const r = document.getElementById('stage').getBoundingClientRect(); return [r.x, r.y, r.width / state.width];");
    let (x0, y0, s) = (
        r[0].as_f64().unwrap(),
        r[1].as_f64().unwrap(),
        r[2].as_f64().unwrap(),
    );
    let at = |x: f64, y: f64| (x0 + x * s, y0 + y * s);

    // The first box: drawn without a caption, it is an error at the box and in the list.
    b.drag(at(64.0, 176.0), at(320.0, 432.0));
    let problem = b.wait_for(
        "const p = document.querySelector('#stage .box.error .problem'); return p && p.innerText;",
        "an error at the uncaptioned box",
        WAIT,
    );
    assert!(
        problem.as_str().unwrap().contains("caption"),
        "the error names the caption: {problem}"
    );
    assert!(
        b.js("return document.getElementById('generate').disabled") == true,
        "a scene with an error cannot be generated"
    );
    b.type_into(&b.find("#layers li[data-id='1'] input"), "red sphere");
    b.wait_for(
        "return document.querySelectorAll('#stage .box.error').length === 0 && !document.getElementById('generate').disabled",
        "the error to clear once the caption is typed",
        WAIT,
    );

    // The second box overlaps the first and goes in front of it, as a new box does.
    b.drag(at(224.0, 96.0), at(464.0, 336.0));
    b.wait_for(
        "return document.querySelectorAll('#stage .box.error').length === 1",
        "the second box's error",
        WAIT,
    );
    b.type_into(&b.find("#layers li[data-id='2'] input"), "blue cube");
    b.wait_for(
        "return document.querySelectorAll('#stage .box.error').length === 0 && document.querySelectorAll('#stage .overlap').length === 1",
        "two valid boxes with their overlap hatched",
        WAIT,
    );
    let order = "return scene().instances.map((i) => [i.id, i.caption, i.occludes]);";
    assert_eq!(
        b.js(order),
        serde_json::json!([["2", "blue cube", ["1"]], ["1", "red sphere", []]])
    );
    let bbox = b.js("return scene().instances[1].bbox");
    let want = [64.0, 176.0, 320.0, 432.0];
    for (got, want) in bbox.as_array().unwrap().iter().zip(want) {
        assert!(
            (got.as_f64().unwrap() - want).abs() <= 2.0,
            "the drawn box {bbox} is where the mouse went, {want:?}"
        );
    }

    // Dragging the sphere's row above the cube's puts the sphere in front.
    let grip = b.centre("#layers li[data-id='1'] .grip");
    let target = b.centre("#layers li[data-id='2']");
    b.drag(grip, target);
    b.wait_for(
        "return scene().instances[0].id === '1'",
        "the dragged order",
        WAIT,
    );
    assert_eq!(
        b.js(order),
        serde_json::json!([["1", "red sphere", ["2"]], ["2", "blue cube", []]])
    );
    b.wait_for(
        "return !document.getElementById('generate').disabled",
        "validation of the new order",
        WAIT,
    );

    b.js("document.getElementById('n').value = 2;");
    b.click(&b.find("#generate"));
    let first = finished_job(&b, "");
    assert_eq!(
        b.js("return document.querySelectorAll('#result > img').length"),
        2
    );
    assert_eq!(
        b.js("return document.querySelectorAll('#toggles input[type=checkbox]').length"),
        2,
        "a toggle per layer"
    );

    // Swap and regenerate: the same seed, the other order, a new job with another picture.
    b.click(&b.find("#swap"));
    let second = finished_job(&b, &first);
    assert_ne!(first, second);
    assert_eq!(
        b.js(order),
        serde_json::json!([["2", "blue cube", ["1"]], ["1", "red sphere", []]])
    );
    let image = |job: &str| {
        b.js(&format!(
            "return fetch('/v1/jobs/{job}/image-0.png').then((r) => r.arrayBuffer()).then((a) => [...new Uint8Array(a)].join(','));"
        ))
    };
    assert_ne!(
        image(&first),
        image(&second),
        "swapping the order changes the picture"
    );

    let png = b.screenshot();
    let shot = zlayer_composite::io::decode_png(&png).expect("the screenshot is a PNG");
    let view = b.js("return [window.innerWidth, window.innerHeight]");
    assert_eq!(
        serde_json::json!([shot.width, shot.height]),
        view,
        "the screenshot is the whole window"
    );
    let out = if std::env::var("ZLAYER_UPDATE_DOCS").is_ok_and(|v| v == "1") {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/editor.png")
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("editor.png")
    };
    std::fs::write(&out, &png).unwrap();
}
