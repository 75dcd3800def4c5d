//! What `--check-config` checks beyond the file: what `Policy::start` opens, without starting.

use super::store::Store;
use crate::config::PolicySettings;
use std::fs::OpenOptions;
use std::path::Path;

/// Checks that the policy could start with these settings: the ledger can be read and opened
/// for append, and `limitsStore` is a URL the Redis client accepts (not connected: a store that
/// is down is a runtime condition that `limitsStoreFailure` handles).
pub fn preflight(settings: &PolicySettings) -> Result<(), String> {
    if let Some(url) = &settings.limits_store {
        let timing = super::store::Timing {
            timeout: settings.limits_store_timeout,
            retry: settings.limits_store_retry,
        };
        Store::redis(&url.0, None, timing).map_err(|e| e.0)?;
    }
    if let Some(path) = &settings.usage_log {
        if path != Path::new(crate::config::STDOUT_LEDGER) {
            probe_ledger(path)?;
        }
    }
    Ok(())
}

/// Opens the ledger as the server would. A ledger that does not exist yet is created and
/// removed again, so the check leaves nothing behind; an existing one is never changed.
fn probe_ledger(path: &Path) -> Result<(), String> {
    let cannot = |e: std::io::Error| format!("cannot open usage ledger {}: {}", path.display(), e);
    let existed = path.exists();
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(cannot)?;
    if existed {
        // The server reads it at start to rebuild the totals.
        std::fs::File::open(path).map_err(cannot)?;
    } else {
        std::fs::remove_file(path).map_err(cannot)?;
    }
    Ok(())
}
