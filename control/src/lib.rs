//! switchyard's controller: it turns Kubernetes Services and their endpoints into a node's
//! service table and programs a datapath with the difference.
//!
//! It owns the sources ([`source`]: the Kubernetes API's watches, with the manifest folder
//! loaded into the embedded API server), the [`store`], the pure [`model`], the [`diff`], the
//! reconcile loop ([`controller`]), the datapath adapters ([`datapath`]), [`metrics`], the
//! health and metrics endpoints ([`http`]), the admin socket ([`admin`]: `switchyard repair`),
//! the load balancers' `healthCheckNodePort` server ([`healthcheck`]), the capabilities it
//! keeps ([`privileges`]) and the CLI ([`cli`], [`services`]). It never does packet or socket I/O on the data path itself: that is
//! `switchyard-proxy`'s.

#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod controller;
pub mod daemon;
pub mod datapath;
pub mod diff;
#[doc(hidden)]
pub mod fuzzing;
pub mod healthcheck;
pub mod http;
pub mod incremental;
pub use switchyard_proxy::maglev;
pub mod metrics;
pub mod model;
pub mod privileges;
pub mod services;
pub mod source;
pub mod store;
