//! TCP relays between a process and a server it uses, over a [`Link`] the harness controls:
//!
//! - **cut**: nothing crosses in either direction and new connections open but carry nothing, as
//!   on a network partition (no reset, no error: the bytes wait, the sender's buffers fill, its
//!   timeouts run). Healed, what waited goes through, as TCP retransmission would deliver it.
//! - **degraded**: every chunk is delivered `delay` after it was sent, and a share `loss` of them
//!   a retransmission timeout later still, which is what a lost segment costs a TCP stream (the
//!   bytes behind it wait too, as TCP delivers in order). The relays are at the TCP level, so loss
//!   is its effect on the stream, not dropped packets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::netns::Netns;
use super::schedule::Rng;

/// What a lost segment costs a TCP stream: Linux's smallest retransmission timeout.
pub const RETRANSMISSION: Duration = Duration::from_millis(200);

/// The state of a link.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Conditions {
    /// Cuts in force: the link carries nothing while any is (two partitions may overlap).
    pub cuts: u32,
    /// One-way delay of every chunk.
    pub delay: Duration,
    /// Share of chunks that cost a retransmission, 0 to 1.
    pub loss: f64,
    /// Degradations in force: `delay` and `loss` are the latest one's, until every one has ended.
    pub degrades: u32,
}

/// The network between some processes and some servers, as the harness sets it.
#[derive(Debug)]
pub struct Link {
    state: watch::Sender<Conditions>,
}

impl Link {
    /// A healthy link.
    pub fn new() -> Arc<Link> {
        Arc::new(Link { state: watch::channel(Conditions::default()).0 })
    }

    /// Cuts the link (`true`), or ends one cut (`false`): it heals when every cut has ended.
    pub fn cut(&self, on: bool) {
        self.state.send_modify(|c| c.cuts = if on { c.cuts + 1 } else { c.cuts.saturating_sub(1) });
    }

    /// Delays every chunk by `delay` and costs `loss` of them a retransmission (`Some`), or ends
    /// one such degradation (`None`): the link is healthy again when every one has ended.
    pub fn degrade(&self, how: Option<(Duration, f64)>) {
        self.state.send_modify(|c| match how {
            Some((delay, loss)) => {
                c.degrades += 1;
                c.delay = delay;
                c.loss = loss.clamp(0.0, 1.0);
            }
            None => {
                c.degrades = c.degrades.saturating_sub(1);
                if c.degrades == 0 {
                    (c.delay, c.loss) = (Duration::ZERO, 0.0);
                }
            }
        });
    }

    /// The conditions now.
    pub fn conditions(&self) -> Conditions {
        *self.state.borrow()
    }
}

/// Where a relay's connections go.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// An address in the harness's own network.
    Host(SocketAddr),
    /// `127.0.0.1:port` inside a network namespace.
    Netns(Arc<Netns>, u16),
}

impl Upstream {
    async fn connect(&self) -> std::io::Result<TcpStream> {
        match self {
            Upstream::Host(addr) => TcpStream::connect(addr).await,
            Upstream::Netns(ns, port) => ns.connect(*port).await,
        }
    }
}

/// A relay on a loopback port of the harness's own network to `upstream`.
pub struct Proxy {
    /// Where clients connect.
    pub port: u16,
    /// The link its connections cross.
    pub link: Arc<Link>,
}

impl Proxy {
    /// Listens on a free loopback port and relays every connection to `upstream` over a link of
    /// its own.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        Proxy::on(0, Upstream::Host(upstream), Link::new(), 0).await
    }

    /// Listens on loopback `port` (0: any free one) and relays to `upstream` over `link`; `seed`
    /// draws which chunks a lossy link delays.
    pub async fn on(port: u16, upstream: Upstream, link: Arc<Link>, seed: u64) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let port = listener.local_addr()?.port();
        serve(listener, upstream, link.clone(), seed);
        Ok(Proxy { port, link })
    }

    /// Cuts the link (`true`), or ends one cut (`false`): it heals when every cut has ended.
    pub fn cut(&self, on: bool) {
        self.link.cut(on);
    }
}

