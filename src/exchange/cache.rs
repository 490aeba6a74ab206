//! The downstream token cache: per (caller token digest, target), single-flight, bounded.
//!
//! - A hit is one mutex-guarded `HashMap` lookup on a 36-byte `Copy` key and an `Arc` clone; the
//!   lock is never held across an `.await`.
//! - A miss starts one exchange per key; concurrent callers of the same key await that one
//!   (a [`Shared`] future: whichever waiter polls drives it, so a cancelled first caller does not
//!   strand the others), and every waiter files the outcome.
//! - A token is fresh until its `refresh_at` (shortly before its expiry, never past the caller
//!   token's). After that the next call exchanges again; if the identity provider is unavailable
//!   then, the old token serves until it really expires (retrying at most every
//!   [`RETRY_AFTER_SECS`]), and after that calls fail closed.
//! - Failures are never cached. Expired entries (a token never outlives its caller token) are
//!   dropped by a miss at most every [`PURGE_EVERY_SECS`]; at [`CAPACITY`] expired entries are
//!   purged, then arbitrary ones.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use super::{ExchangeError, Issued};
use crate::authn::unix_now;

/// Most cached tokens.
pub const CAPACITY: usize = 50_000;
/// While the identity provider is unavailable, how often a stale token's key retries.
pub const RETRY_AFTER_SECS: u64 = 5;
/// How often a miss also drops the expired entries (tokens of expired caller tokens).
pub const PURGE_EVERY_SECS: u64 = 60;

/// Cache key: the caller token's SHA-256 and the target's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub caller: [u8; 32],
    pub target: u32,
}

type Flight = Shared<BoxFuture<'static, Result<Arc<Issued>, ExchangeError>>>;

enum Slot {
    /// A token and when to exchange again.
    Ready(Arc<Issued>, u64),
    /// An exchange in flight: its generation, agent, outcome, and the token it replaces
    /// (served while the identity provider is unavailable and it is still valid).
    Flight(u64, Arc<str>, Flight, Option<Arc<Issued>>),
}

enum Step {
    Hit(Arc<Issued>),
    Uncached(BoxFuture<'static, Result<Arc<Issued>, ExchangeError>>),
    /// Another caller's exchange is in flight.
    Wait(u64, Flight, Option<Arc<Issued>>),
    /// This caller started the exchange.
    Started(u64, Flight, Option<Arc<Issued>>),
}

pub struct TokenCache {
    slots: Mutex<HashMap<Key, Slot>>,
    capacity: usize,
    generation: AtomicU64,
    /// Unix seconds of the next purge of expired entries.
    next_purge: AtomicU64,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            capacity,
            generation: AtomicU64::new(1),
            next_purge: AtomicU64::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A fresh cached token (the hit path).
    pub fn fresh(&self, key: &Key, now: u64) -> Option<Arc<Issued>> {
        let slots = self.slots.lock().ok()?;
        match slots.get(key) {
            Some(Slot::Ready(issued, refresh_at)) if now < *refresh_at => Some(issued.clone()),
            Some(Slot::Ready(..) | Slot::Flight(..)) | None => None,
        }
    }

