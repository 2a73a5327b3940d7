//! The worst segment of each method against no adaptation on the same stream: the figure that
//! says whether adaptation ever costs a user accuracy.

use std::collections::BTreeMap;

use cema_sim::report::{self, Record};

use crate::eval::Stream;

/// Per method, the worst segment over all its streams against none on the same stream
/// (`report::worst_segment_harm`); methods without a matching none stream are left out.
pub(crate) fn worst_segment_harms(streams: &[Stream], records: &[Option<Vec<Record>>]) -> BTreeMap<String, f64> {
    let mut harms = BTreeMap::new();
    for (i, stream) in streams.iter().enumerate().filter(|(_, s)| s.method != "none") {
        let none = streams.iter().position(|n| {
            n.method == "none"
                && n.protocol == stream.protocol
                && n.device == stream.device
                && n.corruptions == stream.corruptions
        });
        let (Some(adapted), Some(none)) = (records[i].as_deref(), none.and_then(|n| records[n].as_deref())) else {
            continue;
        };
        if let Some(harm) = report::worst_segment_harm(adapted, none) {
            let worst = harms.entry(stream.method.clone()).or_insert(f64::INFINITY);
            *worst = f64::min(*worst, harm);
        }
    }
    harms
}

/// The worst segment of each method, in points.
pub(crate) fn harm_table(methods: &[String], harms: &BTreeMap<String, f64>) -> String {
    let mut table = String::from(
        "\n### Worst segment against none on the same stream (points)\n\n| method | worst segment |\n|---|---|\n",
    );
    for method in methods.iter().filter(|m| harms.contains_key(*m)) {
        table.push_str(&format!("| {method} | {:.1} |\n", 100.0 * harms[method]));
    }
    table
}
