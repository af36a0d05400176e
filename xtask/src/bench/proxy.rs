//! A TCP proxy in front of Kratos that counts the bytes in both directions.

use super::*;

/// A TCP proxy that counts the bytes in both directions.
pub(super) struct Proxy {
    pub(super) port: u16,
    pub(super) bytes: Arc<AtomicU64>,
}

pub(super) fn pipe(mut from: TcpStream, mut to: TcpStream, bytes: Arc<AtomicU64>) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

pub(super) fn proxy(target: &str) -> Result<Proxy, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(err)?;
    let port = listener.local_addr().map_err(err)?.port();
    let bytes = Arc::new(AtomicU64::new(0));
    let target = target.trim_start_matches("http://").to_string();
    let counter = bytes.clone();
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                (Ok(c), Ok(s)) => (c, s),
                _ => continue,
            };
            let (up, down) = (counter.clone(), counter.clone());
            thread::spawn(move || pipe(client, server, up));
            thread::spawn(move || pipe(s2, c2, down));
        }
    });
    Ok(Proxy { port, bytes })
}
