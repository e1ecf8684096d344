//! Graceful shutdown: in-flight streams finish, new connections are refused.

use std::time::Duration;

use http::StatusCode;

use crate::fixture::client::get;
use crate::fixture::proxy::{bootstrap_yaml, cluster, ingress, route, start, wasm_filter};
use crate::fixture::upstream::Upstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish_and_then_stops_listening() {
    let upstream = Upstream::start();
    let yaml = bootstrap_yaml(
        &[wasm_filter("probe", "abi-probe", "", false)],
        &route("/", "service", "10s"),
        &[cluster("service", upstream.addr, "")],
    );
    let proxy = start(&yaml);
    let addr = ingress(&proxy);
    let admin = proxy.admin_address().expect("admin");
    let in_flight = tokio::spawn(async move { get(addr, "/slow", &[]).await });
    // Shut down only once the request is at the upstream (however busy the machine is).
    let sent = r#"wasmtrace_upstream_requests_total{cluster="service"} 1"#;
    for _ in 0..200 {
        if get(admin, "/stats/prometheus", &[]).await.text().contains(sent) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let stopping = tokio::task::spawn_blocking(move || proxy.shutdown());
    let reply = in_flight.await.expect("request task");
    assert_eq!((reply.status, reply.text().as_str()), (StatusCode::OK, "slow"), "the in-flight request completed");
    stopping.await.expect("shutdown finished");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed after shutdown");
}
