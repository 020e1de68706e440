//! Black-box tests of the `switchboard` binary: each test starts the real binary on a real
//! socket (or runs one of its commands) and talks to it as a provider, an operator or a
//! scanner would.

mod pg;
mod support;

// Pomelo: HMAC over the decoded secret, every 401 case, duplicates, quarantine.
mod pomelo;
// VerifyVASP: bearer, the three callback types, 50 concurrent duplicates, conflicts.
mod verifyvasp;
// Verestro: mutual TLS (handshakes, pins, reload), JWE from another implementation,
// idempotency keys, the onboarding commands.
mod pki;
mod verestro;
// Providers from configuration: every preset and hand-configured HMAC, bearer, Basic,
// key-header and `none` providers, signed by independent implementations.
mod generic;
// Restarts and kill -9: nothing answered 2xx is lost, old keys stay duplicates.
mod durability;
// Several instances on one PostgreSQL database: one event per key across instances, a
// killed instance's work taken over, a rolling restart, migrations, copying a sled store.
mod instances;
// Deliveries: a real SMTP server (aiosmtpd) and real HTTP servers; refusals, retries,
// dead letters, replays, a kill mid-delivery.
mod delivery;
mod servers;
// Route scripts: the sandbox's limits, hot reload, `switchboard test`, `switchboard init`,
// replays from the command line.
mod routes;
// Hostile route scripts (tests/fixtures/hostile): each fails alone, the server keeps
// answering; a killed worker, a server killed twice in a poison run.
mod hostile;
// SIGTERM with a routing backlog, slow lookups and emails in flight: nothing failed,
// nothing sent twice, nothing logged after the last flush.
mod shutdown;
// The admin API: authentication, filters, time windows, pagination, masking, counts,
// trying a script, the body limit.
mod admin;
// The operator's console in a real browser (Chromium through WebDriver).
mod console;
// Bad input of every kind gets a clear 4xx; limits and timeouts hold.
mod hardening;
// The served spec equals the committed one; docs are self-contained.
mod spec;
// The internal services' contract (openapi/services.json) equals what the routes call.
mod services;
// Configuration files, environment overrides, `check`, and the first-run flow.
mod config;
// The README's "Run it" and "Onboarding Verestro", run as written; .gitignore.
mod newcomer;
// Secrets and OTPs never reach logs, metrics or error bodies.
mod secrets;
// Crate boundaries stated in ARCHITECTURE.md.
mod architecture;
