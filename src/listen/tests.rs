//! Unit tests of the listener: limits, address reuse, peer checks.

use super::*;
use axum::routing::get;

fn limits() -> ListenerLimits {
    ListenerLimits {
        name: "test listener",
        protocol: Protocol::Http1,
        max_connections: 2,
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(2),
        on_timeout: |_| axum::http::StatusCode::REQUEST_TIMEOUT.into_response(),
    }
}

use axum::response::IntoResponse;

#[tokio::test(start_paused = true)]
async fn a_connection_is_closed_idle_or_mid_head_at_its_deadline() {
    let l = limits();
    let a = Arc::new(Activity::new());
    let (at, why) = a.deadline(&l).unwrap();
    assert_eq!((at, why), (a.opened + l.header_timeout, Cut::NoRequest));
    tokio::time::advance(Duration::from_secs(3)).await;
    a.bytes_read();
    let (at, why) = a.deadline(&l).unwrap();
    assert_eq!(
        (at, why),
        (
            a.opened + Duration::from_secs(3) + l.header_timeout,
            Cut::SlowHeaders
        )
    );
    let req = a.request_started();
    assert!(
        a.deadline(&l).is_none(),
        "a request in flight has its own timeout"
    );
    a.bytes_read();
    tokio::time::advance(Duration::from_secs(5)).await;
    drop(req);
    let (at, why) = a.deadline(&l).unwrap();
    assert_eq!(
        (at, why),
        (
            a.opened + Duration::from_secs(8) + l.idle_timeout,
            Cut::Idle
        )
    );
    // HTTP/2 control frames while idle do not start a header timer.
    let h2 = ListenerLimits {
        protocol: Protocol::Http2,
        ..l
    };
    a.bytes_read();
    assert_eq!(
        a.deadline(&h2).unwrap().0,
        a.opened + Duration::from_secs(8) + l.idle_timeout
    );
    assert_eq!(
        a.deadline(&l).unwrap().0,
        a.opened + Duration::from_secs(8) + l.header_timeout
    );
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_after_the_idle_timeout_not_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let router = Router::new().route("/", get(|| async { "ok" }));
    let counters = Arc::new(ListenerCounters::default());
    let short = ListenerLimits {
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(1500),
        ..limits()
    };
    let server = tokio::spawn(serve(
        listener,
        router,
        short,
        counters.clone(),
        cancel.clone(),
    ));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let answered = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an idle connection is closed");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_millis(1400),
        "closed after {idle:?} idle"
    );
    let idle_cuts = || {
        counters
            .closed()
            .into_iter()
            .find_map(|(reason, n)| (reason == "idle").then_some(n))
    };
    // Counted once the connection's task is done, a moment after the close.
    let deadline = Instant::now() + Duration::from_secs(5);
    while idle_cuts() != Some(1) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(idle_cuts(), Some(1), "{:?}", counters.closed());
    cancel.cancel();
    server.await.unwrap();
}

#[tokio::test]
async fn connections_past_the_bound_wait_until_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let router = Router::new().route("/", get(|| async { "ok" }));
    let counters = Arc::new(ListenerCounters::default());
    let server = tokio::spawn(serve(
        listener,
        router,
        limits(),
        counters.clone(),
        cancel.clone(),
    ));
    let hold1 = TcpStream::connect(addr).await.unwrap();
    let hold2 = TcpStream::connect(addr).await.unwrap();
    let ask = |mut s: TcpStream| async move {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    };
    let third = tokio::spawn(ask(TcpStream::connect(addr).await.unwrap()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served past the bound of 2"
    );
    drop(hold1);
    let answer = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(counters.open() <= 2, "{} open", counters.open());
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the listener stops within its grace with a connection held")
        .unwrap();
    drop(hold2);
}
