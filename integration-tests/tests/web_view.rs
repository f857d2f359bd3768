//! The live saga view in a real browser: headless Chromium loads the page `sagactl dev` serves,
//! runs its JavaScript against the JSON API, and the rendered DOM must list a completed and a
//! compensated saga under the right filters, with the right steps in their timelines. A
//! screenshot of the compensated saga's timeline is kept as a test artifact.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use saga_cli::sample::sample_order;
use saga_integration_tests::{options, wait_for_orders, Infra};

fn chromium() -> PathBuf {
    let path = PathBuf::from(std::env::var("SAGA_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(path.exists(), "{} is missing: install Debian's chromium (`apt-get install chromium`) or set SAGA_TEST_CHROMIUM", path.display());
    path
}

/// Where test artifacts go: `$SAGA_TEST_ARTIFACTS`, else `<target dir>/test-artifacts`.
fn artifacts() -> PathBuf {
    let dir = std::env::var("SAGA_TEST_ARTIFACTS").map(PathBuf::from).unwrap_or_else(|_| {
        let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
        target.join("test-artifacts")
    });
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Chromium, headless, with the flags this machine's closed network needs, on a fresh profile.
fn headless(profile: &std::path::Path) -> Command {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        // Let the page's fetches finish before the DOM is dumped or the screenshot taken.
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// The DOM after the page's scripts ran.
fn rendered(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = headless(profile.path()).arg("--dump-dom").arg(url).output().expect("run chromium");
    assert!(out.status.success(), "chromium failed on {url}: {}", String::from_utf8_lossy(&out.stderr));
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(dom.contains(r#"data-loaded="true""#), "the page did not finish loading {url}:\n{dom}");
    dom
}

/// The `data-event` values of the timeline rows, in order.
fn timeline_events(dom: &str) -> Vec<String> {
    dom.split(r#"<tr class="entry" data-event=""#).skip(1).map(|rest| rest.split('"').next().unwrap_or_default().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Debian's chromium; .ci/run installs it and runs this with --ignored"]
async fn the_saga_view_shows_completed_and_compensated_sagas_in_a_browser() {
    // As in `sagactl dev`: spans, and so trace ids, exist (nothing is exported).
    let _telemetry = saga_runtime::telemetry::init_with_default("web-view-test", "warn").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stack = saga_cli::stack::Stack::start(options(Infra::Embedded, dir.path())).await.expect("stack starts");
    let (completed, _) = sample_order("view", 0);
    let (compensated, _) = sample_order("view", 6);
    let ids = [completed.order_id.clone(), compensated.order_id.clone()];
    stack.publish(&completed.into()).await.unwrap();
    stack.publish(&compensated.into()).await.unwrap();
    wait_for_orders(&stack, &ids, Duration::from_secs(60)).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let routes = stack.web_routes(None);
    tokio::spawn(async move { axum::serve(listener, routes).await.unwrap() });

    let (done, undone) = (ids[0].clone(), ids[1].clone());
    let base2 = base.clone();
    let (completed_list, compensated_list, all, timeline_done, timeline_undone) = tokio::task::spawn_blocking(move || {
        (
            rendered(&format!("{base2}/sagas?state=COMPLETED")),
            rendered(&format!("{base2}/sagas?state=COMPENSATED")),
            rendered(&format!("{base2}/sagas")),
            rendered(&format!("{base2}/sagas?saga={done}")),
            rendered(&format!("{base2}/sagas?saga={undone}")),
        )
    })
    .await
    .unwrap();
    let row = |id: &str| format!(r#"data-saga="{id}""#);
    assert!(completed_list.contains(&row(&ids[0])) && !completed_list.contains(&row(&ids[1])), "the completed filter lists only the completed saga");
    assert!(compensated_list.contains(&row(&ids[1])) && !compensated_list.contains(&row(&ids[0])), "the compensated filter lists only the compensated saga");
    assert!(all.contains(&row(&ids[0])) && all.contains(&row(&ids[1])));

    assert_eq!(timeline_events(&timeline_done), ["started", "step-succeeded", "step-succeeded", "completed"]);
    assert!(timeline_done.contains(r#"<span class="status COMPLETED" id="saga-status">COMPLETED</span>"#), "{timeline_done}");
    assert_eq!(timeline_events(&timeline_undone), ["started", "step-succeeded", "step-failed", "step-compensated", "compensated"]);
    assert!(timeline_undone.contains(r#"data-step="reserve_stock""#) && timeline_undone.contains(r#"data-step="authorize_payment""#), "{timeline_undone}");
    let trace = timeline_undone.split(r#"<code id="trace-id">"#).nth(1).and_then(|r| r.split('<').next()).unwrap_or_default().to_string();
    assert_eq!(trace.len(), 32, "the timeline shows the saga's trace id, got {trace:?}");

    let shot = artifacts().join("saga-view-compensated.png");
    let _ = std::fs::remove_file(&shot);
    let url = format!("{base}/sagas?saga={}", ids[1]);
    let shot2 = shot.clone();
    let status = tokio::task::spawn_blocking(move || {
        let profile = tempfile::tempdir().unwrap();
        headless(profile.path()).arg("--window-size=1400,700").arg(format!("--screenshot={}", shot2.display())).arg(url).output().expect("run chromium")
    })
    .await
    .unwrap();
    assert!(status.status.success(), "screenshot failed: {}", String::from_utf8_lossy(&status.stderr));
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot at {}", shot.display());
    eprintln!("screenshot: {}", shot.display());
    stack.stop().await;
}
