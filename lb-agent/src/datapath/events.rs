//! Datapath events (lb-ebpf's `events`: packets dropped or rejected by a
//! policy, with their flow) in the agent's log, at debug level under
//! target `ferrolb::datapath`. The programs emit them through aya-log
//! only when that level is enabled at load (`AYA_LOG_LEVEL`); they cost
//! nothing otherwise.
use anyhow::{Context, Result};
use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::warn;

/// aya-log's level for debug records (`aya_log_common::Level::Debug`);
/// 0 turns every record off.
const AYA_DEBUG: u8 = 4;

/// The `AYA_LOG_LEVEL` the programs are loaded with: debug when the
/// agent's filter enables debug for `ferrolb::datapath`, else off.
pub fn level() -> u8 {
    if tracing::enabled!(target: "ferrolb::datapath", tracing::Level::DEBUG) {
        AYA_DEBUG
    } else {
        0
    }
}

/// Reads the programs' records into the log, from a task, while the
/// agent runs. Does nothing when they are off.
pub fn follow(ebpf: &mut Ebpf) -> Result<()> {
    if level() == 0 {
        return Ok(());
    }
    let logger = EbpfLogger::init_with_logger(ebpf, ToTracing).context("datapath log ring")?;
    // SAFETY: the logger owns the ring buffer's descriptor and keeps it
    // open, the same one, for as long as it lives (inside the AsyncFd).
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("datapath log ring")?;
    tokio::spawn(async move {
        loop {
            match fd.readable_mut().await {
                Ok(mut ready) => {
                    ready.get_inner_mut().flush();
                    ready.clear_ready();
                }
                Err(e) => {
                    warn!(error = %e, "datapath events: the log ring failed; no more events");
                    return;
                }
            }
        }
    });
    Ok(())
}

/// aya-log's records to `tracing`, with the outcome counter named.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let text = record.args().to_string();
        let (outcome, rest) = named(&text);
        tracing::debug!(target: "ferrolb::datapath", outcome, "{rest}");
    }

    fn flush(&self) {}
}

/// `outcome=N rest` -> (the counter's name, rest); other text as it is.
fn named(text: &str) -> (&'static str, &str) {
    let parsed = text.strip_prefix("outcome=").and_then(|t| {
        let (n, rest) = t.split_once(' ')?;
        let name = lb_common::STAT_NAMES.get(n.parse::<usize>().ok()?)?;
        Some((*name, rest))
    });
    parsed.unwrap_or(("", text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_named() {
        assert_eq!(
            named("outcome=4 proto=6 10.244.9.2:40000 -> 10.0.1.175:80"),
            (
                "reject_no_backend",
                "proto=6 10.244.9.2:40000 -> 10.0.1.175:80"
            )
        );
        assert_eq!(named("outcome=99 x"), ("", "outcome=99 x"));
        assert_eq!(named("other"), ("", "other"));
    }
}