    /// Drops every entry of an agent (in-flight exchanges finish but are not kept).
    pub fn forget_agent(&self, agent: &str) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.retain(|_, slot| match slot {
                Slot::Ready(issued, _) => &*issued.agent != agent,
                Slot::Flight(_, a, ..) => &**a != agent,
            });
        }
    }

    /// The cached token, or the outcome of the one exchange in flight for `key` (started with
    /// `exchange` when there is none). `None` key: not cached (the caller's token is unknown).
    pub async fn get_or_exchange<F>(
        &self,
        key: Option<Key>,
        agent: &str,
        now: u64,
        exchange: F,
    ) -> Result<(Arc<Issued>, bool), ExchangeError>
    where
        F: FnOnce() -> BoxFuture<'static, Result<Arc<Issued>, ExchangeError>>,
    {
        let Some(key) = key else {
            return exchange().await.map(|i| (i, false));
        };
        let step = match self.slots.lock() {
            Ok(mut slots) => self.step(&mut slots, key, agent, now, exchange),
            Err(_) => Step::Uncached(exchange()),
        };
        match step {
            Step::Hit(issued) => Ok((issued, true)),
            Step::Uncached(exchange) => exchange.await.map(|i| (i, false)),
            Step::Wait(generation, flight, stale) => {
                let result = flight.await;
                self.file(key, generation, result, stale).map(|i| (i, true))
            }
            Step::Started(generation, flight, stale) => {
                let result = flight.await;
                self.file(key, generation, result, stale)
                    .map(|i| (i, false))
            }
        }
    }

    /// What to do for `key`, decided under the lock (never held across an await).
    fn step<F>(
        &self,
        slots: &mut HashMap<Key, Slot>,
        key: Key,
        agent: &str,
        now: u64,
        exchange: F,
    ) -> Step
    where
        F: FnOnce() -> BoxFuture<'static, Result<Arc<Issued>, ExchangeError>>,
    {
        let stale = match slots.get(&key) {
            Some(Slot::Ready(issued, refresh_at)) if now < *refresh_at => {
                return Step::Hit(issued.clone());
            }
            Some(Slot::Ready(issued, _)) => (now < issued.expires_at).then(|| issued.clone()),
            Some(Slot::Flight(generation, _, flight, stale)) => {
                return Step::Wait(*generation, flight.clone(), stale.clone());
            }
            None => None,
        };
        let purge_due = now >= self.next_purge.load(Ordering::Relaxed);
        if purge_due {
            self.next_purge
                .store(now + PURGE_EVERY_SECS, Ordering::Relaxed);
        }
        if purge_due || slots.len() >= self.capacity {
            slots.retain(|_, slot| match slot {
                Slot::Ready(issued, _) => now < issued.expires_at,
                Slot::Flight(..) => true,
            });
            while slots.len() >= self.capacity {
                let Some(victim) = slots.keys().next().copied() else {
                    break;
                };
                slots.remove(&victim);
            }
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let flight = exchange().shared();
        slots.insert(
            key,
            Slot::Flight(generation, Arc::from(agent), flight.clone(), stale.clone()),
        );
        Step::Started(generation, flight, stale)
    }

    /// Files the outcome of flight `generation` (every waiter does; the first one wins).
    fn file(
        &self,
        key: Key,
        generation: u64,
        result: Result<Arc<Issued>, ExchangeError>,
        stale: Option<Arc<Issued>>,
    ) -> Result<Arc<Issued>, ExchangeError> {
        let Ok(mut slots) = self.slots.lock() else {
            return result;
        };
        let ours = matches!(slots.get(&key), Some(Slot::Flight(g, ..)) if *g == generation);
        match result {
            Ok(issued) => {
                if ours {
                    slots.insert(key, Slot::Ready(issued.clone(), issued.refresh_at));
                }
                Ok(issued)
            }
            // The identity provider is down: the old token serves while it is valid.
            Err(ExchangeError::Unavailable { .. })
                if stale.as_ref().is_some_and(|s| unix_now() < s.expires_at) =>
            {
                let Some(stale) = stale else { return result };
                if ours {
                    let retry = (unix_now() + RETRY_AFTER_SECS).min(stale.expires_at);
                    slots.insert(key, Slot::Ready(stale.clone(), retry));
                }
                Ok(stale)
            }
            Err(e) => {
                if ours {
                    slots.remove(&key);
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use secrecy::SecretString;

    use super::*;
    use crate::config::exchange::Deliver;

    fn issued(agent: &str, refresh_at: u64, expires_at: u64) -> Arc<Issued> {
        Arc::new(Issued {
            header: SecretString::from("Bearer t"),
            token: SecretString::from("t"),
            jti: Some(crate::authn::random_id()),
            expires_at,
            refresh_at,
            agent: Arc::from(agent),
            profile: Arc::from("p"),
            audience: Arc::from("aud"),
            deliver: Deliver::Header,
        })
    }

    fn key(n: u8) -> Key {
        Key {
            caller: [n; 32],
            target: 1,
        }
    }

    fn unavailable() -> ExchangeError {
        ExchangeError::Unavailable {
            profile: "p".into(),
            audience: "aud".into(),
            reason: "cannot connect".into(),
        }
    }

    #[tokio::test]
    async fn concurrent_misses_make_one_exchange_and_a_hit_is_served_from_the_cache() {
        let cache = Arc::new(TokenCache::new(10));
        let count = Arc::new(AtomicUsize::new(0));
        let now = unix_now();
        let calls = (0..8).map(|_| {
            let (cache, count) = (cache.clone(), count.clone());
            async move {
                cache
                    .get_or_exchange(Some(key(1)), "bot", now, move || {
                        async move {
                            count.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok(issued("bot", now + 100, now + 200))
                        }
                        .boxed()
                    })
                    .await
                    .unwrap()
                    .0
            }
        });
        let results = futures::future::join_all(calls).await;
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert!(results.iter().all(|r| Arc::ptr_eq(r, &results[0])));
        let hit = cache.fresh(&key(1), now).unwrap();
        assert!(Arc::ptr_eq(&hit, &results[0]));
        assert!(cache.fresh(&key(2), now).is_none());
    }

    #[tokio::test]
    async fn a_cancelled_first_caller_does_not_strand_the_exchange() {
        let cache = Arc::new(TokenCache::new(10));
        let count = Arc::new(AtomicUsize::new(0));
        let now = unix_now();
        let exchange = |count: Arc<AtomicUsize>| {
            move || {
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok(issued("bot", now + 100, now + 200))
                }
                .boxed()
            }
        };
        let first = cache.get_or_exchange(Some(key(1)), "bot", now, exchange(count.clone()));
        assert!(
            tokio::time::timeout(Duration::from_millis(10), first)
                .await
                .is_err()
        );
        let (second, cached) = cache
            .get_or_exchange(Some(key(1)), "bot", now, exchange(count.clone()))
            .await
            .unwrap();
        assert!(cached);
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert!(Arc::ptr_eq(&cache.fresh(&key(1), now).unwrap(), &second));
    }

    #[tokio::test]
    async fn a_stale_token_serves_while_the_provider_is_down_until_it_expires() {
        let cache = TokenCache::new(10);
        let now = unix_now();
        let old = issued("bot", now - 1, now + 100);
        let first = old.clone();
        cache
            .get_or_exchange(Some(key(1)), "bot", now, move || {
                async move { Ok(first) }.boxed()
            })
            .await
            .unwrap();
        // Past `refresh_at`: an exchange is tried; the provider is down; the old token serves.
        let (served, _) = cache
            .get_or_exchange(Some(key(1)), "bot", now, || {
                async { Err(unavailable()) }.boxed()
            })
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&served, &old));
        // It is not retried at once, but stays fresh for a few seconds.
        assert!(cache.fresh(&key(1), now).is_some());

        // A refusal (not an outage) is not covered by the old token.
        let refused = cache
            .get_or_exchange(Some(key(1)), "bot", now + RETRY_AFTER_SECS + 1, || {
                async {
                    Err(ExchangeError::InvalidTarget {
                        audience: "aud".into(),
                    })
                }
                .boxed()
            })
            .await;
        assert!(matches!(refused, Err(ExchangeError::InvalidTarget { .. })));

        // An expired token never serves.
        let expired = issued("bot", now - 10, now - 1);
        let e = expired.clone();
        cache
            .get_or_exchange(Some(key(2)), "bot", now, move || {
                async move { Ok(e) }.boxed()
            })
            .await
            .unwrap();
        let down = cache
            .get_or_exchange(Some(key(2)), "bot", now, || {
                async { Err(unavailable()) }.boxed()
            })
            .await;
        assert!(matches!(down, Err(e) if e == unavailable()));
    }

    #[tokio::test]
    async fn failures_are_not_cached_and_forget_agent_drops_only_that_agent() {
        let cache = TokenCache::new(10);
        let now = unix_now();
        let count = Arc::new(AtomicUsize::new(0));
        for _ in 0..2 {
            let count = count.clone();
            let r = cache
                .get_or_exchange(Some(key(1)), "bot", now, move || {
                    async move {
                        count.fetch_add(1, Ordering::SeqCst);
                        Err(unavailable())
                    }
                    .boxed()
                })
                .await;
            assert!(r.is_err());
        }
        assert_eq!(count.load(Ordering::SeqCst), 2);
        assert!(cache.is_empty());

        for (n, agent) in [(2, "bot"), (3, "other"), (4, "bot")] {
            let i = issued(agent, now + 100, now + 200);
            cache
                .get_or_exchange(Some(key(n)), agent, now, move || {
                    async move { Ok(i) }.boxed()
                })
                .await
                .unwrap();
        }
        assert_eq!(cache.len(), 3);
        cache.forget_agent("bot");
        assert_eq!(cache.len(), 1);
        assert!(cache.fresh(&key(3), now).is_some());
    }

    #[tokio::test]
    async fn expired_entries_are_dropped_by_a_later_miss() {
        let cache = TokenCache::new(10);
        let now = unix_now();
        let short = issued("bot", now + 1, now + 2);
        cache
            .get_or_exchange(Some(key(1)), "bot", now, move || {
                async move { Ok(short) }.boxed()
            })
            .await
            .unwrap();
        let later = now + PURGE_EVERY_SECS + 3;
        let other = issued("bot", later + 100, later + 200);
        cache
            .get_or_exchange(Some(key(2)), "bot", later, move || {
                async move { Ok(other) }.boxed()
            })
            .await
            .unwrap();
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let cache = TokenCache::new(2);
        let now = unix_now();
        for n in 0..5 {
            let i = issued("bot", now + 100, now + 200);
            cache
                .get_or_exchange(Some(key(n)), "bot", now, move || {
                    async move { Ok(i) }.boxed()
                })
                .await
                .unwrap();
            assert!(cache.len() <= 2);
        }
        assert!(cache.fresh(&key(4), now).is_some());
    }
}
