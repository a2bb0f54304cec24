//! Cancellation by signal: the first Ctrl-C or SIGTERM stops dispatching
//! and gives the requests in flight a grace period; a second one (or the
//! end of the grace period) abandons them. Each step is told to the
//! observer; nothing is printed here.

use super::{Notice, Shared, Stop};
use std::time::Duration;

/// Waits for the signals and triggers `stop`'s two stages.
pub(super) async fn watch(stop: Stop, grace: Duration, observer: Shared) {
    if shutdown_signal().await.is_err() {
        return;
    }
    observer.notice(&Notice::Stopping { grace });
    stop.graceful.cancel();
    let grace_over = tokio::select! {
        _ = shutdown_signal() => false,
        _ = tokio::time::sleep(grace) => true,
    };
    observer.notice(&Notice::Abandoning { grace_over });
    stop.abort.cancel();
}

async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
