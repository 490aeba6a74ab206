//! The exchange stage: the credential a downstream call carries. Never the caller's token.
//!
//! Today one profile is implemented: `handoff` (a downstream that is another mission's agent
//! gets a single-use handoff token from [`crate::handoff`], minted per call). Other downstreams
//! (`exchange = "none"` or `"embedded"`) carry no per-call credential yet; the identity issue
//! fills [`Credentialed::authorization`] for them with a fresh audience-bound On-Behalf-Of token
//! per call, cached per (caller token, audience, scopes). The downstream accepts nothing but a
//! [`Credentialed`] call.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use crate::audit::HandoffIssued;
use crate::call::Reject;
use crate::call::journal::Journaled;
use crate::config::HandoffTarget;
use crate::downstream::Downstream;
use crate::handoff::{HandoffError, Handoffs};
use crate::mission::ExposedTool;

/// A journaled call with the credential its downstream call carries: the only thing a
/// downstream accepts.
pub struct Credentialed {
    journaled: Journaled,
    /// `Authorization` header value for this call, when the downstream gets one.
    authorization: Option<SecretString>,
    /// The handoff token minted for this call (its id), when the downstream is an agent.
    handoff: Option<HandoffIssued>,
}

impl Credentialed {
    pub fn tool(&self) -> &Arc<ExposedTool> {
        self.journaled.tool()
    }
    pub fn downstream(&self) -> &Arc<Downstream> {
        self.journaled.downstream()
    }
    pub fn journaled(&self) -> &Journaled {
        &self.journaled
    }
    pub fn authorization(&self) -> Option<&SecretString> {
        self.authorization.as_ref()
    }
    pub fn handoff(&self) -> Option<&HandoffIssued> {
        self.handoff.as_ref()
    }
    /// The arguments as the caller sent them (validated), as raw JSON for splicing.
    pub fn raw_arguments(&self) -> &str {
        self.journaled.authorized().raw_arguments()
    }
    /// The arguments as a map (for the rmcp path).
    pub fn arguments(&self) -> &serde_json::Map<String, serde_json::Value> {
        self.journaled.authorized().arguments()
    }
}

/// Stage 6: obtain the downstream credential.
pub async fn credential(
    journaled: Journaled,
    handoffs: Option<&Handoffs>,
) -> Result<Credentialed, Reject> {
    let downstream = journaled.downstream().clone();
    match &downstream.manifest.handoff {
        None => Ok(Credentialed {
            journaled,
            authorization: None,
            handoff: None,
        }),
        Some(target) => handoff(journaled, handoffs, target).await,
    }
}

/// A downstream that is another mission's agent: a single-use handoff token for it.
async fn handoff(
    journaled: Journaled,
    handoffs: Option<&Handoffs>,
    target: &HandoffTarget,
) -> Result<Credentialed, Reject> {
    let Some(handoffs) = handoffs else {
        return Err(HandoffError::NeedsHttp.into());
    };
    let authorized = journaled.authorized();
    let minted = handoffs
        .mint(
            authorized.caller(),
            &authorized.mission().mission.id,
            target,
        )
        .await?;
    let authorization = SecretString::from(format!("Bearer {}", minted.token.expose_secret()));
    Ok(Credentialed {
        journaled,
        authorization: Some(authorization),
        handoff: Some(HandoffIssued {
            jti: minted.jti,
            to: minted.to,
            expires: minted.expires,
        }),
    })
}
