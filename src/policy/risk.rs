//! Live risk signals per agent, in memory: calls in the last minute (60 one-second buckets)
//! and that rate against the agent's own average since it was first seen on the mission.

use std::collections::HashMap;
use std::sync::Mutex;

/// What a policy sees as `context.risk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskSignals {
    /// Calls by the agent on this mission in the last 60 seconds (this one included).
    pub calls_last_minute: i64,
    /// `calls_last_minute` as a percentage of the agent's average calls per minute.
    pub baseline_percent: i64,
}

#[derive(Debug)]
struct Rate {
    first_sec: u64,
    last_sec: u64,
    total: u64,
    buckets: [u32; 60],
}

/// Per-agent counters of one mission.
#[derive(Debug, Default)]
pub struct Rates {
    agents: Mutex<HashMap<String, Rate>>,
}

impl Rates {
    /// Counts one call of `agent` at `now` (unix seconds) and returns the signals after it.
    pub fn record(&self, agent: &str, now: u64) -> RiskSignals {
        let mut agents = match self.agents.lock() {
            Ok(a) => a,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !agents.contains_key(agent) {
            agents.insert(
                agent.to_owned(),
                Rate {
                    first_sec: now,
                    last_sec: now,
                    total: 0,
                    buckets: [0; 60],
                },
            );
        }
        let Some(rate) = agents.get_mut(agent) else {
            return RiskSignals {
                calls_last_minute: 1,
                baseline_percent: 100,
            };
        };
        // Clear the buckets of the seconds that passed since the last call.
        let gap = now.saturating_sub(rate.last_sec).min(60);
        for s in 1..=gap {
            rate.buckets[((rate.last_sec + s) % 60) as usize] = 0;
        }
        rate.last_sec = rate.last_sec.max(now);
        rate.buckets[(now % 60) as usize] += 1;
        rate.total += 1;
        let last_minute: u64 = rate.buckets.iter().map(|&b| u64::from(b)).sum();
        signals(rate, last_minute, now)
    }

    /// The signals of `agent` at `now` without counting a call (zero calls for an agent not
    /// seen yet): what a second decision about the same call (its handoff) sees.
    pub fn read(&self, agent: &str, now: u64) -> RiskSignals {
        let agents = match self.agents.lock() {
            Ok(a) => a,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(rate) = agents.get(agent) else {
            return RiskSignals {
                calls_last_minute: 0,
                baseline_percent: 0,
            };
        };
        // Bucket `s % 60` holds second `s` for the 60 seconds up to the last call; of those,
        // only the ones still within the minute before `now` count.
        let from = now.saturating_sub(59).max(rate.last_sec.saturating_sub(59));
        let last_minute: u64 = (from..=now.min(rate.last_sec))
            .map(|s| u64::from(rate.buckets[(s % 60) as usize]))
            .sum();
        signals(rate, last_minute, now)
    }
}

/// The signals of an agent's counters, given its calls in the last minute.
fn signals(rate: &Rate, last_minute: u64, now: u64) -> RiskSignals {
    let minutes = (now.saturating_sub(rate.first_sec) / 60).max(1);
    let average = (rate.total / minutes).max(1);
    RiskSignals {
        calls_last_minute: last_minute as i64,
        baseline_percent: (last_minute * 100 / average) as i64,
    }
}