/// Relays every connection `listener` accepts to `upstream`, over `link`, until the runtime ends.
pub fn serve(listener: TcpListener, upstream: Upstream, link: Arc<Link>, seed: u64) {
    tokio::spawn(async move {
        let mut connections = 0u64;
        loop {
            let inbound = match listener.accept().await {
                Ok((inbound, _)) => inbound,
                Err(_) => {
                    // Out of descriptors, say: try again shortly rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            connections += 1;
            let (upstream, mut state) = (upstream.clone(), link.state.subscribe());
            let (rng, back) = (Rng::new(seed, connections), Rng::new(seed, connections | 1 << 63));
            tokio::spawn(async move {
                // Across a cut link a connection opens (the relay's side accepts it) but reaches
                // nothing until the link heals.
                if !healed(&mut state).await {
                    return;
                }
                let Ok(outbound) = upstream.connect().await else { return };
                let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                let (from_client, to_client) = inbound.into_split();
                let (from_server, to_server) = outbound.into_split();
                tokio::join!(pump(from_client, to_server, state.clone(), rng), pump(from_server, to_client, state, back));
            });
        }
    });
}

/// Copies `from` to `to` as the link lets it: each chunk leaves when its delay (and any
/// retransmission) has passed and the link is not cut, in the order it was read; a close, too.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, state: watch::Receiver<Conditions>, mut rng: Rng) {
    // A few chunks in flight, then the reader waits: the sender's buffers fill, as behind a link
    // that does not carry.
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(16);
    let reader_state = state.clone();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            let c = *reader_state.borrow();
            let lost = c.loss > 0.0 && rng.between(0.0, 1.0) < c.loss;
            let due = Instant::now() + c.delay + if lost { RETRANSMISSION } else { Duration::ZERO };
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let mut writer_state = state;
    let writer = async move {
        let mut last_due = Instant::now();
        while let Some((due, bytes)) = rx.recv().await {
            // In order: a chunk never overtakes one that a retransmission holds back.
            last_due = last_due.max(due);
            tokio::time::sleep_until(last_due).await;
            if !healed(&mut writer_state).await || to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        if healed(&mut writer_state).await {
            let _ = to.shutdown().await;
        }
    };
    tokio::join!(reader, writer);
}

/// Waits until no cut is in force; false when the link is gone.
async fn healed(state: &mut watch::Receiver<Conditions>) -> bool {
    while state.borrow_and_update().cuts > 0 {
        if state.changed().await.is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = server.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut buf = [0u8; 64];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n]).await.unwrap();
            }
        });
        upstream
    }

    #[tokio::test]
    async fn nothing_crosses_while_cut_and_everything_after() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        proxy.cut(true);
        proxy.cut(true);
        client.write_all(b"hello").await.unwrap();
        let mut echo = [0u8; 5];
        let waited = tokio::time::timeout(Duration::from_millis(300), client.read_exact(&mut echo)).await;
        assert!(waited.is_err(), "nothing comes back through a cut link");
        proxy.cut(false);
        let waited = tokio::time::timeout(Duration::from_millis(300), client.read_exact(&mut echo)).await;
        assert!(waited.is_err(), "one of two overlapping cuts ended: still cut");
        proxy.cut(false);
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut echo)).await.expect("healed").unwrap();
        assert_eq!(&echo, b"hello");
    }

    /// Sends two bytes and reads their echo; how long that took.
    async fn round_trip(client: &mut TcpStream, echo: &mut [u8; 2]) -> Duration {
        let started = std::time::Instant::now();
        client.write_all(b"hi").await.unwrap();
        client.read_exact(echo).await.unwrap();
        started.elapsed()
    }

    #[tokio::test]
    async fn a_degraded_link_delays_each_way_and_a_lost_chunk_holds_back_what_follows() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        let mut echo = [0u8; 2];
        let healthy = round_trip(&mut client, &mut echo).await;
        proxy.link.degrade(Some((Duration::from_millis(60), 0.0)));
        let delayed = round_trip(&mut client, &mut echo).await;
        assert!(delayed >= Duration::from_millis(120), "60 ms each way: {delayed:?} (healthy {healthy:?})");
        proxy.link.degrade(None);
        proxy.link.degrade(Some((Duration::ZERO, 1.0)));
        let lost = round_trip(&mut client, &mut echo).await;
        assert!(lost >= 2 * RETRANSMISSION, "every chunk lost once each way: {lost:?}");
        proxy.link.degrade(None);
        assert_eq!(proxy.link.conditions(), Conditions::default(), "every degradation ended: healthy");
        round_trip(&mut client, &mut echo).await;
        assert_eq!(&echo, b"hi");
    }
}
