//! The in-process server: started on the configured port (or, when another program has it and
//! the user agrees, the next free one), awaited on `/health`, shown in the window and the tray,
//! and shut down cleanly when the app exits.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use lantern::config::{ServeFlags, ServerSettings};
use lantern::server::start::next_free_port;
use lantern::{Config, Launch, Server};
use tauri::{AppHandle, Manager};
use tauri_plugin_dialog::{DialogExt, MessageDialogButtons, MessageDialogKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{tray, Running, MAIN_WINDOW};

/// Start the server in the background; the splash page tells how it goes.
pub fn spawn_start(app: AppHandle, config: Config, flags: ServeFlags) {
    tauri::async_runtime::spawn(async move {
        match start(&app, config, flags).await {
            Ok(server) => serving(&app, server).await,
            Err(e) => {
                let message = format!("{e:#}");
                eprintln!("lantern-desktop: the server did not start: {message}");
                splash(
                    &app,
                    &format!("The server did not start:\n\n{message}"),
                    true,
                );
                tray::set_status(&app, "Not running (see the window)");
            }
        }
    });
}

async fn start(app: &AppHandle, config: Config, flags: ServeFlags) -> Result<Server> {
    let settings_file = ServerSettings::path(&config.home());
    let mut launch = Launch::new(config, flags)?;
    let listener = match launch.bind().await {
        Ok(listener) => listener,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let taken = launch.settings.port;
            let next = next_free_port(launch.settings.host, taken)
                .with_context(|| format!("port {taken} is in use and no port after it is free"))?;
            let question = format!(
                "Port {taken} is in use by another program.\n\nStart Lantern on port {next} \
                 instead? (Settings → Port, or {}, changes it for good.)",
                settings_file.display()
            );
            if !ask(app, question, format!("Use port {next}")).await {
                app.exit(0);
                anyhow::bail!(
                    "port {taken} is in use by another program; free it, or set another port in \
                     {}",
                    settings_file.display()
                );
            }
            launch.settings.port = next;
            launch
                .bind()
                .await
                .with_context(|| format!("listening on port {next}"))?
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "listening on {}:{}",
                    launch.settings.host, launch.settings.port
                )
            })
        }
    };
    splash(app, &format!("Loading {}…", launch.settings.model), false);
    launch.start(listener).await
}

/// A yes/no question in a native dialog.
async fn ask(app: &AppHandle, question: String, yes: String) -> bool {
    let dialog = app
        .dialog()
        .message(question)
        .title("Lantern")
        .kind(MessageDialogKind::Warning)
        .buttons(MessageDialogButtons::OkCancelCustom(yes, "Quit".into()));
    tokio::task::spawn_blocking(move || dialog.blocking_show())
        .await
        .unwrap_or(false)
}

/// The server is up: wait for `/health`, then show the UI and keep the tray's status current.
async fn serving(app: &AppHandle, server: Server) {
    let addr = server.addr();
    let url = server.url();
    let model = server.default_model().to_string();
    app.state::<Running>()
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace(server);
    if let Err(e) = wait_for_health(addr, Duration::from_secs(60)).await {
        splash(app, &format!("The server does not answer: {e:#}"), true);
        return;
    }
    println!("lantern-desktop: serving {model} at {url}");
    if let Some(window) = app.get_webview_window(MAIN_WINDOW) {
        let _ = window.set_title(&format!("Lantern — {addr}"));
        match url.parse() {
            Ok(parsed) => {
                let _ = window.navigate(parsed);
            }
            Err(e) => splash(app, &format!("bad server URL {url}: {e}"), true),
        }
    }
    loop {
        let status = {
            let running = app.state::<Running>();
            let guard = running.0.lock().unwrap_or_else(|e| e.into_inner());
            match guard.as_ref() {
                Some(s) => {
                    let (busy, waiting) = s.busy();
                    format!("Serving {model} on {addr} · {busy} running, {waiting} waiting")
                }
                None => return,
            }
        };
        tray::set_status(app, &status);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// GET /health until it answers 200.
async fn wait_for_health(addr: SocketAddr, limit: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match health(addr).await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn health(addr: SocketAddr) -> Result<()> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    // A loopback Host: the server answers no other name (DNS-rebinding defence).
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        addr.port()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    anyhow::ensure!(
        answer.starts_with("HTTP/1.1 200"),
        "{}",
        answer.lines().next().unwrap_or("no answer")
    );
    Ok(())
}

/// Put `text` on the splash page (while the window shows it).
fn splash(app: &AppHandle, text: &str, error: bool) {
    if let Some(window) = app.get_webview_window(MAIN_WINDOW) {
        let text = serde_json::to_string(text).unwrap_or_default();
        let _ = window.eval(format!(
            "(() => {{ const s = document.getElementById('status'); if (s) {{ s.textContent = {text}; s.className = '{}'; }} }})()",
            if error { "error" } else { "" }
        ));
    }
}

/// Ctrl-C or SIGTERM quit the app the same way as the tray's Quit.
pub fn spawn_signal_handler(app: AppHandle) {
    tauri::async_runtime::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        app.exit(0);
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        app.exit(0);
    });
}

/// Finish in-flight requests and write the request log before the process ends.
pub fn shut_down(app: &AppHandle) {
    let server = app
        .state::<Running>()
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(server) = server {
        match tauri::async_runtime::block_on(server.shutdown()) {
            Ok(()) => println!("lantern-desktop: server stopped; request log flushed"),
            Err(e) => eprintln!("lantern-desktop: shutting down: {e:#}"),
        }
    }
}
