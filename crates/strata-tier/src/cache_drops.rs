//! Counts the blocks foyer's disk tier drops instead of writing. foyer reports its
//! internals through a `mixtrics` registry; this one keeps the two counters of dropped
//! disk writes (its write queue over its threshold, its flush buffer full) and ignores the
//! rest, so that the metric keeps a Strata name in Strata's registry.

use std::borrow::Cow;

use mixtrics::metrics::{
    BoxedCounter, BoxedCounterVec, BoxedGaugeVec, BoxedHistogramVec, CounterOps, CounterVecOps,
    RegistryOps,
};
use mixtrics::registry::noop::NoopMetricsRegistry;
use prometheus::{IntCounter, IntCounterVec};

/// The foyer counter vector (labels: cache name, operation) that holds the drops.
const FOYER_INNER_OPS: &str = "foyer_storage_inner_op_total";

/// foyer's operation label for each drop, and the `reason` it is counted under.
const DROPS: [(&str, &str); 2] = [
    ("channel_overflow", "queue_full"),
    ("buffer_overflow", "buffer_full"),
];

/// A `mixtrics` registry for foyer that records its dropped disk writes in `dropped`
/// (`strata_tier_cache_disk_dropped_blocks_total`) and nothing else.
#[derive(Debug, Clone)]
pub(crate) struct DroppedWrites {
    dropped: IntCounterVec,
}

impl DroppedWrites {
    pub(crate) fn new(dropped: IntCounterVec) -> Self {
        Self { dropped }
    }
}

#[derive(Debug)]
struct Counter(IntCounter);

impl CounterOps for Counter {
    fn increase(&self, val: u64) {
        self.0.inc_by(val);
    }
}

impl CounterVecOps for DroppedWrites {
    fn counter(&self, labels: &[Cow<'static, str>]) -> BoxedCounter {
        let op = labels.get(1).map(|l| l.as_ref());
        match DROPS.iter().find(|(foyer_op, _)| Some(*foyer_op) == op) {
            Some((_, reason)) => Box::new(Counter(self.dropped.with_label_values(&[reason]))),
            None => Box::new(NoopMetricsRegistry),
        }
    }
}

impl RegistryOps for DroppedWrites {
    fn register_counter_vec(
        &self,
        name: Cow<'static, str>,
        desc: Cow<'static, str>,
        label_names: &'static [&'static str],
    ) -> BoxedCounterVec {
        if name == FOYER_INNER_OPS {
            Box::new(self.clone())
        } else {
            NoopMetricsRegistry.register_counter_vec(name, desc, label_names)
        }
    }

    fn register_gauge_vec(
        &self,
        name: Cow<'static, str>,
        desc: Cow<'static, str>,
        label_names: &'static [&'static str],
    ) -> BoxedGaugeVec {
        NoopMetricsRegistry.register_gauge_vec(name, desc, label_names)
    }

    fn register_histogram_vec(
        &self,
        name: Cow<'static, str>,
        desc: Cow<'static, str>,
        label_names: &'static [&'static str],
    ) -> BoxedHistogramVec {
        NoopMetricsRegistry.register_histogram_vec(name, desc, label_names)
    }

    fn register_histogram_vec_with_buckets(
        &self,
        name: Cow<'static, str>,
        desc: Cow<'static, str>,
        label_names: &'static [&'static str],
        buckets: Vec<f64>,
    ) -> BoxedHistogramVec {
        NoopMetricsRegistry.register_histogram_vec_with_buckets(name, desc, label_names, buckets)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use prometheus::core::Collector;

    use super::*;

    /// foyer's two drop counters land under their reasons; its other inner operations and
    /// its other counter vectors are not recorded.
    #[test]
    fn only_dropped_writes_are_counted() {
        let dropped = IntCounterVec::new(prometheus::Opts::new("d", "d"), &["reason"]).unwrap();
        let registry = DroppedWrites::new(dropped.clone());
        let inner =
            registry.register_counter_vec(FOYER_INNER_OPS.into(), "".into(), &["name", "op"]);
        let other = registry.register_counter_vec(
            "foyer_storage_op_total".into(),
            "".into(),
            &["name", "op"],
        );
        let name = Cow::Borrowed("strata-blocks");
        inner
            .counter(&[name.clone(), "channel_overflow".into()])
            .increase(3);
        inner
            .counter(&[name.clone(), "buffer_overflow".into()])
            .increase(1);
        inner
            .counter(&[name.clone(), "queue_rotate".into()])
            .increase(5);
        other
            .counter(&[name, "channel_overflow".into()])
            .increase(7);
        assert_eq!(dropped.with_label_values(&["queue_full"]).get(), 3);
        assert_eq!(dropped.with_label_values(&["buffer_full"]).get(), 1);
        assert_eq!(dropped.collect()[0].get_metric().len(), 2);
    }
}
