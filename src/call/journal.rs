//! The journal stage: a write or irreversible call's intent record is durable (flushed to disk)
//! before anything leaves the broker. [`Journaled`] is produced only here — by that durable write,
//! or directly for a read — so no write reaches a downstream without its intent on disk.

use std::sync::Arc;

use crate::approval::Approved;
use crate::audit::Auditor;
use crate::authn::Caller;
use crate::config::Effect;
use crate::downstream::Downstream;
use crate::mission::ExposedTool;
use crate::policy::Authorized;

use super::Reject;
use super::record::CallRecord;

/// An authorized call whose intent is durable (or that only reads).
pub struct Journaled {
    approved: Approved,
    /// Sequence number of the durable intent record (writes only).
    intent: Option<u64>,
}

impl Journaled {
    pub fn caller(&self) -> &Arc<Caller> {
        self.approved.authorized().caller()
    }
    pub fn tool(&self) -> &Arc<ExposedTool> {
        self.approved.authorized().tool()
    }
    pub fn downstream(&self) -> &Arc<Downstream> {
        self.approved.authorized().downstream()
    }
    pub fn intent(&self) -> Option<u64> {
        self.intent
    }
    pub fn authorized(&self) -> &Authorized {
        self.approved.authorized()
    }
    pub fn into_authorized(self) -> Authorized {
        self.approved.into_authorized()
    }
}

/// Stage 5: journal. Fails closed when the audit store cannot take the intent.
pub async fn write_intent(
    audit: &Auditor,
    approved: Approved,
    record: &CallRecord,
) -> Result<Journaled, Reject> {
    if approved.authorized().tool().effect() == Effect::Read {
        return Ok(Journaled {
            approved,
            intent: None,
        });
    }
    match audit.record_durable(record.intent()).await {
        Ok(seq) => Ok(Journaled {
            approved,
            intent: Some(seq),
        }),
        Err(e) => {
            tracing::error!(error = %e, "audit unavailable; refusing write call");
            Err(Reject::AuditUnavailable(e.to_string()))
        }
    }
}
