//! A TCP proxy inside the test that can cut the link: every open
//! connection is dropped and new ones are refused until it heals — a
//! network partition between an agent and its broker. It can also make
//! the link slow: every byte is delivered a fixed delay after it was read,
//! in each direction, in order (a long wire, not a congested one).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards connections on a free local port to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        Proxy::start_delayed(target, Duration::ZERO).await
    }

    /// Forwards connections on a free local port to `target`, each byte
    /// `one_way` after it was read (a round trip takes twice that).
    pub async fn start_delayed(target: SocketAddr, one_way: Duration) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let gen_tx = generation.clone();
        let is_cut = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if is_cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cuts = gen_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    if one_way.is_zero() {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cuts.changed() => {}
                        }
                    } else {
                        let (client_r, client_w) = client.into_split();
                        let (server_r, server_w) = server.into_split();
                        tokio::select! {
                            () = delayed(client_r, server_w, one_way) => {}
                            () = delayed(server_r, client_w, one_way) => {}
                            _ = cuts.changed() => {}
                        }
                    }
                });
            }
        });
        Proxy {
            addr,
            cut,
            generation,
            task,
        }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read, until
/// `from` closes and what it sent is delivered, or `to` fails.
async fn delayed(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0
                || tx
                    .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    };
    let write = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
    };
    // what was read before `from` closed is still delivered
    tokio::join!(read, write);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
