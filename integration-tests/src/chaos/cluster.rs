//! The processes of a run — the broker, the registry and the four services — as children the
//! harness starts, kills with SIGKILL, reaps and starts again.
//!
//! Every child is spawned from one long-lived thread through `setpriv --pdeathsig KILL` (when
//! util-linux has it), so even a harness killed with SIGKILL takes its children with it; a
//! dropped [`Cluster`] (normal exit, error, panic) kills and reaps them itself.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::Mutex;

use super::netns::{self, Netns};

/// How to start one process.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Name in logs and faults (`tansu`, `saga-order`, …); the log file is `<name>.log`.
    pub name: &'static str,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment (nothing is inherited, so the configuration is exactly this).
    pub env: Vec<(String, String)>,
    /// Working directory (tansu resolves its `sqlite://` path against it).
    pub cwd: PathBuf,
    /// A TCP port it listens on: a start waits until it accepts connections.
    pub port: Option<u16>,
    /// The network namespace it runs in (`ip netns exec`), if not the harness's own.
    pub netns: Option<Arc<Netns>>,
    /// A line in its log that says it is broken though still running (tansu 0.6's storage can
    /// panic in a worker thread and leave the process up, answering every request with an
    /// error): the watcher then restarts it, as a liveness probe would, and records it.
    pub broken_when_logged: Option<&'static str>,
}

/// A process that exited without being killed by the harness.
#[derive(Debug, Clone)]
pub struct UnexpectedExit {
    /// Which.
    pub name: &'static str,
    /// How it ended.
    pub status: String,
    /// Seconds since the cluster started.
    pub at_secs: f64,
    /// The end of its log.
    pub log_tail: String,
}

struct Slot {
    spec: Spec,
    child: Option<Child>,
    starts: u32,
    /// How much of its log the watcher has read for [`Spec::broken_when_logged`].
    log_read: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

type SpawnRequest = (Command, tokio::sync::oneshot::Sender<std::io::Result<Child>>);

/// The run's processes.
pub struct Cluster {
    dir: PathBuf,
    slots: BTreeMap<&'static str, Arc<Mutex<Slot>>>,
    // Children are forked from this one thread: `--pdeathsig` fires when the forking thread ends,
    // and this thread lives exactly as long as the cluster.
    spawner: std::sync::Mutex<mpsc::Sender<SpawnRequest>>,
    setpriv: bool,
    started: Instant,
    exits: std::sync::Mutex<Vec<UnexpectedExit>>,
}

impl Cluster {
    /// A cluster whose logs go to `dir`; `specs` are registered, not started.
    pub fn new(dir: PathBuf, specs: Vec<Spec>) -> Cluster {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("chaos-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the spawner thread");
        let setpriv = Command::new("setpriv").args(["--pdeathsig", "KILL", "--", "true"]).status().is_ok_and(|s| s.success());
        let slots = specs.into_iter().map(|s| (s.name, Arc::new(Mutex::new(Slot { spec: s, child: None, starts: 0, log_read: 0 })))).collect();
        Cluster { dir, slots, spawner: std::sync::Mutex::new(tx), setpriv, started: Instant::now(), exits: Default::default() }
    }

    fn slot(&self, name: &str) -> anyhow::Result<&Arc<Mutex<Slot>>> {
        self.slots.get(name).with_context(|| format!("no process named {name}"))
    }

    /// Starts `name` and waits for its port.
    pub async fn start(&self, name: &str) -> anyhow::Result<()> {
        let mut slot = self.slot(name)?.lock().await;
        self.start_slot(&mut slot).await
    }

