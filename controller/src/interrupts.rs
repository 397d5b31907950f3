//! Ctrl-C and SIGTERM, which long commands and hooks answer.

use tokio::signal::unix::{signal, SignalKind};

use crate::exit::Failure;

/// Ctrl-C and SIGTERM, as one stream.
pub struct Interrupts {
    terminate: tokio::signal::unix::Signal,
}

impl Interrupts {
    pub fn new() -> Result<Interrupts, Failure> {
        let terminate = signal(SignalKind::terminate())
            .map_err(|err| Failure::aborted(anyhow::anyhow!("cannot watch for SIGTERM: {err}")))?;
        Ok(Interrupts { terminate })
    }

    pub async fn recv(&mut self) {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
