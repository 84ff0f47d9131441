//! Tests of `serve`: the settings file, flags over it, validation.

use super::*;

#[test]
fn missing_file_means_defaults_and_saves_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = ServerSettings::path(dir.path());
    assert_eq!(
        ServerSettings::load(&path).unwrap(),
        ServerSettings::default()
    );
    let mut s = ServerSettings {
        port: 9001,
        keep_alive: "-1".into(),
        api_keys: vec!["sk-one".into()],
        ..Default::default()
    };
    s.cors_origins.push("http://localhost:3000".into());
    s.save(&path).unwrap();
    assert_eq!(ServerSettings::load(&path).unwrap(), s);
    assert!(!path.with_extension("toml.tmp").exists());
}

#[test]
fn a_broken_file_is_an_error_and_stays_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = ServerSettings::path(dir.path());
    std::fs::write(&path, "port = \"eighty\"\n").unwrap();
    let e = ServerSettings::load(&path).unwrap_err().to_string();
    assert!(e.contains("settings.toml") && e.contains("port"), "{e}");
    std::fs::write(&path, "prot = 80\n").unwrap();
    let e = ServerSettings::load(&path).unwrap_err().to_string();
    assert!(e.contains("prot"), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "prot = 80\n");
}

#[test]
fn validation_names_the_field() {
    let check = |s: ServerSettings| s.validate().unwrap_err().to_string();
    let d = ServerSettings::default;
    assert!(check(ServerSettings { max_seqs: 0, ..d() }).starts_with("max_seqs"));
    assert!(check(ServerSettings {
        keep_alive: "soon".into(),
        ..d()
    })
    .starts_with("keep_alive"));
    assert!(check(ServerSettings {
        cors_origins: vec!["localhost:3000".into()],
        ..d()
    })
    .starts_with("cors_origins"));
    assert!(check(ServerSettings {
        cors_origins: vec!["http://a.test/path".into()],
        ..d()
    })
    .starts_with("cors_origins"));
    assert!(check(ServerSettings {
        max_seqs: 64,
        max_step_tokens: 32,
        ..d()
    })
    .starts_with("max_step_tokens"));
    ServerSettings {
        host: "0.0.0.0".parse().unwrap(),
        api_keys: vec!["sk-x".into()],
        cors_origins: vec!["https://app.example.com".into()],
        ..d()
    }
    .validate()
    .unwrap();
}

#[test]
fn flags_win_over_the_file_and_say_which() {
    let saved = ServerSettings {
        port: 9001,
        keep_alive: "1h".into(),
        ..Default::default()
    };
    let flags = ServeFlags {
        port: Some(0),
        api_key_file: Some("keys.txt".into()),
        ..Default::default()
    };
    let merged = flags.over(&saved).unwrap();
    assert_eq!(merged.port, 0);
    assert_eq!(merged.keep_alive, "1h");
    assert_eq!(flags.pinned(), vec!["port".to_string()]);
    assert_eq!(saved.changed(&merged), vec!["port".to_string()]);
    let named: Vec<String> = as_map(&saved).keys().cloned().collect();
    assert!(
        named.iter().all(|n| FIELDS.contains(&n.as_str())),
        "{named:?}"
    );
    assert_eq!(named.len() + 1, FIELDS.len());
}
