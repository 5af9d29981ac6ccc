//! Active HTTP health checks: `GET path` on every backend of the frontend every interval;
//! a backend that fails `unhealthy_threshold` checks in a row gets no new requests until it
//! passes `healthy_threshold` in a row. Passive outlier detection works beside it.

use std::sync::Arc;
use std::time::Duration;

use hyper::Request;
use hyper::header::{HOST, HeaderValue, USER_AGENT};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::FrontendCtx;
use super::body::{UpBody, collect};
use super::upstream;

/// How often a frontend without checks looks whether they were turned on.
const IDLE_POLL: Duration = Duration::from_secs(1);

pub(crate) async fn run(ctx: Arc<FrontendCtx>, cancel: CancellationToken) {
    loop {
        let set = ctx.balancer.snapshot();
        let check = set.l7.as_ref().and_then(|s| s.health_check.clone());
        let wait = match check {
            None => {
                // Checks off (or turned off): nobody is held back by an old verdict.
                for b in &set.backends {
                    b.l7.set_healthy(true);
                }
                IDLE_POLL
            }
            Some(check) => {
                let upstream = ctx.router.upstream();
                let mut checks = JoinSet::new();
                for b in &set.backends {
                    let (addr, endpoint, stats) = (b.addr, Arc::clone(&b.l7), Arc::clone(&b.stats));
                    let (upstream, check) = (Arc::clone(&upstream), check.clone());
                    let name = set.name.clone();
                    checks.spawn(async move {
                        let mut req = Request::new(UpBody::Empty);
                        *req.uri_mut() = match check.path.parse() {
                            Ok(uri) => uri,
                            Err(_) => "/".parse().expect("a valid URI"),
                        };
                        if let Ok(host) = HeaderValue::from_str(&addr.to_string()) {
                            req.headers_mut().insert(HOST, host);
                        }
                        req.headers_mut()
                            .insert(USER_AGENT, HeaderValue::from_static("switchyard-health-check"));
                        let sent = tokio::time::timeout(check.timeout, async {
                            let (response, reuse) =
                                upstream::send(&upstream, addr, &endpoint, &stats, req).await.ok()?;
                            let ok = response.status().is_success() || response.status().is_redirection();
                            // Read the body so the connection can be reused.
                            collect(response.into_body()).await.ok()?;
                            if let Some(r) = reuse {
                                r.endpoint.pool.put_h1(r.sender, r.tls);
                            }
                            Some(ok)
                        })
                        .await;
                        let passed = matches!(sent, Ok(Some(true)));
                        if let Some(healthy) = endpoint.health_result(passed, &check)
                        {
                            info!(service = %name, backend = %addr, healthy, path = %check.path, "health check verdict changed");
                        }
                    });
                }
                while checks.join_next().await.is_some() {}
                check.interval
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}
