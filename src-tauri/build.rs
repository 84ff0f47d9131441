fn main() {
    // The app's own commands get permissions (`allow-pick-gguf`, ...) so that the capability can
    // grant them to the UI, which is served from the in-process server (a remote URL to Tauri).
    tauri_build::try_build(tauri_build::Attributes::new().app_manifest(
        tauri_build::AppManifest::new().commands(&["pick_gguf", "server_info", "desktop_check"]),
    ))
    .expect("tauri-build");
}
