//! Loopback ports for a process a test starts later to listen on.

use std::net::TcpListener;

/// The lowest port handed out.
const LOWEST: u16 = 10_000;

/// A loopback port free now, for a server a test starts next. Taken below the kernel's
/// ephemeral range: a port from `bind(0)` comes from that range, and any connection opened
/// before the server binds it (the server's own database pool, say) may get it as its local
/// port, failing the server's start with "Address already in use" (it happened to CI's demo).
/// Panics when no port is free: a test cannot go on without one.
pub fn free_port() -> u16 {
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_from.saturating_sub(LOWEST);
    // A start that differs between the tests running at once (pid and time).
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    for i in 0..u32::from(span) {
        let port = LOWEST + ((seed.wrapping_add(i)) % u32::from(span)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

#[cfg(test)]
mod tests {
    use super::free_port;

    #[test]
    fn ports_are_free_and_below_the_ephemeral_range() {
        let port = free_port();
        assert!(port >= super::LOWEST);
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}
