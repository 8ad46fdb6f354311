//! Admission as the API server meets it: the server over real TLS sockets where TLS,
//! HTTP or the process is the point (limits, hostile clients, shutdown), and decisions
//! for arbitrary input.

mod hostile;
mod lifecycle;
mod robustness;
mod server;
mod uploads;
