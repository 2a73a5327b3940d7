//! Black-box integration tests of the CEMA system: one file per behaviour under `tests/`,
//! driving the public crates as a user or operator would.
