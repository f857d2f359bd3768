//! A TCP relay between a service and a server it uses, that the harness can cut: while cut,
//! nothing crosses in either direction and new connections open but carry nothing, as on a network
//! partition (no reset, no error: the bytes wait, the sender's buffers fill, its timeouts run).
//! Healed, what waited goes through, as TCP retransmission would deliver it.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A relay on a port of its own to `upstream`.
pub struct Proxy {
    /// Where clients connect.
    pub port: u16,
    /// Cuts in force: the link carries nothing while any is (two partitions may overlap).
    cut: watch::Sender<u32>,
}

impl Proxy {
    /// Listens on a free loopback port and relays every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (cut, _) = watch::channel(0u32);
        let state = cut.subscribe();
        tokio::spawn(async move {
            loop {
                let inbound = match listener.accept().await {
                    Ok((inbound, _)) => inbound,
                    Err(_) => {
                        // Out of descriptors, say: try again shortly rather than spin.
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else { return };
                    let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                    let (from_client, to_client) = inbound.into_split();
                    let (from_server, to_server) = outbound.into_split();
                    tokio::join!(pump(from_client, to_server, state.clone()), pump(from_server, to_client, state));
                });
            }
        });
        Ok(Proxy { port, cut })
    }

    /// Cuts the link (`true`), or ends one cut (`false`): it heals when every cut has ended.
    pub fn cut(&self, on: bool) {
        self.cut.send_modify(|cuts| *cuts = if on { *cuts + 1 } else { cuts.saturating_sub(1) });
    }
}

/// Copies `from` to `to`, holding what it read, and a close, while the link is cut: the other
/// side learns nothing until it heals (a server keeps a transaction open, with its locks, as
/// behind a dead link).
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut cut: watch::Receiver<u32>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        if !healed(&mut cut).await {
            return;
        }
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Waits until no cut is in force; false when the proxy is gone.
async fn healed(cut: &mut watch::Receiver<u32>) -> bool {
    while *cut.borrow_and_update() > 0 {
        if cut.changed().await.is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn nothing_crosses_while_cut_and_everything_after() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = server.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let proxy = Proxy::start(upstream).await.unwrap();
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
}
