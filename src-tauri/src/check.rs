//! The desktop self-check behind the test under Xvfb (`LANTERN_DESKTOP_CHECK=FILE`): once the
//! window shows the server's UI, a script in the page asks the app for `server_info` over IPC,
//! makes one chat request through the API, writes what it saw to FILE through `desktop_check`, and the app quits the normal way a few seconds later (time for a
//! screenshot). Without the variable none of this runs.

use std::time::Duration;

use tauri::webview::{PageLoadEvent, PageLoadPayload};
use tauri::{AppHandle, WebviewWindow};

const REPORT: &str = "LANTERN_DESKTOP_CHECK";
/// Seconds between the report and the quit.
const HOLD: &str = "LANTERN_DESKTOP_CHECK_HOLD";

const SCRIPT: &str = r#"
(async () => {
  const wait = (ms) => new Promise((r) => setTimeout(r, ms));
  for (let i = 0; i < 200 && !document.querySelector("nav a"); i++) await wait(50);
  const info = await window.__TAURI__.core.invoke("server_info");
  const chat = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Session-Id": "desktop-check" },
    body: JSON.stringify({ model: info.model, messages: [{ role: "user", content: "Say hi." }], max_tokens: 4 }),
  });
  const answer = await chat.json();
  // The admin API: with the cookie the page load set, and with the token handed over IPC alone.
  const admin = await fetch("/api/sessions");
  const viaIpc = await fetch("/api/settings", { credentials: "omit", headers: { Authorization: `Bearer ${info.admin_token}` } });
  const without = await fetch("/api/settings", { credentials: "omit" });
  const report = {
    url: location.href,
    title: document.title,
    nav: [...document.querySelectorAll("nav a")].map((a) => a.textContent.trim()),
    chat_status: chat.status,
    chat_tokens: answer.usage ? answer.usage.completion_tokens : null,
    admin_status: admin.status,
    ipc_admin_status: viaIpc.status,
    no_token_status: without.status,
    server_info: { ...info, admin_token: info.admin_token ? "(given)" : null },
  };
  await window.__TAURI__.core.invoke("desktop_check", { report: JSON.stringify(report) });
})().catch((e) => {
  // Shown in the page too, so the screenshot says why when the report cannot be sent.
  document.body.insertAdjacentHTML("afterbegin", `<pre id="desktop-check-error" style="color:#e5534b">desktop check: ${String(e)}</pre>`);
  window.__TAURI__?.core.invoke("desktop_check", { report: JSON.stringify({ error: String(e) }) });
});
"#;

/// Run the check script when the server's UI has loaded (not on the splash page).
pub fn on_page_load(window: &WebviewWindow, payload: &PageLoadPayload<'_>) {
    let from_server = payload.url().scheme() == "http";
    if std::env::var_os(REPORT).is_some()
        && from_server
        && payload.event() == PageLoadEvent::Finished
    {
        let _ = window.eval(SCRIPT);
    }
}

/// The page's report: written to the file the variable names; then the app quits.
#[tauri::command]
pub fn desktop_check(app: AppHandle, report: String) -> Result<(), String> {
    let path = std::env::var_os(REPORT).ok_or("no desktop check was asked for")?;
    std::fs::write(&path, report).map_err(|e| e.to_string())?;
    let hold = std::env::var(HOLD)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    tauri::async_runtime::spawn(async move {
        tokio::time::sleep(Duration::from_secs(hold)).await;
        app.exit(0);
    });
    Ok(())
}
