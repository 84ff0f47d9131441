//! Lantern's desktop app. The window opens on a splash page at once; the same server as
//! `lantern serve` starts in-process (settings.toml, `LANTERN_*` variables), and when `/health`
//! answers the window moves to the UI it serves. A tray icon shows the status and offers Open and
//! Quit; a second launch brings the first one's window forward; quitting finishes in-flight
//! requests and flushes the request log.

// No console window on Windows in release builds.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

mod check;
mod commands;
mod server;
mod tray;

use std::sync::Mutex;

use clap::Parser;
use tauri::{Manager, RunEvent, WebviewUrl, WebviewWindowBuilder};

/// What the desktop app reads from the environment (it takes no command-line arguments: the OS
/// may pass its own).
#[derive(Parser)]
struct Environment {
    #[command(flatten)]
    config: lantern::Config,
    #[command(flatten)]
    flags: lantern::config::ServeFlags,
}

/// The running server, once started; taken at exit to shut it down.
#[derive(Default)]
pub struct Running(pub Mutex<Option<lantern::Server>>);

pub const MAIN_WINDOW: &str = "main";

fn main() {
    let env = Environment::parse_from(["lantern-desktop"]);
    let _telemetry = lantern::config::init_logging(&env.config)
        .map_err(|e| eprintln!("warning: {e}"))
        .ok();
    let app = tauri::Builder::default()
        .plugin(tauri_plugin_single_instance::init(|app, _args, _cwd| {
            show_main_window(app);
        }))
        .plugin(tauri_plugin_dialog::init())
        .manage(Running::default())
        .invoke_handler(tauri::generate_handler![
            commands::pick_gguf,
            commands::server_info,
            check::desktop_check
        ])
        .setup(move |app| {
            WebviewWindowBuilder::new(app, MAIN_WINDOW, WebviewUrl::App("index.html".into()))
                .title("Lantern — starting")
                .inner_size(1280.0, 800.0)
                .min_inner_size(720.0, 480.0)
                .on_page_load(|window, payload| check::on_page_load(&window, &payload))
                .build()?;
            tray::build(app.handle())?;
            server::spawn_start(app.handle().clone(), env.config, env.flags);
            server::spawn_signal_handler(app.handle().clone());
            Ok(())
        })
        .build(tauri::generate_context!())
        .expect("the desktop app could not be built");
    app.run(|app, event| {
        if let RunEvent::Exit = event {
            server::shut_down(app);
        }
    });
}

/// Bring the main window forward (tray "Open", a second launch).
pub fn show_main_window(app: &tauri::AppHandle) {
    if let Some(window) = app.get_webview_window(MAIN_WINDOW) {
        let _ = window.unminimize();
        let _ = window.show();
        let _ = window.set_focus();
    }
}
