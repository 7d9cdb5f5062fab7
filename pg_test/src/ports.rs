//! The port registry: every port the integration tests, the soak and the bench listen on, as an
//! offset into the block of 1000 ports of the PostgreSQL version under test (`test_port()`, the
//! block's first, is that version's integration cluster). One list, so that no two servers of a
//! version share a port (`every_port_is_taken_once`); `port(offset)` is the port itself.

/// The version's integration cluster (the soak's and the bench's, which never run beside it).
pub const SHARED: u16 = 0;
/// standby.rs: a hot standby of the integration cluster.
pub const STANDBY: u16 = 100;

// clusters of their own (`Cluster::start`)
/// clusters.rs: `CREATE EXTENSION` without the preload.
pub const NO_PRELOAD: u16 = 301;
/// clusters.rs: a fast stop while a prepared transaction holds the audit table.
pub const FAST_STOP: u16 = 302;
/// clusters.rs: a squatted role and schema.
pub const SQUAT: u16 = 303;
/// clusters.rs: a hostile owner of the worker's database.
pub const HOSTILE: u16 = 304;
/// clusters.rs: a missing worker database.
pub const NO_DATABASE: u16 = 305;
/// upgrade.rs: 0.1.0 updated under a guarding worker.
pub const UPGRADE: u16 = 306;
/// history.rs: the ring wrapping at `history_size`.
pub const HISTORY_RING: u16 = 311;
/// endpoint.rs: the endpoint with every slot taken, beside postgres_exporter.
pub const ENDPOINT: u16 = 321;
/// endpoint.rs: malformed, oversized, slow and wrong requests.
pub const ENDPOINT_REQUESTS: u16 = 322;
/// endpoint.rs: a port in use.
pub const ENDPOINT_BUSY: u16 = 323;
/// endpoint.rs: an address that does not parse.
pub const ENDPOINT_GARBAGE: u16 = 324;
/// prometheus.rs: a primary and its standby, scraped.
pub const PROMETHEUS_PRIMARY: u16 = 331;
pub const PROMETHEUS_STANDBY: u16 = 332;
/// rules.rs: refused override lists.
pub const REFUSED: u16 = 341;
/// edges.rs: a database owned by another role.
pub const OWNED: u16 = 351;
/// edges.rs: commits waiting for a synchronous standby that is not there.
pub const SYNC_REP: u16 = 352;
/// incidents.rs: the incident with `max_connections` reached.
pub const INCIDENT_FULL: u16 = 361;

// other listeners
/// pgbouncer.rs: one pgbouncer per test.
pub const PGBOUNCER: [u16; 7] = [700, 701, 702, 703, 704, 705, 706];
/// prometheus.rs: the primary's and the standby's metrics endpoints, and Prometheus.
pub const PROMETHEUS_PRIMARY_METRICS: u16 = 711;
pub const PROMETHEUS_STANDBY_METRICS: u16 = 712;
pub const PROMETHEUS: u16 = 713;
/// endpoint.rs: the metrics endpoints of its clusters, and postgres_exporter.
pub const ENDPOINT_METRICS: u16 = 721;
pub const EXPORTER: u16 = 722;
pub const ENDPOINT_REQUESTS_METRICS: u16 = 723;
pub const ENDPOINT_BUSY_METRICS: u16 = 724;
/// bench.rs: postgres_exporter, against which the endpoint is compared.
pub const BENCH_EXPORTER: u16 = 731;

/// The port at `offset` in this version's block.
pub fn port(offset: u16) -> u16 {
    crate::test_port() + offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_port_is_taken_once() {
        let mut all = vec![
            SHARED,
            STANDBY,
            NO_PRELOAD,
            FAST_STOP,
            SQUAT,
            HOSTILE,
            NO_DATABASE,
            UPGRADE,
            HISTORY_RING,
            ENDPOINT,
            ENDPOINT_REQUESTS,
            ENDPOINT_BUSY,
            ENDPOINT_GARBAGE,
            PROMETHEUS_PRIMARY,
            PROMETHEUS_STANDBY,
            REFUSED,
            OWNED,
            SYNC_REP,
            INCIDENT_FULL,
            PROMETHEUS_PRIMARY_METRICS,
            PROMETHEUS_STANDBY_METRICS,
            PROMETHEUS,
            ENDPOINT_METRICS,
            EXPORTER,
            ENDPOINT_REQUESTS_METRICS,
            ENDPOINT_BUSY_METRICS,
            BENCH_EXPORTER,
        ];
        all.extend(PGBOUNCER);
        let n = all.len();
        assert!(
            all.iter().all(|p| *p < 1000),
            "a port outside the block: {all:?}"
        );
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "two servers share a port");
    }
}
