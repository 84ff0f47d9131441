//! What the UI may ask of the desktop app that a browser cannot do.

use tauri::{AppHandle, State};
use tauri_plugin_dialog::DialogExt;

use crate::Running;

/// A native file dialog for a GGUF model; the UI then asks the server to import the path.
#[tauri::command]
pub async fn pick_gguf(app: AppHandle) -> Option<String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    app.dialog()
        .file()
        .set_title("Import a GGUF model")
        .add_filter("GGUF model", &["gguf"])
        .pick_file(move |file| {
            let _ = tx.send(file);
        });
    let file = rx.await.ok().flatten()?;
    file.into_path().ok().map(|p| p.display().to_string())
}

/// Where the in-process server listens and what it serves.
#[tauri::command]
pub fn server_info(running: State<'_, Running>) -> serde_json::Value {
    let guard = running.0.lock().unwrap_or_else(|e| e.into_inner());
    match guard.as_ref() {
        Some(s) => serde_json::json!({
            "url": s.url(),
            "model": s.default_model(),
            "loaded": s.loaded_models(),
            // The admin API's token, for the window's calls (its page load also sets the cookie).
            "admin_token": s.admin_token(),
        }),
        None => serde_json::json!({"url": null}),
    }
}
