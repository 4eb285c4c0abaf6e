//! Version vectors: one counter per region, carried by every account and every event. A region
//! increments its own counter for each event it originates on an account; comparing two vectors
//! tells whether one update saw the other (causal order) or neither did (concurrent: a conflict).
//!
//! Built on `crdts::VClock`; serialized as a plain JSON object `{"us-east": 3, "eu-west": 1}` so the
//! database, Kafka headers and HTTP clients all read it without knowing the crate.

use crate::ids::RegionId;
use crdts::{CmRDT, CvRDT, Dot, VClock};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// A version vector keyed by region.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "BTreeMap<RegionId, u64>", into = "BTreeMap<RegionId, u64>")]
pub struct VersionVector(VClock<RegionId>);

impl VersionVector {
    /// The empty vector (nothing seen).
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one more event originated by `region`; returns the new counter.
    pub fn increment(&mut self, region: &RegionId) -> u64 {
        let dot = self.0.inc(region.clone());
        self.0.apply(dot);
        self.0.get(region)
    }

    /// The counter of `region`.
    pub fn get(&self, region: &RegionId) -> u64 {
        self.0.get(region)
    }

    /// Sets `region`'s counter to at least `counter`.
    pub fn witness(&mut self, region: &RegionId, counter: u64) {
        self.0.apply(Dot::new(region.clone(), counter));
    }

    /// Pointwise maximum: everything either side has seen.
    pub fn merge(&mut self, other: &Self) {
        self.0.merge(other.0.clone());
    }

    /// Causal order: `Some(Less)` if `self` happened before `other`, `None` if concurrent.
    pub fn causal_cmp(&self, other: &Self) -> Option<Ordering> {
        self.0.partial_cmp(&other.0)
    }

    /// True when neither vector dominates the other.
    pub fn concurrent_with(&self, other: &Self) -> bool {
        self.causal_cmp(other).is_none()
    }

    /// The counters, by region.
    pub fn to_map(&self) -> BTreeMap<RegionId, u64> {
        self.0.iter().map(|dot| (dot.actor.clone(), dot.counter)).collect()
    }
}

impl From<BTreeMap<RegionId, u64>> for VersionVector {
    fn from(map: BTreeMap<RegionId, u64>) -> Self {
        let mut vv = Self::new();
        for (region, counter) in map {
            if counter > 0 {
                vv.witness(&region, counter);
            }
        }
        vv
    }
}

impl From<VersionVector> for BTreeMap<RegionId, u64> {
    fn from(vv: VersionVector) -> Self {
        vv.to_map()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str) -> RegionId {
        RegionId::new(name).unwrap()
    }

    #[test]
    fn increments_order_and_concurrency() {
        let mut a = VersionVector::new();
        a.increment(&r("us-east"));
        let mut b = a.clone();
        b.increment(&r("us-east"));
        assert_eq!(a.causal_cmp(&b), Some(Ordering::Less));
        let mut c = a.clone();
        c.increment(&r("eu-west"));
        assert!(b.concurrent_with(&c));
        let mut m = b.clone();
        m.merge(&c);
        assert_eq!(m.get(&r("us-east")), 2);
        assert_eq!(m.get(&r("eu-west")), 1);
    }

    #[test]
    fn serializes_as_a_plain_object() {
        let mut v = VersionVector::new();
        v.increment(&r("us-east"));
        v.increment(&r("us-east"));
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, r#"{"us-east":2}"#);
        assert_eq!(serde_json::from_str::<VersionVector>(&json).unwrap(), v);
    }
}
