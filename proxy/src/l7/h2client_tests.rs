//! The HTTP/2 upstream client against backends that do what hyper's test backend cannot: say
//! GOAWAY with a request open, stop answering PINGs, hold a request body open.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Channel};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::tests::{Behaviour, backend, read_reply, serve};
use super::*;
use crate::testing::step;
use crate::{Proxy, ProxyConfig};

fn http2_upstream() -> L7Spec {
    L7Spec {
        upstream: UpstreamProtocol::Http2,
        ..L7Spec::default()
    }
}

type StreamedBody = Channel<Bytes>;

fn post(body: StreamedBody) -> Request<StreamedBody> {
    Request::builder()
        .method("POST")
        .uri("http://web.default/upload")
        .body(body)
        .unwrap()
}

/// A backend on the `h2` crate: answers each request at once with `x-conn` (which
/// connection, from 1), except the first request on the first connection, which it answers
/// after `first`, having said GOAWAY on that connection as soon as it came.
async fn goaway_backend(first: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut number = 0;
        while let Ok((stream, _)) = listener.accept().await {
            number += 1;
            let conn_no = number;
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(stream).await.unwrap();
                let mut requests = 0;
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    requests += 1;
                    let delay = if conn_no == 1 && requests == 1 {
                        conn.graceful_shutdown();
                        first
                    } else {
                        Duration::ZERO
                    };
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let response = Response::builder()
                            .header("x-conn", conn_no.to_string())
                            .body(())
                            .unwrap();
                        let mut send = respond.send_response(response, false).unwrap();
                        let _ = send.send_data(Bytes::from_static(b"ok"), true);
                    });
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_backend_goaway_sends_new_requests_on_a_new_connection() {
    let backend = goaway_backend(Duration::from_millis(600)).await;
    let proxy = Proxy::new(ProxyConfig::default());
    let frontend = serve(&proxy, &[backend], http2_upstream()).await;
    let client = super::tests::h2_client(frontend).await;
    let mut first_client = client.clone();
    let first = tokio::spawn(async move {
        let req = super::tests::get("http://web.default/slow");
        read_reply(step(first_client.send_request(req)).await.unwrap().unwrap()).await
    });
    // The first request is open on connection 1, which has said GOAWAY.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut second_client = client.clone();
    let req = super::tests::get("http://web.default/next");
    let second = read_reply(
        step(second_client.send_request(req))
            .await
            .unwrap()
            .unwrap(),
    )
    .await;
    assert_eq!(second.status, StatusCode::OK, "{second:?}");
    assert_eq!(second.headers.get("x-conn").unwrap(), "2");
    let first = step(first).await.unwrap().unwrap();
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert_eq!(first.headers.get("x-conn").unwrap(), "1");
    assert_eq!(first.body, "ok");
}

#[tokio::test]
async fn a_streamed_body_larger_than_the_windows_goes_through_both_ways() {
    let b = backend("a", Behaviour::Ok).await;
    let proxy = Proxy::new(ProxyConfig::default());
    let frontend = serve(&proxy, &[b.addr], http2_upstream()).await;
    let mut client = super::tests::h2_client::<StreamedBody>(frontend).await;
    let (mut tx, body) = Channel::new(4);
    let response = tokio::spawn(async move { client.send_request(post(body)).await });
    // 3 MiB in 64 KiB chunks: more than the 2 MiB stream window each way.
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    for _ in 0..48 {
        step(tx.send_data(chunk.clone())).await.unwrap().unwrap();
    }
    drop(tx);
    let response = step(response).await.unwrap().unwrap().unwrap();
    let reply = read_reply(response).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), "a:".len() + 48 * 64 * 1024);
    assert!(reply.body.starts_with("a:xxx"));
}

/// A backend that takes one request, reads its first chunk, and reports how its body ended.
async fn body_watching_backend() -> (SocketAddr, oneshot::Receiver<Option<h2::Reason>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut conn = h2::server::handshake(stream).await.unwrap();
        let (req, respond) = conn.accept().await.unwrap().unwrap();
        tokio::spawn(async move { while conn.accept().await.is_some() {} });
        let mut body = req.into_body();
        let mut ended = None;
        while let Some(data) = body.data().await {
            match data {
                Ok(data) => {
                    let _ = body.flow_control().release_capacity(data.len());
                }
                Err(e) => {
                    ended = e.reason();
                    break;
                }
            }
        }
        let _ = tx.send(ended);
        drop(respond);
    });
    (addr, rx)
}

#[tokio::test]
async fn a_per_try_timeout_resets_the_stream_of_a_body_still_coming() {
    let (backend, ended) = body_watching_backend().await;
    let proxy = Proxy::new(ProxyConfig::default());
    let mut l7 = http2_upstream();
    l7.timeouts.per_try = Some(Duration::from_millis(300));
    let frontend = serve(&proxy, &[backend], l7).await;
    let mut client = super::tests::h2_client::<StreamedBody>(frontend).await;
    let (mut tx, body) = Channel::new(4);
    step(tx.send_data(Bytes::from_static(b"first")))
        .await
        .unwrap()
        .unwrap();
    let response = step(client.send_request(post(body)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    // The client still holds its body open; the backend's stream was reset all the same.
    let reason = step(ended).await.unwrap().unwrap();
    assert_eq!(reason, Some(h2::Reason::CANCEL));
    drop(tx);
}

#[tokio::test]
async fn a_backend_that_stops_answering_pings_is_dropped_and_the_request_fails() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut conn = h2::server::handshake(stream).await.unwrap();
        let held = conn.accept().await;
        // Neither answered nor polled again: no PONG ever comes back.
        tokio::time::sleep(Duration::from_mins(1)).await;
        drop((held, conn));
    });
    let proxy = Proxy::new(ProxyConfig::default());
    let frontend = serve(&proxy, &[backend], http2_upstream()).await;
    let mut client = super::tests::h2_client(frontend).await;
    let response = step(client.send_request(super::tests::get("http://web.default/")))
        .await
        .unwrap()
        .unwrap();
    // Pinged after a second with the stream open, no answer within another: the connection
    // is closed under the request, which fails as sent (502), long before any timeout.
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = step(response.into_body().collect()).await.unwrap().unwrap();
    assert!(!body.to_bytes().is_empty());
}
