//! The listeners' sockets. With `enable_reuse_port: true` (the default, as in Envoy on Linux),
//! every worker binds a socket of its own to a listener's address with
//! `SO_REUSEPORT`, and the kernel spreads new connections evenly across them by their addresses.
//! From one shared socket, whichever worker wakes first takes the connection: a burst of 32 new
//! connections all went to one worker while the other idled.
//!
//! Only processes of the same user can join a `SO_REUSEPORT` group (Linux refuses the others),
//! so with it a second proxy of the same user on the same address shares its connections
//! instead of failing to start, as a second Envoy does.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Connections the kernel holds for a socket before they are accepted (Envoy's default).
const BACKLOG: i32 = 1024;

/// `workers` non-blocking sockets listening on `address` (port 0: one free port for all): one
/// each with `SO_REUSEPORT` when `reuse_port`, else one socket shared by all.
pub(crate) fn bind(address: SocketAddr, workers: usize, reuse_port: bool) -> io::Result<Vec<TcpListener>> {
    let first = bind_one(address, reuse_port)?;
    let bound = first.local_addr()?;
    let mut sockets = Vec::with_capacity(workers);
    sockets.push(first);
    for _ in 1..workers {
        let socket = if reuse_port { bind_one(bound, true)? } else { sockets[0].try_clone()? };
        sockets.push(socket);
    }
    Ok(sockets)
}

fn bind_one(address: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
    // As the standard library's `TcpListener::bind` does: a restart may bind while the previous
    // process's connections linger in TIME_WAIT.
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn every_worker_gets_a_socket_on_the_one_port_and_each_accepts() {
        let sockets = bind(SocketAddr::from(([127, 0, 0, 1], 0)), 2, true).expect("bind");
        let ports: Vec<u16> = sockets.iter().map(|s| s.local_addr().expect("address").port()).collect();
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0], ports[1], "one port for both");
        assert_ne!(ports[0], 0);
        // Connections from many source ports reach both sockets (the kernel hashes them).
        let mut reached = [0usize; 2];
        for _ in 0..64 {
            let mut client = std::net::TcpStream::connect(("127.0.0.1", ports[0])).expect("connect");
            client.write_all(b"x").expect("write");
            let accepted = loop {
                let found =
                    sockets.iter().enumerate().find_map(|(i, s)| s.accept().ok().map(|(stream, _)| (i, stream)));
                if let Some(found) = found {
                    break found;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            };
            let (index, mut stream) = accepted;
            stream.set_nonblocking(false).expect("blocking");
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).expect("read");
            reached[index] += 1;
        }
        assert!(reached.iter().all(|n| *n > 0), "both sockets took connections: {reached:?}");
    }

    #[test]
    fn without_reuse_port_a_second_bind_of_the_address_fails() {
        let sockets = bind(SocketAddr::from(([127, 0, 0, 1], 0)), 2, false).expect("bind");
        let address = sockets[0].local_addr().expect("address");
        assert_eq!(sockets[1].local_addr().expect("address"), address, "the clone of the one socket");
        assert!(bind(address, 1, false).is_err(), "the address is taken");
        assert!(bind(address, 1, true).is_err(), "a socket without SO_REUSEPORT cannot be joined");
    }
}
