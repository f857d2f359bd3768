//! The orchestrator's wall clock jumps (an NTP step, a VM resumed), under libfaketime from
//! Debian's `faketime` package: deadlines are stored as wall-clock times, so a jump forward of J
//! fires a waiting saga's deadline early by at most J, and a jump backward delays it by J; none is
//! lost. The monotonic clock is left alone, as a real clock step leaves it.
//!
//! Inventory does not run, so each saga waits at its first step until its deadline (8 s).

use std::path::PathBuf;
use std::time::Duration;

use saga_cli::sample::sample_order;
use saga_orchestrator::saga::Status;
use saga_sandbox::procs::{await_saga, saga_status, Sandbox};

const STEP_TIMEOUT: Duration = Duration::from_secs(8);
const JUMP: Duration = Duration::from_secs(5);
/// Polling the saga table every 50 ms, and a timer tick of 50 ms.
const SLACK: Duration = Duration::from_millis(500);
/// A deadline fires once the orchestrator has read its partition past it: with nothing to read,
/// up to about 2.5 s after its time (`saga_runtime::read_through`).
const READ_THROUGH: Duration = Duration::from_secs(3);

fn libfaketime() -> PathBuf {
    let path = PathBuf::from(std::env::var("SAGA_TEST_LIBFAKETIME").unwrap_or_else(|_| "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1".into()));
    assert!(path.exists(), "{} is missing: install Debian's faketime (`apt-get install faketime`) or set SAGA_TEST_LIBFAKETIME", path.display());
    path
}

#[test]
#[ignore = "needs Debian's faketime (libfaketime); .ci/run installs it and runs this with --ignored"]
fn a_clock_jump_moves_a_deadline_by_at_most_the_jump_and_loses_none() {
    let lib = libfaketime();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut sandbox = Sandbox::start("clock", 2, &rt);
    let clock = sandbox.dir.path().join("orchestrator-clock");
    std::fs::write(&clock, "+0").unwrap();
    let extra = |name: &str| {
        let mut env = vec![("SAGA_SAGA__STEP_TIMEOUT_MS", STEP_TIMEOUT.as_millis().to_string()), ("SAGA_SAGA__TIMER_INTERVAL_MS", "50".into())];
        if name == "orchestrator" {
            env.extend([
                ("LD_PRELOAD", lib.display().to_string()),
                ("FAKETIME_TIMESTAMP_FILE", clock.display().to_string()),
                ("FAKETIME_NO_CACHE", "1".into()),
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
            ]);
        }
        env
    };
    let services: Vec<_> = ["order", "payment", "orchestrator"].into_iter().map(|s| sandbox.spawn(s, &extra(s))).collect();

    rt.block_on(async {
        let client = sandbox.client().await;
        let orchestrator = saga_store::Db::connect(&sandbox.db("orchestrator"), 1).await.unwrap();
        let seen = |id: String, want: Status, within: Duration| {
            let db = &orchestrator;
            async move { await_saga(db, &id, &[want], within).await.1 }
        };

        // Forward: 1 s after saga A starts waiting, the orchestrator's clock jumps 5 s ahead. Its
        // 8 s deadline fires after about 3 s, never before 8 - 5.
        let a = sample_order("clock-a", 0).0;
        let a_id = a.order_id.clone();
        client.place(a, None).await;
        let started = seen(a_id.clone(), Status::Running, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(saga_status(&orchestrator, &a_id).await, Some(Status::Running), "nothing fires before the jump");
        std::fs::write(&clock, format!("+{}", JUMP.as_secs())).unwrap();
        let fired = seen(a_id.clone(), Status::Compensating, STEP_TIMEOUT + SLACK * 4 + READ_THROUGH).await;
        let waited = fired - started;
        assert!(waited + SLACK >= STEP_TIMEOUT - JUMP, "a jump of {JUMP:?} ahead fired an {STEP_TIMEOUT:?} deadline after {waited:?}");
        eprintln!("forward jump of {JUMP:?}: the {STEP_TIMEOUT:?} deadline fired after {waited:?}");

        // Backward: saga B starts under the clock 5 s ahead; 1 s later it steps back. B's deadline
        // fires about 5 s late, never early, and is not lost.
        let b = sample_order("clock-b", 0).0;
        let b_id = b.order_id.clone();
        client.place(b, None).await;
        let started = seen(b_id.clone(), Status::Running, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        std::fs::write(&clock, "+0").unwrap();
        let fired = seen(b_id.clone(), Status::Compensating, STEP_TIMEOUT + JUMP + SLACK * 4 + READ_THROUGH).await;
        let waited = fired - started;
        assert!(waited + SLACK >= STEP_TIMEOUT + JUMP, "a jump back of {JUMP:?} delays an {STEP_TIMEOUT:?} deadline by it, yet it fired after {waited:?}");
        eprintln!("backward jump of {JUMP:?}: the {STEP_TIMEOUT:?} deadline fired after {waited:?}");
        let log = saga_orchestrator::store::saga_log(&orchestrator, &b_id).await.unwrap();
        assert_eq!(log.iter().filter(|e| e.event == "step-timed-out").count(), 1, "fired once: {log:?}");
    });
    sandbox.stop(services);
}
