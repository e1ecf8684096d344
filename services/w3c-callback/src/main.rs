//! `w3c-callback --listen 127.0.0.1:5000 [--outbound 127.0.0.1:5001]`: the W3C trace-context test
//! suite's service interface (see the README for running the suite through wasmtrace).

use std::net::SocketAddr;

use clap::Parser;

/// Serve the W3C trace-context test suite's callback interface.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
    /// Send every callback through this address (a sidecar's outbound listener).
    #[arg(long)]
    outbound: Option<SocketAddr>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("w3c-callback on http://{}", listener.local_addr()?);
    w3c_callback::serve(listener, args.outbound).await;
    Ok(())
}
