//! switchyard's controller: it turns Kubernetes Services and their endpoints into a node's
//! service table and programs a datapath with the difference.
//!
//! It owns the sources ([`source`]: the manifest folder; the Kubernetes watch comes later), the
//! [`store`], the pure [`model`], the [`diff`], the reconcile loop ([`controller`]), the
//! datapath adapters ([`datapath`]), [`metrics`], the health and admin endpoints ([`http`]),
//! the load balancers' `healthCheckNodePort` server ([`healthcheck`]) and the CLI ([`cli`],
//! [`services`]). It never does packet or socket I/O on the data path itself: that is
//! `switchyard-proxy`'s.

#![forbid(unsafe_code)]

pub mod cli;
pub mod controller;
pub mod daemon;
pub mod datapath;
pub mod diff;
pub mod healthcheck;
pub mod http;
pub mod incremental;
pub use switchyard_proxy::maglev;
pub mod metrics;
pub mod model;
pub mod services;
pub mod source;
pub mod store;
