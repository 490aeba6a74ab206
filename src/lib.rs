//! Mandate: a Backend-for-Agent broker.
//!
//! Mandate is an MCP server facade. Each mission manifest (`missions/<domain>/<env>/<name>.toml`)
//! declares a scoped toolset drawn from tool manifests (`tool-manifests/<domain>/<name>.toml`, one
//! per downstream MCP server, with pinned tool definitions in `<name>.lock.json`). Mandate serves
//! each mission at `/mcp/<domain>/<env>/<name>` (streamable HTTP) or over stdio, and exposes only
//! the mission's tools.
//!
//! Every tool call runs one pipeline, in order (see [`inbound::handler`]):
//!
//! 1. **authn** — the bearer token is verified ([`authn`]) → [`authn::Caller`]; a handoff token's
//!    actor chain is re-verified hop by hop against the handoff ledger ([`handoff`])
//! 2. **scope** — the tool is in the mission's toolset and not quarantined → [`mission::Scoped`]
//! 3. **validate** — arguments against the pinned input schema → [`mission::Valid`]
//! 4. **policy** — the decision ([`policy`]) → [`policy::Authorized`]; then the mission's
//!    `[limits]` ([`quota`]) and, for tools that need it, a human approval of the exact call
//!    ([`approval`]) → [`approval::Approved`]
//! 5. **downstream** — the call goes to the downstream ([`downstream`]), which accepts only an
//!    [`policy::Authorized`] call
//! 6. **output** — `structuredContent` against the pinned output schema
//! 7. **audit** — one hash-chained record ([`audit`]); for write and irreversible tools a durable
//!    intent record is written before the downstream is called
//!
//! Each stage's output type can only be built by that stage's module, so no code path reaches a
//! downstream without passing the earlier stages.

pub mod agents;
pub mod approval;
pub mod audit;
pub mod authn;
pub mod call;
pub mod cli;
pub mod config;
pub mod downstream;
pub mod exchange;
pub mod handoff;
pub mod inbound;
pub mod mission;
pub mod policy;
pub mod quota;
pub mod store;
pub mod tools;

#[cfg(test)]
mod fuzz_tests;
