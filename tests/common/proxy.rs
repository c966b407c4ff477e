//! A TCP proxy a test controls, put between a role and a server (PostgreSQL,
//! Redis, a gateway): it can be cut (every open connection broken, new ones
//! refused) and restored, pointed at another address (a restarted gateway),
//! and made to lose answers (the connection closed when the server starts to
//! answer a request, so the client never learns that the server took it).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// See the module doc.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    open: AtomicBool,
    /// Where connections go; `None`: nowhere (refused like a cut).
    target: Mutex<Option<SocketAddr>>,
    links: Mutex<Vec<AbortHandle>>,
    /// Per mille of answers lost, and the seeded generator that picks them.
    lose_per_mille: AtomicU64,
    rng: Mutex<u64>,
    /// Answers lost so far.
    lost: AtomicU64,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        Self::start_to(Some(target)).await
    }

    /// A proxy that refuses every connection until [`retarget`](Self::retarget)
    /// says where they go.
    pub async fn start_to(target: Option<SocketAddr>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            open: AtomicBool::new(true),
            target: Mutex::new(target),
            links: Mutex::default(),
            lose_per_mille: AtomicU64::new(0),
            rng: Mutex::new(1),
            lost: AtomicU64::new(0),
        });
        let accepting = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = *accepting.target.lock().unwrap();
                let Some(target) = target.filter(|_| accepting.open.load(Ordering::SeqCst)) else {
                    continue; // dropped: the connection is reset at once
                };
                let link = tokio::spawn(relay(client, target, Arc::clone(&accepting)));
                let mut links = accepting.links.lock().unwrap();
                links.retain(|l| !l.is_finished());
                links.push(link.abort_handle());
            }
        });
        Proxy { addr, state }
    }

    /// Refuses new connections and breaks every open one.
    pub fn cut(&self) {
        self.state.open.store(false, Ordering::SeqCst);
        self.break_links();
    }

    pub fn restore(&self) {
        self.state.open.store(true, Ordering::SeqCst);
    }

    /// Sends new connections to `target` (`None`: refuses them); open ones
    /// are broken, as a server's restart would.
    pub fn retarget(&self, target: Option<SocketAddr>) {
        *self.state.target.lock().unwrap() = target;
        self.break_links();
    }

    /// Loses `per_mille` of the answers from now on, picked by a generator
    /// seeded with `seed` (0 per mille: none).
    pub fn lose_answers(&self, per_mille: u64, seed: u64) {
        *self.state.rng.lock().unwrap() = seed | 1;
        self.state.lose_per_mille.store(per_mille, Ordering::SeqCst);
    }

    /// How many answers were lost so far.
    pub fn answers_lost(&self) -> u64 {
        self.state.lost.load(Ordering::SeqCst)
    }

    fn break_links(&self) {
        for link in self.state.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

impl State {
    /// Whether to lose the answer that starts now.
    fn lose(&self) -> bool {
        let per_mille = self.lose_per_mille.load(Ordering::SeqCst);
        if per_mille == 0 {
            return false;
        }
        let mut x = self.rng.lock().unwrap();
        *x ^= *x >> 12;
        *x ^= *x << 25;
        *x ^= *x >> 27;
        let roll = x.wrapping_mul(0x2545_f491_4f6c_dd1d) % 1000;
        let lose = roll < per_mille;
        if lose {
            self.lost.fetch_add(1, Ordering::SeqCst);
        }
        lose
    }
}

/// Copies both ways until either side closes. Bytes from the server after
/// bytes from the client start an answer, which may be lost: the connection
/// is then closed without passing it on.
async fn relay(client: TcpStream, target: SocketAddr, state: Arc<State>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let asked = Arc::new(AtomicBool::new(false));
    let asking = Arc::clone(&asked);
    let requests = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    asking.store(true, Ordering::SeqCst);
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let answers = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if asked.swap(false, Ordering::SeqCst) && state.lose() {
                        return;
                    }
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    // Either direction ending ends the link: both halves are dropped.
    tokio::select! {
        () = requests => {}
        () = answers => {}
    }
}

/// `url` with its host and port replaced by `addr`.
pub fn through(url: &str, addr: SocketAddr) -> String {
    let mut parsed = reqwest::Url::parse(url).unwrap();
    parsed.set_host(Some(&addr.ip().to_string())).unwrap();
    parsed.set_port(Some(addr.port())).unwrap();
    parsed.to_string()
}

/// The server address of a service URL (`localhost` as 127.0.0.1).
pub fn target_of(url: &str) -> SocketAddr {
    let parsed = reqwest::Url::parse(url).unwrap();
    let host = parsed.host_str().unwrap().trim_matches(['[', ']']);
    let port = parsed.port_or_known_default().unwrap_or(5432);
    let ip: IpAddr = if host == "localhost" {
        [127, 0, 0, 1].into()
    } else {
        host.parse().unwrap()
    };
    SocketAddr::new(ip, port)
}
