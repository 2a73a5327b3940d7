//! Device tokens: issued once, stored hashed, checked strictly, revocable, durable.

use cema_cloud::{AuthError, DeviceRegistry, RegistryError};

fn open(dir: &std::path::Path) -> (sled::Db, DeviceRegistry) {
    let db = sled::open(dir.join("state")).expect("open sled");
    let registry = DeviceRegistry::open(&db).expect("registry");
    (db, registry)
}

#[test]
fn an_issued_token_authenticates_its_device_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_db, registry) = open(dir.path());
    let cam = registry.add("cam-1", "fashion").expect("add");
    let phone = registry.add("phone_2", "fashion").expect("add");
    assert!(cam.starts_with("cam-1.") && cam.len() == "cam-1.".len() + 64);
    assert_ne!(cam, phone);
    let device = registry.authenticate(&cam).expect("valid token");
    assert_eq!((device.id.as_str(), device.model_id.as_str(), device.revoked), ("cam-1", "fashion", false));
    assert_eq!(registry.authenticate(&phone).expect("valid").id, "phone_2");

    // cam's secret under phone's id, a flipped digit, and junk are all refused.
    let (_, cam_secret) = cam.rsplit_once('.').expect("dot");
    assert_eq!(registry.authenticate(&format!("phone_2.{cam_secret}")), Err(AuthError::WrongToken));
    let mut flipped = cam.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
    assert_eq!(registry.authenticate(&String::from_utf8(flipped).expect("utf8")), Err(AuthError::WrongToken));
    assert_eq!(registry.authenticate(&format!("ghost.{cam_secret}")), Err(AuthError::UnknownDevice));
    for junk in ["", "cam-1", "cam-1.", "cam-1.xyz", &format!("cam 1.{cam_secret}"), &format!("{cam}0")] {
        assert_eq!(registry.authenticate(junk), Err(AuthError::Malformed), "{junk:?}");
    }
}

#[test]
fn tokens_are_stored_only_as_hashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, registry) = open(dir.path());
    let token = registry.add("cam-1", "fashion").expect("add");
    let (_, secret) = token.rsplit_once('.').expect("dot");
    drop((registry, db));
    let mut found = false;
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).expect("read");
        found |= bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
    }
    assert!(!found, "the token's secret was written to disk");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

#[test]
fn existing_devices_are_not_reissued_and_bad_ids_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_db, registry) = open(dir.path());
    let token = registry.add("cam-1", "fashion").expect("add");
    assert!(matches!(registry.add("cam-1", "other"), Err(RegistryError::AlreadyExists(_))));
    assert_eq!(registry.authenticate(&token).expect("still valid").model_id, "fashion");
    for bad in ["", "has space", "dot.ted", "ü", &"x".repeat(65)] {
        assert!(matches!(registry.add(bad, "m"), Err(RegistryError::InvalidId { what: "device id", .. })), "{bad:?}");
    }
    assert!(matches!(registry.add("cam-2", "bad model"), Err(RegistryError::InvalidId { what: "model id", .. })));
    assert_eq!(registry.list().expect("list").len(), 1, "refused adds changed state");
}

#[test]
fn revocation_and_registrations_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cam, phone) = {
        let (_db, registry) = open(dir.path());
        let cam = registry.add("cam-1", "fashion").expect("add");
        let phone = registry.add("phone-2", "fashion").expect("add");
        registry.revoke("cam-1").expect("revoke");
        assert_eq!(registry.authenticate(&cam), Err(AuthError::Revoked));
        assert!(matches!(registry.revoke("ghost"), Err(RegistryError::UnknownDevice(_))));
        (cam, phone)
    };
    let (_db, registry) = open(dir.path());
    assert_eq!(registry.authenticate(&cam), Err(AuthError::Revoked));
    assert_eq!(registry.authenticate(&phone).expect("valid").id, "phone-2");
    let listed: Vec<(String, bool)> = registry.list().expect("list").into_iter().map(|d| (d.id, d.revoked)).collect();
    assert_eq!(listed, vec![("cam-1".to_owned(), true), ("phone-2".to_owned(), false)]);
}
