//! An OTLP trace receiver for the lab: `otlp-sink ADDRESS FILE` serves the collector's
//! TraceService on ADDRESS and appends every span it receives to FILE as a JSON line.

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [address, file] = args.as_slice() else {
        eprintln!("usage: otlp-sink ADDRESS FILE");
        std::process::exit(2);
    };
    let fail = |e: String| -> ! {
        eprintln!("otlp-sink: {e}");
        std::process::exit(1)
    };
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .unwrap_or_else(|e| fail(format!("{file}: {e}")));
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .unwrap_or_else(|e| fail(format!("{address}: {e}")));
    eprintln!("otlp-sink: receiving on {address}");
    if let Err(e) =
        ferrolb_e2e::otlp::serve(listener, ferrolb_e2e::otlp::Spans::writing_to(out)).await
    {
        fail(e);
    }
}
