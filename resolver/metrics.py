"""Prometheus metrics: the instruments the services update as things happen.

They live in prometheus-client's default registry, one per process, which is what a
``serve`` process is. What is read from the database rather than counted (the push outbox,
revocations and JWT sizes per account) is set at each scrape by ``GET /metrics``
(resolver/http/metrics_view.py), so a scrape shows the database as it is, whichever
replica wrote it. No aiohttp here: services update these directly.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# -- HTTP ------------------------------------------------------------------------------------

#: One histogram, labelled with the status too: its ``_count`` is the requests by route and
#: status, so a request costs one observation (the cached-JWT GET is the hot path).
HTTP_REQUEST_SECONDS = Histogram(
    "nir_http_request_duration_seconds",
    "HTTP requests answered, by method, route template and status, with their latency",
    ["method", "route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

_http_children: dict[tuple[str, str, int], object] = {}


def observe_http(method: str, route: str, status: int, seconds: float) -> None:
    # ``labels()`` takes a lock and builds a tuple key each call; the children are kept.
    key = (method, route, status)
    child = _http_children.get(key)
    if child is None:
        child = _http_children[key] = HTTP_REQUEST_SECONDS.labels(method, route, str(status))
    child.observe(seconds)  # type: ignore[attr-defined]


# -- SCIM, credentials -----------------------------------------------------------------------

SCIM_OPERATIONS = Counter(
    "nir_scim_operations_total",
    "SCIM operations by resource type, operation and HTTP status",
    ["resource", "operation", "status"],
)
CREDENTIALS_ISSUED = Counter(
    "nir_credentials_issued_total",
    "User JWTs issued, by the way the caller proved who they are (token, proxy, callout)",
    ["via"],
)
CREDENTIALS_REFUSED = Counter(
    "nir_credentials_refused_total",
    "Credential requests refused after the caller was identified, by way and reason",
    ["via", "reason"],
)

# -- pushes ----------------------------------------------------------------------------------

PUSHES = Counter(
    "nir_pushes_total",
    "Account JWT pushes to nats-server: done, retry (to be tried again) or failed (for good)",
    ["outcome"],
)
PUSH_SERVER_REPLIES = Counter(
    "nir_push_server_replies_total",
    "Replies of each nats-server to pushes: updated, skipped (it had that JWT) or error",
    ["server", "result"],
)
OUTBOX_PENDING = Gauge("nir_push_outbox_pending", "Account JWTs waiting to be pushed")
OUTBOX_OLDEST_SECONDS = Gauge(
    "nir_push_outbox_oldest_pending_seconds",
    "Age of the oldest account JWT waiting to be pushed (0 when none waits)",
)

# -- accounts --------------------------------------------------------------------------------

ACCOUNT_REVOCATIONS = Gauge(
    "nir_account_revocations",
    "Revocation entries in the account JWT, for the accounts with the largest JWTs",
    ["account"],
)
ACCOUNT_JWT_BYTES = Gauge(
    "nir_account_jwt_bytes",
    "Encoded size of the account JWT, for the accounts with the largest JWTs",
    ["account"],
)

# -- NATS client connections (resolver.audit.connection_recorder) ----------------------------

#: Labelled by account (its name, else its key: accounts are few), never by user (users
#: are not). With replicas in a queue group each counts the events it was handed: sum them.
NATS_CONNECTIONS_SEEN = Counter(
    "nir_nats_connections_seen_total",
    "Client connect and disconnect events received from nats-server, by account and event",
    ["account", "event"],
)
NATS_CONNECTION_EVENTS_DROPPED = Counter(
    "nir_nats_connection_events_dropped_total",
    "Connection events not written to the audit log: overflow (buffer full) or write_failed",
    ["reason"],
)
#: From the servers' own per-account counts, so every replica shows the same value: take
#: ``max`` over replicas, not ``sum``.
NATS_CLIENT_CONNECTIONS = Gauge(
    "nir_nats_client_connections",
    "Client connections now open per account, summed over the nats-servers reporting them",
    ["account"],
)

# -- reconcile (resolver.jobs.reconcile) -----------------------------------------------------

RECONCILE_STALE_ACCOUNTS = Gauge(
    "nir_reconcile_stale_accounts",
    "Accounts some nats-server held an outdated JWT of, at the last reconcile (re-pushed)",
)
RECONCILE_STALE_BY_SERVER = Gauge(
    "nir_reconcile_stale_accounts_by_server",
    "Accounts each nats-server held an outdated JWT of, at the last reconcile",
    ["server"],
)

# -- SQLite ----------------------------------------------------------------------------------

WAL_CHECKPOINTS = Counter(
    "nir_wal_checkpoints_total",
    "SQLite WAL checkpoints by result (ok, busy: another process held the lock, failed)",
    ["result"],
)
WAL_LOG_FRAMES = Gauge(
    "nir_wal_log_frames", "Frames in the SQLite write-ahead log at the last checkpoint"
)

# -- jobs ------------------------------------------------------------------------------------

JOB_RUNS = Counter("nir_job_runs_total", "Scheduled job runs by job and result", ["job", "result"])
JOB_LAST_RUN = Gauge(
    "nir_job_last_run_timestamp_seconds", "When each job last finished (Unix time)", ["job"]
)
JOB_LAST_OK = Gauge("nir_job_last_run_ok", "1 if the job's last run succeeded, else 0", ["job"])
JOB_LAST_SECONDS = Gauge("nir_job_last_run_duration_seconds", "How long the last run took", ["job"])
JOB_LEADER = Gauge(
    "nir_job_leader", "1 while this replica is the one running the scheduled jobs, else 0"
)
