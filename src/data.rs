//! The data plane: everything a request touches, lock-free. It reads routing state through
//! [`snapshot::Routes`] and per-endpoint atomics, and never imports the control plane.
//!
//! A request's way: [`listener`] (accept, deadlines, the HTTP/1 and h2 connection drivers) →
//! [`http1`] (the framing rules every head passes) → [`proxy`] (route, split, attempts, the
//! codec) → [`split`] (version) → [`pool`] (endpoint) → [`upstream`] (pooled connections).
//! Beside it: [`health`] (probes flip endpoint atomics), [`outlier`] (passive ejection) and
//! [`sketch`] (latency histograms for canary analysis).

pub mod clock;
pub mod health;
pub mod http1;
pub mod listener;
pub mod mirror;
pub mod outlier;
pub mod pool;
pub mod proxy;
pub mod sketch;
pub mod snapshot;
pub mod split;
pub mod tls;
pub mod upstream;
