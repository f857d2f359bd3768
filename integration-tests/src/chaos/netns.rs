//! A network namespace of the run's own (iproute2's `ip netns`), in which one service runs with a
//! loopback of its own: whatever it reaches at `127.0.0.1` (the broker, the registry, PostgreSQL)
//! is a relay the harness opened inside that namespace, so the harness owns the service's whole
//! network and can cut, delay or lose it without touching the other processes. No veth and no
//! `tc` are needed (this machine's kernel has no `netem`): the relays are the network.
//!
//! Sockets keep the namespace they were created in, so one thread per namespace enters it
//! (`setns`) and creates the listening and connecting sockets the harness then drives from tokio.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};

/// What the namespace's thread is asked to create there.
enum Request {
    Bind(u16, tokio::sync::oneshot::Sender<std::io::Result<TcpListener>>),
    Connect(u16, tokio::sync::oneshot::Sender<std::io::Result<TcpStream>>),
}

/// A network namespace, deleted when dropped.
pub struct Netns {
    /// Its name under `/var/run/netns`.
    pub name: String,
    requests: Mutex<mpsc::Sender<Request>>,
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Netns({})", self.name)
    }
}

/// The `ip` executable (iproute2), found where Debian puts it; the children have no `PATH`.
pub fn ip_command() -> anyhow::Result<&'static str> {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .context("network faults run services in network namespaces: install iproute2 (`apt-get install iproute2`)")
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(ip_command()?).args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}; network faults need root (CAP_NET_ADMIN) for network namespaces",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    /// Creates namespace `name` with its loopback up, and the thread that works inside it.
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        ip(&["netns", "add", name])?;
        let made = Netns::enter(name);
        if made.is_err() {
            let _ = ip(&["netns", "del", name]);
        }
        made
    }

    fn enter(name: &str) -> anyhow::Result<Netns> {
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        let file = std::fs::File::open(format!("/var/run/netns/{name}")).with_context(|| format!("opening network namespace {name}"))?;
        let (tx, rx) = mpsc::channel::<Request>();
        let (entered_tx, entered_rx) = mpsc::channel();
        std::thread::Builder::new().name(format!("netns-{name}")).spawn(move || {
            // This thread only: the rest of the harness stays in its own namespace.
            let entered = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from);
            let ok = entered.is_ok();
            let _ = entered_tx.send(entered);
            if !ok {
                return;
            }
            let loopback = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            for request in rx {
                match request {
                    Request::Bind(port, reply) => {
                        let _ = reply.send(TcpListener::bind(loopback(port)).and_then(|l| l.set_nonblocking(true).map(|()| l)));
                    }
                    Request::Connect(port, reply) => {
                        let stream = TcpStream::connect_timeout(&loopback(port), Duration::from_secs(2)).and_then(|s| s.set_nonblocking(true).map(|()| s));
                        let _ = reply.send(stream);
                    }
                }
            }
        })?;
        entered_rx.recv().context("the namespace thread ended")?.with_context(|| format!("entering network namespace {name}"))?;
        Ok(Netns { name: name.to_string(), requests: Mutex::new(tx) })
    }

    /// A listener on `127.0.0.1:port` inside the namespace.
    pub async fn bind(&self, port: u16) -> anyhow::Result<tokio::net::TcpListener> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.requests.lock().unwrap().send(Request::Bind(port, tx)).context("the namespace thread is gone")?;
        let listener = rx.await.context("the namespace thread is gone")?.with_context(|| format!("binding 127.0.0.1:{port} in {}", self.name))?;
        Ok(tokio::net::TcpListener::from_std(listener)?)
    }

    /// A connection to `127.0.0.1:port` inside the namespace.
    pub async fn connect(&self, port: u16) -> std::io::Result<tokio::net::TcpStream> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let gone = || std::io::Error::other("the namespace thread is gone");
        self.requests.lock().unwrap().send(Request::Connect(port, tx)).map_err(|_| gone())?;
        tokio::net::TcpStream::from_std(rx.await.map_err(|_| gone())??)
    }

    /// The name of a namespace of this process: `chaos-<pid>-<what>`, so [`Netns::sweep`] knows
    /// whose it is.
    pub fn name_for(what: &str) -> String {
        format!("chaos-{}-{what}", std::process::id())
    }

    /// Deletes the namespaces of harnesses that are gone (killed before they could delete their
    /// own): `chaos-<pid>-…` whose process no longer exists.
    pub fn sweep() {
        let (Ok(entries), Ok(_)) = (std::fs::read_dir("/var/run/netns"), ip_command()) else { return };
        for name in entries.filter_map(|e| e.ok()?.file_name().into_string().ok()) {
            let Some(pid) = name.strip_prefix("chaos-").and_then(|rest| rest.split('-').next()).and_then(|p| p.parse::<u32>().ok()) else { continue };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The thread ends when its channel closes; the namespace goes when its file is unmounted
        // and its last process has exited.
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("chaos: deleting network namespace {}: {e:#}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Needs root; where namespaces cannot be made the test says so and fails, never passes.
    #[tokio::test]
    #[ignore = "needs root and iproute2: cargo test -p saga-integration-tests --lib netns -- --ignored"]
    async fn a_namespace_has_a_loopback_of_its_own() {
        let ns = Netns::create(&Netns::name_for("test")).expect("network namespaces (run as root with iproute2)");
        let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = host.local_addr().unwrap().port();
        assert!(ns.connect(port).await.is_err(), "the host's listener is not reachable inside the namespace");
        let inside = ns.bind(port).await.expect("the same port is free inside");
        let accept = tokio::spawn(async move {
            let (mut s, _) = inside.accept().await.unwrap();
            s.write_all(b"inside").await.unwrap();
        });
        let mut stream = ns.connect(port).await.unwrap();
        let mut got = [0u8; 6];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"inside");
        accept.await.unwrap();
    }
}