    async fn start_slot(&self, slot: &mut Slot) -> anyhow::Result<()> {
        let spec = slot.spec.clone();
        let log_path = self.dir.join(format!("{}.log", spec.name));
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        slot.starts += 1;
        writeln!(log, "=== chaos: start #{} of {} at +{:.1}s ===", slot.starts, spec.name, self.started.elapsed().as_secs_f64())?;
        // What an earlier process logged (a panic it died of, say) is not this one's.
        slot.log_read = log.metadata()?.len();
        // `ip netns exec` and setpriv each exec what follows them: the child's pid is the program's.
        let mut line: Vec<std::ffi::OsString> = Vec::new();
        if self.setpriv {
            line.extend(["setpriv", "--pdeathsig", "KILL", "--"].map(Into::into));
        }
        if let Some(ns) = &spec.netns {
            line.extend([netns::ip_command()?, "netns", "exec", &ns.name].map(Into::into));
        }
        line.push(spec.program.clone().into());
        let mut cmd = Command::new(&line[0]);
        cmd.args(&line[1..]).args(&spec.args).current_dir(&spec.cwd).env_clear().envs(spec.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.spawner.lock().unwrap().send((cmd, tx)).context("the spawner thread is gone")?;
        let child = rx.await.context("the spawner thread is gone")?.with_context(|| format!("starting {}", spec.program.display()))?;
        slot.child = Some(child);
        if let Some(port) = spec.port {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let listening = match &spec.netns {
                    Some(ns) => ns.connect(port).await.is_ok(),
                    None => tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok(),
                };
                if listening {
                    break;
                }
                if let Some(status) = slot.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    slot.child = None;
                    bail!("{} exited with {status} before listening on port {port}; see {}", spec.name, log_path.display());
                }
                if Instant::now() > deadline {
                    bail!("{} did not listen on port {port} within 60 s; see {}", spec.name, log_path.display());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// `kill -9` of `name`, reaped; then, after `down`, started again (waiting for its port).
    /// The process is held for the whole cycle, so the watcher does not count it as a crash.
    pub async fn kill_and_restart(&self, name: &str, down: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let mut slot = self.slot(name)?.lock().await;
        let status = kill9(&mut slot).await;
        tokio::time::sleep(down).await;
        // A port may be briefly unavailable (a dependency down): keep trying for a while.
        let mut last = None;
        for _ in 0..10 {
            match self.start_slot(&mut slot).await {
                Ok(()) => return Ok(status),
                Err(e) => {
                    eprintln!("chaos: restarting {name} failed: {e:#}; retrying");
                    last = Some(e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        Err(last.expect("ten attempts failed"))
    }

    /// SIGSTOP of `name`, then SIGCONT after `paused`. The process is held (no other fault takes
    /// it meanwhile), and a stopped process has not exited, so the watcher leaves it alone.
    pub async fn pause(&self, name: &str, paused: Duration) -> anyhow::Result<()> {
        let slot = self.slot(name)?.lock().await;
        let Some(pid) = slot.child.as_ref().map(Child::id) else { anyhow::bail!("{name} is not running") };
        signal(pid, "STOP").await?;
        tokio::time::sleep(paused).await;
        signal(pid, "CONT").await
    }

    /// Restarts processes that exited by themselves (as a container runtime would), recording
    /// each exit; runs until aborted.
    pub async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            for (name, slot) in &self.slots {
                let Ok(mut slot) = slot.try_lock() else { continue };
                let status = match slot.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    Some(status) => status.to_string(),
                    None => match self.broken(name, &mut slot) {
                        Some(line) => {
                            kill9(&mut slot).await;
                            format!("running but broken, killed: its log says {line:?}")
                        }
                        None => continue,
                    },
                };
                slot.child = None;
                let exit = UnexpectedExit { name, status, at_secs: self.started.elapsed().as_secs_f64(), log_tail: self.log_tail(name, 12) };
                eprintln!("chaos: {name} exited by itself ({}) at +{:.1}s; restarting it in 1 s", exit.status, exit.at_secs);
                self.exits.lock().unwrap().push(exit);
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Err(e) = self.start_slot(&mut slot).await {
                    eprintln!("chaos: restarting {name} failed: {e:#}; will retry");
                }
            }
        }
    }

    /// The first new line of `slot`'s log that says it is broken, if any.
    fn broken(&self, name: &str, slot: &mut Slot) -> Option<String> {
        let pattern = slot.spec.broken_when_logged?;
        slot.child.as_ref()?;
        let mut f = std::fs::File::open(self.dir.join(format!("{name}.log"))).ok()?;
        let len = f.metadata().ok()?.len();
        if len <= slot.log_read {
            return None;
        }
        f.seek(SeekFrom::Start(slot.log_read)).ok()?;
        let mut text = Vec::new();
        f.read_to_end(&mut text).ok()?;
        // Up to the last whole line: a line being written is read in full next time.
        let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        slot.log_read += whole as u64;
        let text = String::from_utf8_lossy(&text[..whole]);
        let line = text.lines().find(|l| l.contains(pattern))?;
        Some(line.chars().take(300).collect())
    }

    /// Kills and reaps every process.
    pub async fn stop_all(&self) {
        for slot in self.slots.values() {
            kill9(&mut *slot.lock().await).await;
        }
    }

    /// Processes that exited without being killed.
    pub fn unexpected_exits(&self) -> Vec<UnexpectedExit> {
        self.exits.lock().unwrap().clone()
    }

    /// The last `lines` lines of a process's log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let Ok(mut f) = std::fs::File::open(self.dir.join(format!("{name}.log"))) else { return String::new() };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(16_384)));
        let mut text = String::new();
        let _ = f.read_to_string(&mut text);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// SIGKILL and reap; the exit status, or `None` when it was not running.
async fn kill9(slot: &mut Slot) -> Option<ExitStatus> {
    let mut child = slot.child.take()?;
    let _ = child.kill();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(_) => return None,
        }
    }
}

/// Sends `kill -<signal> <pid>`.
async fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().await?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed: {status}");
    Ok(())
}
