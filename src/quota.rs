//! Quotas: a mission's `[limits]` as token buckets, per mission, agent, user and tool, checked
//! before a call reaches its downstream.
//!
//! Each limit `n` (calls per minute) is a bucket of `n` tokens refilled evenly over a minute
//! (one every `60/n` seconds), so a caller may burst up to `n` calls and then runs at the rate. A
//! call takes one token from every bucket that applies, or from none: a refusal says which limit
//! refused and when a token will be there again.
//!
//! State is in-process behind [`Buckets`], so a shared backend (many replicas) can take it later
//! without changing the call core.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::audit::aggregate::Aggregator;
use crate::audit::{Auditor, Event};
use crate::authn::Caller;
use crate::config::Limits;

/// Identifies the rule in audit records.
pub const QUOTA_POLICY: &str = "mandate:quota";

/// One token bucket: `capacity` tokens, refilled at `capacity` per minute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(capacity: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(capacity),
            updated: now,
        }
    }

    /// Refills to `now`; returns how long until one token is there (zero: there is one).
    fn refill(&mut self, capacity: u32, now: Instant) -> Duration {
        let cap = f64::from(capacity);
        let rate = cap / 60.0;
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(cap);
        self.updated = now;
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / rate)
        }
    }
}

/// One limit that applies to a call: the bucket's key and its capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub key: String,
    /// What the limit covers, for the caller: `mission`, `agent `bot``, ….
    pub scope: String,
    pub per_minute: u32,
}

/// Where bucket state lives (in-process now; a shared store later).
pub trait Buckets: Send + Sync {
    /// Takes one token from every bucket of `limits`, or from none; on refusal, the limit that
    /// refused and how long until the call would pass.
    fn take(&self, limits: &[Applied], now: Instant) -> Result<(), (Applied, Duration)>;
}

/// Buckets in this process's memory.
#[derive(Default)]
pub struct InProcess {
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Past this many buckets, full ones are forgotten (they equal a new bucket).
const PRUNE_AT: usize = 100_000;

impl Buckets for InProcess {
    fn take(&self, limits: &[Applied], now: Instant) -> Result<(), (Applied, Duration)> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > PRUNE_AT {
            buckets.retain(|_, b| {
                let elapsed = now.saturating_duration_since(b.updated);
                elapsed < Duration::from_secs(60)
            });
        }
        let mut refused: Option<(Applied, Duration)> = None;
        for limit in limits {
            let bucket = buckets
                .entry(limit.key.clone())
                .or_insert_with(|| Bucket::full(limit.per_minute, now));
            let wait = bucket.refill(limit.per_minute, now);
            if !wait.is_zero() && refused.as_ref().is_none_or(|(_, w)| wait > *w) {
                refused = Some((limit.clone(), wait));
            }
        }
        if let Some(r) = refused {
            return Err(r);
        }
        for limit in limits {
            if let Some(b) = buckets.get_mut(&limit.key) {
                b.tokens -= 1.0;
            }
        }
        Ok(())
    }
}

/// A call refused by a quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "rate limit exceeded: the {scope} limit of {per_minute} calls per minute is used up; retry after {retry_after_secs}s"
)]
pub struct QuotaExceeded {
    pub scope: String,
    pub per_minute: u32,
    /// Whole seconds until the call would pass (at least 1).
    pub retry_after_secs: u64,
}

/// The quota stage's state, shared by every mission of a broker.
pub struct Quotas {
    buckets: Box<dyn Buckets>,
    /// Refused calls are audited through this: a caller hammering a used-up limit adds one full
    /// record and then one count per window, not a record per call.
    refusals: Aggregator,
}

impl Quotas {
    /// In-process buckets; refusals audited to `audit` (call within the runtime).
    pub fn in_process(audit: &Auditor) -> Self {
        Self::new(
            Box::new(InProcess::default()),
            Aggregator::start(audit.clone()),
        )
    }

    pub fn new(buckets: Box<dyn Buckets>, refusals: Aggregator) -> Self {
        Self { buckets, refusals }
    }

