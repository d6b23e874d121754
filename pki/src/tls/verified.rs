//! A bounded cache of peer certificate chains that verified against the pinned anchors, so that
//! the next handshake with the same peer skips the chain's signature checks (33.8 µs per side
//! in `benches/README.md`, a quarter of a full handshake's CPU).
//!
//! What is cached is only what a successful chain verification established and that does not
//! depend on the time, under a key that stands for the exact chain presented (a SHA-256 over
//! every certificate, each length-prefixed): the validity window common to all of them, and
//! the leaf's SANs. No certificate bytes are kept. A hit
//! still checks that window against the `now` of the handshake, and the verifiers still run
//! every per-handshake check (allow list, server name, the `CertificateVerify` signature).
//! Failures are never cached. A cache belongs to one [`super::Material`], whose anchors never
//! change: new material (a CA or leaf reload) starts with empty caches.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};

use crate::identity::PeerIdentity;

/// Entries held per cache (one for client chains, one for server chains, per material).
pub const DEFAULT_CAPACITY: usize = 1_024;

/// Hits and misses of the verified-chain caches. One set can be shared by the caches of
/// successive materials (the proxy passes the same one to every reload) so that the counts
/// only ever grow.
#[derive(Debug, Default)]
pub struct ChainCacheCounters {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl ChainCacheCounters {
    /// Chain verifications answered from a cache.
    #[must_use]
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Chain verifications that ran in full (nothing cached, the cached window did not cover
    /// the handshake's time, or the chain was refused).
    #[must_use]
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}

/// SHA-256 over the presented chain: the number of certificates, then each certificate's
/// length (8 bytes, big-endian) and DER. The encoding is injective, so two different chains
/// (including the same bytes split differently between certificates) never share an input.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) struct ChainKey([u8; 32]);

impl ChainKey {
    pub(super) fn new(
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Self {
        let mut h = Sha256::new();
        h.update((1 + intermediates.len() as u64).to_be_bytes());
        for cert in std::iter::once(end_entity).chain(intermediates) {
            h.update((cert.len() as u64).to_be_bytes());
            h.update(cert.as_ref());
        }
        Self(h.finalize().into())
    }
}

/// What a successful verification of one chain established, minus the time.
#[derive(Debug)]
pub(super) struct Verified {
    /// The latest `notBefore` of every certificate presented, Unix seconds.
    not_before: i64,
    /// The earliest `notAfter` of every certificate presented, Unix seconds.
    not_after: i64,
    /// The leaf's SANs, for the allow list (client chains only).
    identity: Option<PeerIdentity>,
}

impl Verified {
    /// The window common to every certificate presented (the verified path is a subset of
    /// them, so inside this window the same path is valid again), or `None` when a certificate
    /// cannot be read here, in which case the chain is simply not cached.
    pub(super) fn new(
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        identity: Option<PeerIdentity>,
    ) -> Option<Self> {
        let mut not_before = i64::MIN;
        let mut not_after = i64::MAX;
        for cert in std::iter::once(end_entity).chain(intermediates) {
            let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
            let validity = parsed.validity();
            not_before = not_before.max(validity.not_before.timestamp());
            not_after = not_after.min(validity.not_after.timestamp());
        }
        Some(Self {
            not_before,
            not_after,
            identity,
        })
    }

    /// Whether every certificate of the chain is valid at `now` (bounds inclusive, as webpki).
    fn covers(&self, now: UnixTime) -> bool {
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        self.not_before <= now && now <= self.not_after
    }

    /// The leaf's SANs, when they were read at verification.
    pub(super) fn identity(&self) -> Option<&PeerIdentity> {
        self.identity.as_ref()
    }
}

/// One bounded cache of verified chains for one usage (client or server authentication)
/// against one set of anchors.
#[derive(Debug)]
pub(super) struct VerifiedChains {
    capacity: usize,
    inner: Mutex<Entries>,
    counters: Arc<ChainCacheCounters>,
}

/// The entries, and their keys in insertion order (the eviction order when full).
#[derive(Debug, Default)]
struct Entries {
    map: HashMap<ChainKey, Arc<Verified>>,
    order: VecDeque<ChainKey>,
}

impl VerifiedChains {
    /// An empty cache holding at most `capacity` chains; 0 disables it.
    pub(super) fn new(capacity: usize, counters: Arc<ChainCacheCounters>) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Entries::default()),
            counters,
        }
    }

