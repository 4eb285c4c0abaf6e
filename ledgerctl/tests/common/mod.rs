//! What the stack-starting tests of this crate share.

/// Port bases for a stack of `regions` regions that nobody is using: PostgreSQL, Kafka, HTTP.
///
/// All of them lie below 32768, where Linux hands out ephemeral ports (32768-60999 by default):
/// a port checked free there can be taken by any outgoing connection before the stack binds it,
/// which once killed a test's broker at start-up. Every port `ledgerctl up` may use is checked:
/// per region PostgreSQL, Kafka's ten (listener, controller, peer links and proxies), the node
/// and the replicator's metrics; and off the HTTP base reconcile (+10), the router (+20),
/// Toxiproxy (+30, +40..+55), Jaeger (+60..+63) and Prometheus (+70).
pub fn free_port_bases(regions: u16) -> (u16, u16, u16) {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    loop {
        // uuid's randomness is enough to spread parallel tests over the ranges.
        let r = u16::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..2].try_into().unwrap());
        let (pg, http, kafka) = (10_000 + r % 1_990, 12_000 + r % 1_800, 14_000 + (r % 1_800) * 10);
        let regional = (0..regions).all(|i| {
            free(pg + i) && (0..10).all(|k| free(kafka + 10 * i + k)) && free(http + i) && free(http + 100 + i)
        });
        let shared = [10, 20, 30, 60, 61, 62, 63, 70].into_iter().chain(40..56).all(|o| free(http + o));
        if regional && shared {
            return (pg, kafka, http);
        }
    }
}
