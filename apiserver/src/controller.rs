//! The EndpointSlice controller (filled in below).

use std::sync::Arc;

use tokio::sync::watch;

use crate::rest::Api;

pub async fn run(_api: Arc<Api>, mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.changed().await;
}