    /// The key of a chain, or `None` when the cache is disabled (nothing is hashed then).
    pub(super) fn key(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Option<ChainKey> {
        (self.capacity > 0).then(|| ChainKey::new(end_entity, intermediates))
    }

    /// The cached verification of a chain if there is one whose window covers `now`, counted as
    /// a hit; otherwise counted as a miss (the caller verifies in full). An entry whose window
    /// no longer covers `now` is dropped.
    pub(super) fn lookup(&self, key: &ChainKey, now: UnixTime) -> Option<Arc<Verified>> {
        let found = {
            let mut e = self.lock();
            match e.map.get(key) {
                Some(v) if v.covers(now) => Some(v.clone()),
                Some(_) => {
                    e.remove(key);
                    None
                }
                None => None,
            }
        };
        let counter = if found.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Records a chain that has just verified in full at `now`. When full, entries whose window
    /// has ended go first, then the oldest.
    pub(super) fn insert(&self, key: ChainKey, verified: Verified, now: UnixTime) {
        if self.capacity == 0 || !verified.covers(now) {
            return;
        }
        let mut e = self.lock();
        if e.map.insert(key, Arc::new(verified)).is_some() {
            // Two handshakes with the same new peer verified it at once: one entry, same place.
            return;
        }
        e.order.push_back(key);
        if e.map.len() > self.capacity {
            let Entries { map, order } = &mut *e;
            map.retain(|_, v| v.covers(now));
            order.retain(|k| map.contains_key(k));
            while map.len() > self.capacity {
                let Some(oldest) = order.pop_front() else {
                    break;
                };
                map.remove(&oldest);
            }
        }
    }

    /// Chains held now.
    pub(super) fn len(&self) -> usize {
        self.lock().map.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The entries stay consistent at every await-free step, so a panic elsewhere while the
        // lock was held leaves nothing half-done.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Entries {
    fn remove(&mut self, key: &ChainKey) {
        if self.map.remove(key).is_some() {
            self.order.retain(|k| k != key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn der(bytes: &[u8]) -> CertificateDer<'static> {
        CertificateDer::from(bytes.to_vec())
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    fn entry(not_before: i64, not_after: i64) -> Verified {
        Verified {
            not_before,
            not_after,
            identity: None,
        }
    }

    fn key(i: usize) -> ChainKey {
        ChainKey::new(&der(&i.to_be_bytes()), &[])
    }

    #[test]
    fn the_key_separates_chains_that_concatenate_to_the_same_bytes() {
        let (a, b, ab) = (der(b"aa"), der(b"bb"), der(b"aabb"));
        let keys = [
            ChainKey::new(&ab, &[]),
            ChainKey::new(&a, std::slice::from_ref(&b)),
            ChainKey::new(&b, std::slice::from_ref(&a)),
            ChainKey::new(&der(b"a"), &[der(b"abb")]),
            ChainKey::new(&a, &[b.clone(), der(b"")]),
        ];
        for (i, x) in keys.iter().enumerate() {
            for y in &keys[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert_eq!(
            keys[1],
            ChainKey::new(&a, &[b]),
            "the same chain, the same key"
        );
    }

    #[test]
    fn the_default_bound_holds_and_ended_entries_go_first() {
        let counters = Arc::new(ChainCacheCounters::default());
        let cache = VerifiedChains::new(DEFAULT_CAPACITY, counters.clone());
        let now = at(1_000);
        // Half of the entries end at 1,500, the others much later.
        for i in 0..DEFAULT_CAPACITY {
            let end = if i % 2 == 0 { 1_500 } else { 9_000 };
            cache.insert(key(i), entry(0, end), now);
        }
        assert_eq!(cache.len(), DEFAULT_CAPACITY);
        // At 2,000 the short ones have ended: one more insert drops them, not the oldest.
        let later = at(2_000);
        cache.insert(key(DEFAULT_CAPACITY), entry(0, 9_000), later);
        assert_eq!(cache.len(), DEFAULT_CAPACITY / 2 + 1);
        assert!(
            cache.lookup(&key(1), later).is_some(),
            "the oldest live one stays"
        );
        assert!(cache.lookup(&key(0), later).is_none());
        // Then it fills again and evicts in insertion order, never growing past the bound.
        for i in DEFAULT_CAPACITY + 1..3 * DEFAULT_CAPACITY {
            cache.insert(key(i), entry(0, 9_000), later);
            assert!(cache.len() <= DEFAULT_CAPACITY);
        }
        assert_eq!(cache.len(), DEFAULT_CAPACITY);
        assert!(cache
            .lookup(&key(3 * DEFAULT_CAPACITY - 1), later)
            .is_some());
        assert!(cache
            .lookup(&key(2 * DEFAULT_CAPACITY - 1), later)
            .is_none());
        let inner = cache.lock();
        assert_eq!(inner.order.len(), inner.map.len(), "order and map agree");
    }

    #[test]
    fn a_hit_needs_the_window_to_cover_now_and_a_stale_entry_is_dropped() {
        let counters = Arc::new(ChainCacheCounters::default());
        let cache = VerifiedChains::new(8, counters.clone());
        cache.insert(key(1), entry(100, 200), at(150));
        assert!(cache.lookup(&key(1), at(100)).is_some());
        assert!(cache.lookup(&key(1), at(200)).is_some());
        assert!(cache.lookup(&key(1), at(201)).is_none());
        assert_eq!(cache.len(), 0);
        // Not inserted when the window does not cover the verification time (cannot happen
        // after a successful webpki check, but the cache does not rely on it).
        cache.insert(key(2), entry(100, 200), at(99));
        assert_eq!(cache.len(), 0);
        assert_eq!((counters.hits(), counters.misses()), (2, 1));
    }
}
