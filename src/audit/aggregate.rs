//! Aggregation of repeated events that a caller can produce at will (failed authentication,
//! refused sessions, session creation): the first of each kind from each source is recorded in
//! full; after that, one record per window says how many more there were. So 10,000 garbage
//! requests add a bounded number of records while every distinct failure stays visible.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::{Auditor, Event};

/// How often counts are written.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most (kind, source) pairs tracked at once; beyond that they share one overflow bucket.
pub const MAX_KEYS: usize = 10_000;

struct Bucket {
    /// Repeats since the last record.
    count: u64,
    /// The first event, as a template for the count record.
    sample: Event,
    /// Whether anything happened in the current window.
    active: bool,
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct Aggregator {
    inner: Arc<Inner>,
}

struct Inner {
    audit: Auditor,
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

impl Aggregator {
    /// Starts the aggregator; its flusher stops when the last handle is dropped.
    pub fn start(audit: Auditor) -> Self {
        let inner = Arc::new(Inner {
            audit,
            buckets: Mutex::new(HashMap::new()),
        });
        tokio::spawn(flush_every_window(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// Records `event` under `kind` (e.g. the failure's reason) from `source` (e.g. the peer
    /// address or the principal): in full the first time in a window, counted after that.
    pub fn record(&self, kind: &str, source: &str, event: Event) {
        let Ok(mut buckets) = self.inner.buckets.lock() else {
            self.inner.audit.record_now(event);
            return;
        };
        let mut key = (kind.to_owned(), source.to_owned());
        if !buckets.contains_key(&key) && buckets.len() >= MAX_KEYS {
            key = ("overflow".to_owned(), "many sources".to_owned());
        }
        match buckets.get_mut(&key) {
            Some(bucket) => {
                bucket.count += 1;
                bucket.active = true;
            }
            None => {
                buckets.insert(
                    key,
                    Bucket {
                        count: 0,
                        sample: event.clone(),
                        active: true,
                    },
                );
                drop(buckets);
                self.inner.audit.record_now(event);
            }
        }
    }

    /// Writes the counts gathered so far (also done every [`WINDOW`]).
    pub fn flush(&self) {
        self.inner.flush();
    }
}

impl Inner {
    fn flush(&self) {
        let mut records = Vec::new();
        if let Ok(mut buckets) = self.buckets.lock() {
            buckets.retain(|(kind, source), bucket| {
                if bucket.count > 0 {
                    let mut e = bucket.sample.clone();
                    e.outcome = Some("aggregated".into());
                    e.detail = Some(format!(
                        "{} more `{kind}` from {source} since the last record",
                        bucket.count
                    ));
                    records.push(e);
                    bucket.count = 0;
                }
                // A quiet pair is forgotten: its next occurrence is recorded in full again.
                std::mem::take(&mut bucket.active)
            });
        }
        for e in records {
            self.audit.record_now(e);
        }
    }
}

async fn flush_every_window(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(WINDOW);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.flush();
    }
}