    /// Audits the record of a refused call (aggregated per limit and caller).
    pub fn audit_refusal(&self, refused: &QuotaExceeded, event: Event) {
        let source = format!(
            "{}/{}/{}",
            event.tenant.as_deref().unwrap_or_default(),
            event.subject.as_deref().unwrap_or_default(),
            event.agent.as_deref().unwrap_or_default()
        );
        self.refusals
            .record(&format!("rate_limited: {}", refused.scope), &source, event);
    }

    /// Writes the counts of refusals gathered so far (at shutdown).
    pub fn flush(&self) {
        self.refusals.flush();
    }

    /// Takes a call from the mission's limits for this caller and tool.
    pub fn check(
        &self,
        mission: &str,
        limits: &Limits,
        caller: &Caller,
        tool: &str,
    ) -> Result<(), QuotaExceeded> {
        let applied = applied(mission, limits, caller, tool);
        if applied.is_empty() {
            return Ok(());
        }
        self.buckets
            .take(&applied, Instant::now())
            .map_err(|(limit, wait)| QuotaExceeded {
                scope: limit.scope,
                per_minute: limit.per_minute,
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            })
    }
}

/// The limits of `limits` that apply to this call, with their bucket keys.
pub fn applied(mission: &str, limits: &Limits, caller: &Caller, tool: &str) -> Vec<Applied> {
    let sep = '\u{1f}';
    let mut out = Vec::new();
    if let Some(n) = limits.calls_per_minute {
        out.push(Applied {
            key: format!("m{sep}{mission}"),
            scope: "mission".into(),
            per_minute: n,
        });
    }
    if let Some(n) = limits.per_agent {
        out.push(Applied {
            key: format!("a{sep}{mission}{sep}{}{sep}{}", caller.tenant, caller.agent),
            scope: format!("agent `{}`", caller.agent),
            per_minute: n,
        });
    }
    if let Some(n) = limits.per_user {
        out.push(Applied {
            key: format!(
                "u{sep}{mission}{sep}{}{sep}{}{sep}{}",
                caller.issuer, caller.tenant, caller.subject
            ),
            scope: format!("user `{}`", caller.subject),
            per_minute: n,
        });
    }
    if let Some(n) = limits.per_tool {
        out.push(Applied {
            key: format!("t{sep}{mission}{sep}{tool}"),
            scope: format!("tool `{tool}`"),
            per_minute: n,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(key: &str, per_minute: u32) -> Applied {
        Applied {
            key: key.into(),
            scope: key.into(),
            per_minute,
        }
    }

    #[test]
    fn a_bucket_bursts_to_capacity_then_refills_at_the_rate() {
        let b = InProcess::default();
        let t0 = Instant::now();
        let l = [limit("k", 3)];
        for _ in 0..3 {
            assert!(b.take(&l, t0).is_ok());
        }
        let (refused, wait) = b.take(&l, t0).unwrap_err();
        assert_eq!(refused.key, "k");
        // 3 per minute: one token every 20 s.
        assert!((wait.as_secs_f64() - 20.0).abs() < 0.01, "{wait:?}");
        assert!(b.take(&l, t0 + Duration::from_secs(19)).is_err());
        assert!(b.take(&l, t0 + Duration::from_secs(20)).is_ok());
        assert!(b.take(&l, t0 + Duration::from_secs(21)).is_err());
        // Never more than capacity, however long it rested.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.take(&l, later).is_ok());
        }
        assert!(b.take(&l, later).is_err());
    }

    #[test]
    fn a_refused_call_takes_from_no_bucket_and_names_the_longest_wait() {
        let b = InProcess::default();
        let t0 = Instant::now();
        assert!(b.take(&[limit("tight", 1)], t0).is_ok());
        let both = [limit("loose", 60), limit("tight", 1)];
        let (refused, wait) = b.take(&both, t0).unwrap_err();
        assert_eq!(refused.key, "tight");
        assert!(wait > Duration::from_secs(59));
        // `loose` lost nothing to the refused calls: 60 calls still pass on it alone.
        for _ in 0..60 {
            assert!(b.take(&[limit("loose", 60)], t0).is_ok());
        }
        assert!(b.take(&[limit("loose", 60)], t0).is_err());
    }

    #[tokio::test]
    async fn buckets_are_per_agent_user_and_tool() {
        let limits = Limits {
            calls_per_minute: None,
            per_agent: Some(1),
            per_user: Some(5),
            per_tool: Some(5),
        };
        let caller = |agent: &str| Caller {
            issuer: "i".into(),
            subject: "alice".into(),
            tenant: "acme".into(),
            agent: agent.into(),
            roles: vec![],
            token_id: "t".into(),
            audience: "a".into(),
            expires_at: 0,
            scopes: vec![],
            attributes: Default::default(),
            act: None,
            actors: vec![],
            token: Default::default(),
        };
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let (audit, _writer) = Auditor::start(&store).unwrap();
        let q = Quotas::in_process(&audit);
        assert!(q.check("m", &limits, &caller("bot"), "get").is_ok());
        let refused = q.check("m", &limits, &caller("bot"), "get").unwrap_err();
        assert_eq!(refused.scope, "agent `bot`");
        assert!(refused.retry_after_secs >= 59 && refused.retry_after_secs <= 60);
        assert!(refused.to_string().contains("retry after"), "{refused}");
        // Another agent of the same user has its own bucket.
        assert!(q.check("m", &limits, &caller("other"), "get").is_ok());
        assert!(
            q.check("m", &Limits::default(), &caller("bot"), "get")
                .is_ok()
        );
    }

    fn person(subject: &str, agent: &str) -> Caller {
        Caller {
            issuer: "i".into(),
            subject: subject.into(),
            tenant: "acme".into(),
            agent: agent.into(),
            roles: vec![],
            token_id: "t".into(),
            audience: "a".into(),
            expires_at: 0,
            scopes: vec![],
            attributes: Default::default(),
            act: None,
            actors: vec![],
            token: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_user_bucket_spans_the_user_s_agents_and_tools() {
        let limits = Limits {
            calls_per_minute: None,
            per_agent: None,
            per_user: Some(2),
            per_tool: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let (audit, _writer) = Auditor::start(&store).unwrap();
        let q = Quotas::in_process(&audit);
        // Two agents, two tools: one user, one bucket.
        assert!(
            q.check("m", &limits, &person("alice", "bot"), "get")
                .is_ok()
        );
        assert!(
            q.check("m", &limits, &person("alice", "other"), "list")
                .is_ok()
        );
        let refused = q
            .check("m", &limits, &person("alice", "third"), "pay")
            .unwrap_err();
        assert_eq!(refused.scope, "user `alice`");
        assert_eq!(refused.per_minute, 2);
        assert!(
            refused.retry_after_secs >= 29 && refused.retry_after_secs <= 30,
            "{refused}"
        );
        // Another user, and the same user on another mission, have their own.
        assert!(q.check("m", &limits, &person("bob", "bot"), "get").is_ok());
        assert!(
            q.check("m2", &limits, &person("alice", "bot"), "get")
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_mission_bucket_spans_every_user_agent_and_tool() {
        let limits = Limits {
            calls_per_minute: Some(3),
            per_agent: Some(10),
            per_user: Some(10),
            per_tool: Some(10),
        };
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let (audit, _writer) = Auditor::start(&store).unwrap();
        let q = Quotas::in_process(&audit);
        assert!(
            q.check("m", &limits, &person("alice", "bot"), "get")
                .is_ok()
        );
        assert!(
            q.check("m", &limits, &person("bob", "other"), "list")
                .is_ok()
        );
        assert!(
            q.check("m", &limits, &person("carol", "third"), "pay")
                .is_ok()
        );
        let refused = q
            .check("m", &limits, &person("dave", "fourth"), "get_supplier")
            .unwrap_err();
        assert_eq!(refused.scope, "mission");
        assert_eq!(refused.per_minute, 3);
        assert!(
            refused.retry_after_secs >= 19 && refused.retry_after_secs <= 20,
            "{refused}"
        );
        // Another mission is not affected.
        assert!(
            q.check("m2", &limits, &person("dave", "fourth"), "get")
                .is_ok()
        );
    }
}
