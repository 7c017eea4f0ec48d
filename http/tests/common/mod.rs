//! What the HTTP tests share.

use skald_engine::Engine;
use skald_http::HttpConfig;

/// Serves `engine` with `config` on a free loopback port, in the
/// background; returns its base URL (`http://127.0.0.1:port`).
pub async fn serve(engine: &Engine, config: HttpConfig) -> String {
    let keys = !config.auth.is_empty();
    let listener = skald_http::bind("127.0.0.1:0".parse().unwrap(), keys)
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(skald_http::serve(
        listener,
        engine.clone(),
        config,
        std::future::pending(),
    ));
    base
}
