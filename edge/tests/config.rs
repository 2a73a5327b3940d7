//! `cema-edge run`'s settings: defaults, then the config file, then the environment and flags
//! (one table), each value parsed once; a bad value or an unknown key is refused with its layer.
#![allow(clippy::unwrap_used)] // a failing test should panic where it fails

use cema_edge::Preset;
use cema_edge::config::{ConfigError, EdgeConfig, PacingSpec, SourceSpec};
use cema_edge::selector::Redundancy;

fn table(text: &str) -> toml::Table {
    text.parse().unwrap()
}

#[test]
fn later_layers_override_earlier_ones_key_by_key() {
    assert_eq!(EdgeConfig::layered(None, toml::Table::new()).unwrap(), EdgeConfig::default());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, "pacing = \"lockstep\"\nbatch = 32\nsource = \"idx:/data/images.idx\"\n").unwrap();
    let flags = table("batch = 16\npreset = \"upload-all\"\nbudget = 0.25\nd_margin = \"raw:0.1\"\n");
    let config = EdgeConfig::layered(Some(&file), flags).unwrap();
    assert_eq!(config.batch, 16, "flags and environment win over the file");
    assert_eq!(config.pacing, PacingSpec::Lockstep, "the file wins over the defaults");
    assert_eq!(config.source, SourceSpec::Idx("/data/images.idx".into()));
    assert_eq!(config.severity, 5, "defaults fill the rest");
    let selector = config.selector();
    assert_eq!(selector.budget, Some(0.25));
    assert_eq!(selector.redundancy, Redundancy::Raw(0.1));
    assert_eq!(selector.e_max_frac, Preset::UploadAll.config().e_max_frac, "the preset's own values stay");
}

#[test]
fn bad_values_and_unknown_keys_are_refused_with_their_layer() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, "pacing = \"realtime:fast\"\n").unwrap();
    let err = EdgeConfig::layered(Some(&file), toml::Table::new()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ConfigError::Invalid { .. }), "{text}");
    assert!(text.contains("edge.toml") && text.contains("realtime:fast"), "{text}");

    for (flags, named) in [
        ("pacng = \"lockstep\"", "pacng"),
        ("severity = 9", "severity 9"),
        ("budget = 1.5", "budget 1.5"),
        ("corruptions = \"fog,smog\"", "smog"),
    ] {
        let err = EdgeConfig::layered(None, table(flags)).unwrap_err().to_string();
        assert!(err.starts_with("flags and environment") && err.contains(named), "{flags}: {err}");
    }
    let missing = EdgeConfig::layered(Some(&dir.path().join("none.toml")), toml::Table::new()).unwrap_err();
    assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");
}
