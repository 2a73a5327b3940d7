//! CEMA end to end: process orchestration ([`fleet`]: a real `cema-cloud` and `cema-edge`
//! agents on loopback), reports of the agents' predictions ([`report`]) and PNG charts
//! ([`plot`]). The `cema-sim` binary builds the demo and the evaluation on them; the
//! integration tests use the same helpers.

pub mod fleet;
pub mod plot;
pub mod report;
