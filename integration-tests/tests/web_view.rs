//! The live saga view in a real browser: headless Chromium loads the page `sagactl dev` serves,
//! runs its JavaScript against the JSON API, and the rendered DOM must list a completed and a
//! compensated saga under the right filters, with the right steps in their timelines; among a
//! thousand sagas, the search must find one by its id or the beginning of it, paging must reach
//! the last page, and the page must fit 1280 px. Screenshots are kept as test artifacts.

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

/// Headless, and what this machine's closed network needs (no background connections).
const HEADLESS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// Chromium, headless, with the flags this machine's closed network needs, on a fresh profile.
fn headless(profile: &std::path::Path) -> Command {
    let mut cmd = Command::new(chromium());
    cmd.args(HEADLESS)
        .args([
            "--hide-scrollbars",
            // Let the page's fetches finish before the DOM is dumped or the screenshot taken.
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// As in `sagactl dev`: spans, and so trace ids, exist (nothing is exported). Set up once for the
/// whole test binary and never dropped: the tests run in parallel, and a provider dropped at the
/// end of one test would stop the spans of the others.
fn telemetry() {
    static TELEMETRY: std::sync::OnceLock<saga_runtime::telemetry::Telemetry> = std::sync::OnceLock::new();
    TELEMETRY.get_or_init(|| saga_runtime::telemetry::init_with_default("web-view-test", "warn").unwrap());
}

/// The DOM after the page's scripts ran.
fn rendered(url: &str) -> String {
    rendered_at(url, 1400)
}

/// The DOM after the page's scripts ran in a window `width` pixels wide.
fn rendered_at(url: &str, width: u32) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = headless(profile.path()).arg(format!("--window-size={width},900")).arg("--dump-dom").arg(url).output().expect("run chromium");
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
    telemetry();
    let dir = tempfile::tempdir().unwrap();
    let stack = saga_sandbox::stack::Stack::start(options(Infra::Embedded, dir.path())).await.expect("stack starts");
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

    assert_eq!(timeline_events(&timeline_done), ["started", "step-succeeded", "step-succeeded", "step-succeeded", "completed"]);
    assert!(timeline_done.contains(r#"<span id="saga-version">v2</span>"#), "the saga's definition version is shown: {timeline_done}");
    assert!(timeline_done.contains(r#"<span class="status COMPLETED" id="saga-status">COMPLETED</span>"#), "{timeline_done}");
    assert_eq!(timeline_events(&timeline_undone), ["started", "step-succeeded", "step-succeeded", "step-failed", "step-compensated", "compensated"]);
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

/// Rows of the saga list, by saga id, in order.
fn listed(dom: &str) -> Vec<String> {
    dom.split(r#"<tr class="saga"#).skip(1).filter_map(|rest| rest.split(r#"data-saga=""#).nth(1)?.split('"').next().map(str::to_string)).collect()
}

/// A page of `/api/sagas`: the ids and the next cursor.
async fn api_page(base: &str, query: &str) -> (Vec<String>, Option<String>) {
    let page: serde_json::Value = reqwest::get(format!("{base}/api/sagas?{query}")).await.unwrap().json().await.unwrap();
    let ids = page["sagas"].as_array().unwrap().iter().map(|s| s["saga_id"].as_str().unwrap().to_string()).collect();
    (ids, page["next"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Debian's chromium; .ci/run installs it and runs this with --ignored"]
async fn a_thousand_sagas_are_found_paged_and_drawn_in_a_browser() {
    telemetry();
    let dir = tempfile::tempdir().unwrap();
    let stack = saga_sandbox::stack::Stack::start(options(Infra::Embedded, dir.path())).await.expect("stack starts");
    let n = 1000;
    let mut ids = Vec::new();
    for i in 0..n {
        let (order, _) = sample_order("find", i);
        ids.push(order.order_id.clone());
        stack.publish(&order.into()).await.unwrap();
    }
    wait_for_orders(&stack, &ids, Duration::from_secs(180)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let routes = stack.web_routes(None);
    tokio::spawn(async move { axum::serve(listener, routes).await.unwrap() });

    // The API pages through all of them, newest first, each saga once, 50 at a time.
    let (mut seen, mut cursors, mut after) = (Vec::new(), Vec::new(), None::<String>);
    loop {
        let query = after.as_ref().map_or("limit=50".to_string(), |a| format!("limit=50&after={a}"));
        let (page, next) = api_page(&base, &query).await;
        assert!(!page.is_empty() && page.len() <= 50);
        cursors.push(after.clone());
        seen.extend(page);
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((seen.len(), unique.len(), cursors.len()), (n, n, n / 50), "every saga once, on {} pages", n / 50);
    let bad = reqwest::get(format!("{base}/api/sagas?after=nonsense")).await.unwrap();
    assert_eq!(bad.status(), 400, "a bad cursor is refused");

    let base2 = base.clone();
    let last_page = cursors.last().cloned().flatten().expect("the last page has a cursor");
    let (exact, prefix, last, compensated, narrow) = tokio::task::spawn_blocking(move || {
        (
            rendered(&format!("{base2}/sagas?q=find-00537")),
            rendered(&format!("{base2}/sagas?q=find-0053")),
            rendered(&format!("{base2}/sagas?after={last_page}")),
            rendered(&format!("{base2}/sagas?state=COMPENSATED&version=2&reason=rare-gem")),
            rendered_at(&format!("{base2}/sagas?saga=find-00006"), 1280),
        )
    })
    .await
    .unwrap();
    // Search: exactly the one, or the ten that begin so.
    assert_eq!(listed(&exact), ["find-00537"], "exact search");
    let mut ten = listed(&prefix);
    ten.sort();
    assert_eq!(ten, (530..540).map(|i| format!("find-{i:05}")).collect::<Vec<_>>(), "prefix search");
    // Paging reaches the last page: the fifty that started first (as the API's last page has
    // them), and nothing older.
    assert_eq!(listed(&last), seen[n - 50..], "the page shows the API's last page");
    assert!(last.contains(r#"id="older" disabled"#), "no page after the last: {last}");
    // Filters: compensated sagas of v2 whose reason names the scarce sku (any case): the orders
    // built to run out of stock, a full first page of them.
    let out_of_stock = listed(&compensated);
    assert_eq!(out_of_stock.len(), 50, "{out_of_stock:?}");
    assert!(out_of_stock.iter().all(|id| id[5..].parse::<usize>().unwrap() % 7 == 5), "only the out-of-stock orders: {out_of_stock:?}");
    // Counts per state at the top agree with what finished.
    let completed = (0..n).filter(|i| !matches!(i % 7, 5 | 6)).count();
    assert!(exact.contains(&format!(r#"id="count-COMPLETED">{completed}<"#)), "the count of completed sagas is {completed}");
    assert!(exact.contains(&format!(r#"id="count-COMPENSATED">{}<"#, n - completed)));
    // The overview: every saga finished within the last ten minutes, and the reasons of the
    // compensated ones by kind, the most frequent first.
    let title = exact.split(r#"id="rate-title">"#).nth(1).and_then(|r| r.split('<').next()).unwrap_or_default();
    assert_eq!(title, format!("sagas per second by outcome, last 10 minutes ({n} finished)"), "the overview counts every finished saga");
    let reasons: Vec<&str> = exact.split(r#"<li class="reason">"#).skip(1).map(|r| r.split(" <").next().unwrap_or_default()).collect();
    assert_eq!(reasons, ["out of stock", "insufficient credit"], "top failure reasons: 143 and 142 of the thousand");
    // The compensated saga's timeline: one bar per wait (reserve, risk check, authorize, undo
    // reserve, finalize), and the page fits 1280 px.
    let timeline_chart = narrow.split(r#"<svg id="bars""#).nth(1).and_then(|r| r.split("</svg>").next()).unwrap_or_default();
    assert_eq!(timeline_chart.matches(r#"<rect class="bar "#).count(), 5, "{narrow}");
    assert!(timeline_chart.contains(r#"class="bar failed" "#) && timeline_chart.contains(r#"class="bar undo" "#));
    assert!(narrow.contains(r#"data-overflow="false""#), "the page is wider than 1280 px");

    let shot = artifacts().join("saga-view-1280.png");
    let _ = std::fs::remove_file(&shot);
    let url = format!("{base}/sagas?saga=find-00006");
    let shot2 = shot.clone();
    let status = tokio::task::spawn_blocking(move || {
        let profile = tempfile::tempdir().unwrap();
        headless(profile.path()).arg("--window-size=1280,800").arg(format!("--screenshot={}", shot2.display())).arg(url).output().expect("run chromium")
    })
    .await
    .unwrap();
    assert!(status.status.success(), "screenshot failed: {}", String::from_utf8_lossy(&status.stderr));
    eprintln!("screenshot: {}", shot.display());
    stack.stop().await;
}

/// Debian's chromedriver on a free port, for a WebDriver session in headless Chromium; killed on drop.
struct ChromeDriver {
    child: std::process::Child,
    port: u16,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        let path = std::env::var("SAGA_TEST_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        assert!(
            std::path::Path::new(&path).exists(),
            "{path} is missing: install Debian's chromium-driver (`apt-get install chromium-driver`) or set SAGA_TEST_CHROMEDRIVER"
        );
        let port = saga_sandbox::procs::free_port().expect("a free port");
        let child = Command::new(&path)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "chromedriver did not listen on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        ChromeDriver { child, port }
    }

    /// A headless Chromium session, with the flags this machine's closed network needs.
    async fn session(&self, profile: &std::path::Path) -> fantoccini::Client {
        let mut caps = serde_json::Map::new();
        let mut args: Vec<String> = HEADLESS.iter().map(|a| a.to_string()).collect();
        args.push("--window-size=1280,1000".into());
        args.push(format!("--user-data-dir={}", profile.display()));
        caps.insert("goog:chromeOptions".into(), serde_json::json!({ "binary": chromium(), "args": args }));
        fantoccini::ClientBuilder::native().capabilities(caps).connect(&format!("http://127.0.0.1:{}", self.port)).await.expect("a WebDriver session")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `check` on the page holds (the page redraws every 2 s; elements found before a
/// redraw go stale, so each try finds them again).
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "the page never showed {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks the element `css` (found again if a redraw replaced it).
async fn click(c: &fantoccini::Client, css: &str) {
    until(&format!("a clickable {css}"), || async { c.find(fantoccini::Locator::Css(css)).await.ok()?.click().await.ok() }).await
}

/// The text of the action's result beside the buttons, once it contains `want`.
async fn result_with(c: &fantoccini::Client, want: &str) -> String {
    until(&format!("an action result with {want:?}"), || async {
        let text = c.find(fantoccini::Locator::Id("action-result")).await.ok()?.text().await.ok()?;
        text.contains(want).then_some(text)
    })
    .await
}

/// The dead letters the page shows: (reference, its text).
async fn dead_letters_shown(c: &fantoccini::Client) -> Vec<(String, String)> {
    let mut shown = Vec::new();
    for d in c.find_all(fantoccini::Locator::Css(".dead-letter")).await.unwrap_or_default() {
        if let (Ok(Some(reference)), Ok(text)) = (d.attr("data-reference").await, d.text().await) {
            shown.push((reference, text));
        }
    }
    shown
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Debian's chromium and chromium-driver; .ci/run installs them and runs this with --ignored"]
async fn an_operator_redrives_and_aborts_a_parked_saga_by_clicking_in_a_browser() {
    telemetry();
    let dir = tempfile::tempdir().unwrap();
    let mut stack = saga_sandbox::stack::Stack::start(options(Infra::Embedded, dir.path())).await.expect("stack starts");
    let token = "click-token-0123456789";
    stack.settings.http.operator_token = token.into();
    let wait = Duration::from_secs(60);
    let (warm, _) = sample_order("click-warm", 0);
    let warm_id = warm.order_id.clone();
    stack.publish(&warm.into()).await.unwrap();
    wait_for_orders(&stack, &[warm_id], wait).await;
    let stock_before = saga_inventory::stock_of(&stack.dbs.inventory, "WIDGET-1").await.unwrap();

    // Inventory cannot work (its reservations table is gone: a fatal error, it holds), so the
    // saga waits at reserve_stock; a reply keyed by it that nobody can read parks it.
    sqlx::query("ALTER TABLE reservations RENAME TO reservations_away").execute(stack.dbs.inventory.pool()).await.unwrap();
    let (order, _) = sample_order("click", 0);
    let id = order.order_id.clone();
    stack.publish(&order.into()).await.unwrap();
    let status = |want: saga_orchestrator::saga::Status| {
        let (db, id) = (stack.dbs.orchestrator.clone(), id.clone());
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let s = saga_orchestrator::store::get_saga(&db, &id).await.unwrap();
                if s.as_ref().is_some_and(|s| s.state.status == want) {
                    return;
                }
                assert!(tokio::time::Instant::now() < deadline, "saga {id} never became {want:?}: {s:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    status(saga_orchestrator::saga::Status::Running).await;
    stack.publish_raw(&stack.topic(saga_contracts::TopicKind::InventoryEvents), Some(id.as_bytes()), b"not avro").await.unwrap();
    status(saga_orchestrator::saga::Status::Parked).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let routes = stack.web_routes(None);
    tokio::spawn(async move { axum::serve(listener, routes).await.unwrap() });

    let driver = ChromeDriver::start();
    let profile = tempfile::tempdir().unwrap();
    let c = driver.session(profile.path()).await;
    c.goto(&format!("{base}/sagas?saga={id}")).await.unwrap();

    // The dead letter that parked it, with its headers.
    let shown = until("the dead letter", || async { Some(dead_letters_shown(&c).await).filter(|d| d.len() == 1) }).await;
    let (first, text) = &shown[0];
    let events_dlt = format!("{}.dlt/", stack.topic(saga_contracts::TopicKind::InventoryEvents));
    assert!(first.starts_with(&events_dlt), "{first}");
    for header in ["saga.dlt.original.topic", "saga.dlt.error.class", "not-wire-format", "saga.dlt.consumer.group", "redrives 0"] {
        assert!(text.contains(header), "the dead letter shows {header}: {text}");
    }

    // Without the token the view refuses; the saga stays parked.
    click(&c, "#abort").await;
    let refused = result_with(&c, "operator token is required").await;
    assert!(refused.contains("Bearer"), "{refused}");

    // With it: redrive the dead letter after confirming where it goes. The record still cannot be
    // read, so it comes back as a second dead letter that counts its redrive.
    c.find(fantoccini::Locator::Id("token")).await.unwrap().send_keys(token).await.unwrap();
    click(&c, &format!(r#"button.redrive[data-reference="{first}"]"#)).await;
    let confirm = until("the redrive confirmation", || async { c.get_alert_text().await.ok() }).await;
    assert!(confirm.contains(&format!("back to {}", stack.topic(saga_contracts::TopicKind::InventoryEvents))) && confirm.contains("redrive 1"), "{confirm}");
    c.accept_alert().await.unwrap();
    let redriven = result_with(&c, "redriven:").await;
    assert!(redriven.contains(first.as_str()) && redriven.contains("redrive 1"), "{redriven}");
    let shown = until("the redriven record dead-lettered again", || async { Some(dead_letters_shown(&c).await).filter(|d| d.len() == 2) }).await;
    assert!(shown[0].1.contains("redriven") && shown[0].1.contains("saga view (operator token)"), "the first is marked redriven: {}", shown[0].1);
    assert!(shown[1].1.contains("saga.redrive.count") && shown[1].1.contains("redrives 1"), "the second counts its redrive: {}", shown[1].1);

    // Abort: the plan first, then the reason, then it goes through.
    click(&c, "#abort").await;
    let plan = until("the abort plan", || async { c.get_alert_text().await.ok() }).await;
    assert!(plan.contains("1. ReleaseStock (undo of reserve_stock)") && plan.contains("RejectOrder"), "{plan}");
    c.send_alert_text("customer called").await.unwrap();
    c.accept_alert().await.unwrap();
    let aborted = result_with(&c, "aborted:").await;
    assert!(aborted.contains("PARKED → COMPENSATING") && aborted.contains("ReleaseStock"), "{aborted}");
    let shot = artifacts().join("saga-view-dead-letter.png");
    std::fs::write(&shot, c.screenshot().await.unwrap()).unwrap();
    eprintln!("screenshot: {}", shot.display());
    c.close().await.unwrap();

    // The saga log says who asked; with inventory back, the order ends rejected, stock in place.
    let log = saga_orchestrator::store::saga_log(&stack.dbs.orchestrator, &id).await.unwrap();
    for event in ["operator-redrove", "operator-aborted"] {
        let entry = log.iter().find(|e| e.event == event).unwrap_or_else(|| panic!("no {event} in {log:?}"));
        assert_eq!(entry.cause_message_id.as_deref(), Some("saga view (operator token)"), "{entry:?}");
    }
    sqlx::query("ALTER TABLE reservations_away RENAME TO reservations").execute(stack.dbs.inventory.pool()).await.unwrap();
    status(saga_orchestrator::saga::Status::Compensated).await;
    assert_eq!(wait_for_orders(&stack, std::slice::from_ref(&id), wait).await[&id], saga_order::domain::OrderStatus::Rejected);
    assert_eq!(saga_inventory::stock_of(&stack.dbs.inventory, "WIDGET-1").await.unwrap(), stock_before, "stock conserved");
    stack.stop().await;
}
