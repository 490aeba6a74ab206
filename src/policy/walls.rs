//! Hard walls, checked in code before any policy (a permissive policy cannot open them):
//! the caller's tenant is the mission's tenant; a caller whose token carries a region reaches
//! only missions serving that region; every downstream a call reaches is in one of the
//! mission's regions.

use crate::authn::Caller;
use crate::config::Mission;
use crate::mission::{Denied, ExposedTool};

/// The caller attribute naming the caller's region.
pub const REGION_ATTRIBUTE: &str = "region";

/// Whether `caller` may reach `mission` at all (tenant and region walls).
pub fn admit(mission: &Mission, caller: &Caller) -> Result<(), Denied> {
    if caller.tenant != mission.tenant {
        return Err(Denied::Tenant);
    }
    match caller.attributes.get(REGION_ATTRIBUTE) {
        None => Ok(()),
        // A mission without `regions` does not say where it serves: not a region-bound caller.
        Some(serde_json::Value::String(region)) if mission.regions.contains(region) => Ok(()),
        Some(_) => Err(Denied::Region),
    }
}

/// Whether the downstream serving `tool` keeps data in one of the mission's regions (also
/// checked when the configuration loads; this is the run-time wall).
pub fn residency(mission: &Mission, tool: &ExposedTool) -> Result<(), Denied> {
    if mission.regions.is_empty() || mission.regions.contains(&tool.region) {
        Ok(())
    } else {
        Err(Denied::Residency)
    }
}
