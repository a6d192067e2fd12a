//! A test-only TCP proxy that cuts every connection through it at random intervals,
//! to prove the clients ride out dropped connections. Loopback only; stops on drop.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Forwards `127.0.0.1:port` to the upstream port and cuts all connections every
/// `min_ms..max_ms` milliseconds.
pub struct ChaosProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    calm: Arc<AtomicBool>,
    held: Arc<AtomicBool>,
    cuts: Arc<AtomicU64>,
}

impl ChaosProxy {
    pub fn start(upstream: u16, min_ms: u64, max_ms: u64) -> ChaosProxy {
        let proxy = ChaosProxy::start_held(upstream, min_ms, max_ms);
        proxy.unleash();
        proxy
    }

    /// A proxy that cuts nothing until [`ChaosProxy::unleash`]: a client's first
    /// connection must survive (before its first CONNACK a client fails fast, by design).
    pub fn start_held(upstream: u16, min_ms: u64, max_ms: u64) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let calm = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicBool::new(true));
        let cuts = Arc::new(AtomicU64::new(0));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();

        let (stop_accept, live_accept) = (stop.clone(), live.clone());
        thread::spawn(move || {
            while !stop_accept.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) {
                            pipe(client, server, &live_accept);
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });

        let (stop_cut, calm_cut, cuts_cut) = (stop.clone(), calm.clone(), cuts.clone());
        let held_cut = held.clone();
        thread::spawn(move || {
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            // Bounded: at most ten thousand cuts, and only until the proxy is dropped.
            for _ in 0..10_000 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let pause = min_ms + state % (max_ms - min_ms + 1);
                thread::sleep(Duration::from_millis(pause));
                if stop_cut.load(Ordering::Relaxed) || calm_cut.load(Ordering::Relaxed) {
                    return;
                }
                if held_cut.load(Ordering::Relaxed) {
                    continue;
                }
                let mut streams = live.lock().unwrap();
                if !streams.is_empty() {
                    cuts_cut.fetch_add(1, Ordering::Relaxed);
                }
                for s in streams.drain(..) {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
        });
        ChaosProxy {
            port,
            stop,
            calm,
            held,
            cuts,
        }
    }

    /// Starts cutting (a proxy from [`ChaosProxy::start_held`]).
    pub fn unleash(&self) {
        self.held.store(false, Ordering::Relaxed);
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::Relaxed)
    }

    /// Stops cutting (connections made from now on survive).
    pub fn calm(&self) {
        self.calm.store(true, Ordering::Relaxed);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies bytes both ways on two threads; both sockets are remembered so they can be cut.
fn pipe(client: TcpStream, server: TcpStream, live: &Mutex<Vec<TcpStream>>) {
    // Forward each write at once, as a network hop would (Nagle would hold it back).
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    if let (Ok(c3), Ok(s3)) = (client.try_clone(), server.try_clone()) {
        live.lock().unwrap().extend([c3, s3]);
    }
    thread::spawn(move || copy(client, s2));
    thread::spawn(move || copy(server, c2));
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
