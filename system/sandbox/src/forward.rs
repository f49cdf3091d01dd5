//! A TCP forwarder between network namespaces: what listens in one reaches a
//! server only another can.

use std::io;
use std::net::{TcpListener, TcpStream};

/// Accepts connections on `listener` and joins each to a connection `connect`
/// makes (in whichever namespace it makes it), until the listener is shut
/// down. Each direction is copied by a thread of its own.
pub fn forward(listener: &TcpListener, connect: impl Fn() -> io::Result<TcpStream>) {
    while let Ok((inside, _)) = listener.accept() {
        let Ok(outside) = connect() else { continue };
        for (mut from, mut to) in [(inside.try_clone(), outside.try_clone()), (outside.try_clone(), inside.try_clone())]
            .into_iter()
            .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
        {
            std::thread::spawn(move || {
                let _ = io::copy(&mut from, &mut to);
                let _ = to.shutdown(std::net::Shutdown::Write);
            });
        }
    }
}
