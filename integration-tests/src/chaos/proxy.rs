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
    cut: watch::Sender<bool>,
}

impl Proxy {
    /// Listens on a free loopback port and relays every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (cut, _) = watch::channel(false);
        let state = cut.subscribe();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { continue };
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

    /// Cuts the link (`true`) or heals it.
    pub fn cut(&self, on: bool) {
        self.cut.send_replace(on);
    }
}

/// Copies `from` to `to`, holding what it read while the link is cut.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut cut: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while *cut.borrow_and_update() {
            if cut.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
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
        client.write_all(b"hello").await.unwrap();
        let mut echo = [0u8; 5];
        let waited = tokio::time::timeout(Duration::from_millis(300), client.read_exact(&mut echo)).await;
        assert!(waited.is_err(), "nothing comes back through a cut link");
        proxy.cut(false);
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut echo)).await.expect("healed").unwrap();
        assert_eq!(&echo, b"hello");
    }
}
