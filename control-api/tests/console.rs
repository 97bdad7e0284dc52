//! The web console's files at `/console/`: the SPA fallback, caching, the CSP, `/` and
//! what a server without a console answers.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{Rest, TestApp};
use http_body_util::BodyExt;
use tower::ServiceExt;

const INDEX: &str = "<!doctype html><title>Weft</title><div id=root></div>";
const SCRIPT: &str = "console.log('weft')";

/// A built console in a fresh directory: `index.html` and one hashed asset.
fn dist() -> weft_testkit::tmp::TempDir {
    let tmp = weft_testkit::tmp::dir("console");
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("assets")).expect("mkdir");
    std::fs::write(dir.join("index.html"), INDEX).expect("index");
    std::fs::write(dir.join("assets/index-Bx3f9a1c.js"), SCRIPT).expect("asset");
    std::fs::write(dir.join("favicon.svg"), "<svg/>").expect("favicon");
    tmp
}

struct Got {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn get(app: &axum::Router, path: &str) -> Got {
    let req = Request::builder()
        .uri(path)
        .body(Body::empty())
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    Got {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn header(g: &Got, name: header::HeaderName) -> &str {
    g.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn serves_the_built_console() {
    let t = TestApp::new().await;
    let dir = dist();
    let app = control_api::app::app(t.state.clone().with_console(Some(dir.path().to_path_buf())));

    let g = get(&app, "/").await;
    assert_eq!(g.status, StatusCode::SEE_OTHER);
    assert_eq!(header(&g, header::LOCATION), "/console/");

    for path in [
        "/console/",
        "/console/t/acme/flows",
        "/console/t/acme/policies/web",
    ] {
        let g = get(&app, path).await;
        assert_eq!(g.status, StatusCode::OK, "{path}");
        assert_eq!(g.body, INDEX, "{path}: the console routes in the browser");
        assert!(
            header(&g, header::CONTENT_TYPE).starts_with("text/html"),
            "{path}"
        );
        assert_eq!(header(&g, header::CACHE_CONTROL), "no-cache", "{path}");
        assert_eq!(
            header(&g, header::CONTENT_SECURITY_POLICY),
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
            "{path}"
        );
    }

    let g = get(&app, "/console/assets/index-Bx3f9a1c.js").await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.body, SCRIPT);
    assert!(header(&g, header::CONTENT_TYPE).contains("javascript"));
    assert_eq!(
        header(&g, header::CACHE_CONTROL),
        "public, max-age=31536000, immutable"
    );
    assert!(!header(&g, header::CONTENT_SECURITY_POLICY).is_empty());

    let g = get(&app, "/console/favicon.svg").await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.body, "<svg/>");
    assert_eq!(header(&g, header::CACHE_CONTROL), "no-cache");

    // A missing hashed asset is a 404, never the index page under a script's name.
    let g = get(&app, "/console/assets/gone-0000.js").await;
    assert_eq!(g.status, StatusCode::NOT_FOUND);
    assert_ne!(g.body, INDEX);

    // The API beside it is untouched.
    let g = get(&app, "/v1/me").await;
    assert_eq!(g.status, StatusCode::UNAUTHORIZED);
    assert!(header(&g, header::CONTENT_SECURITY_POLICY).is_empty());

    drop(dir);
}

#[tokio::test]
async fn without_a_console_dir_the_paths_say_so() {
    let t = TestApp::new().await;
    for path in ["/", "/console", "/console/", "/console/t/acme"] {
        let r = t.call("GET", path, None, None).await;
        assert!(r.is_problem(404, "not-found"), "{path}: {}", r.body);
        assert!(
            r.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("--console-dir")),
            "{path}: {}",
            r.body
        );
    }
}
