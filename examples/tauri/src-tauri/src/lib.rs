//! Start the sidecar (an `externalBin`) with the shell plugin before the window opens, read
//! its first stdout line, hand `{url, ws, token}` to the frontend through a command, keep
//! draining its output, and kill it when the app exits.
//!
//! Threads: `setup` (the main thread) waits for the first line; one async task then owns the
//! event receiver for the sidecar's whole life. It must keep receiving: the plugin's pipe
//! readers block on a full channel, and a sidecar whose stderr nobody reads blocks too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tauri::async_runtime::{self, Receiver};
use tauri::{Manager, RunEvent};
use tauri_plugin_shell::process::{CommandChild, CommandEvent};
use tauri_plugin_shell::ShellExt;

/// How long the sidecar may take to print its first line (it takes ~0.2 s).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The sidecar's ready line: `{"event":"ready","url":...,"ws":...,"port":...,"pid":...,"token":...}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct Ready {
    url: String,
    ws: String,
    port: u16,
    pid: u32,
    /// Present when the sidecar generated it (no SIDECAR_TOKEN in its environment).
    token: Option<String>,
}

/// The first stdout line: `ready`, or `{"event":"error","error":"port-in-use","message":...}`.
#[derive(Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum FirstLine {
    Ready(Ready),
    Error { error: String, message: String },
}

struct Sidecar {
    ready: Ready,
    child: Mutex<Option<CommandChild>>,
    /// Set before the app kills it, so that its end is not taken for a crash.
    stopping: Arc<AtomicBool>,
}

impl Sidecar {
    fn kill(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
        }
    }
}

/// What the frontend needs to connect.
#[tauri::command]
fn sidecar_connection(sidecar: tauri::State<'_, Sidecar>) -> Ready {
    sidecar.ready.clone()
}

/// The origins this app's pages send: `tauri://localhost` (macOS, Linux),
/// `http(s)://tauri.localhost` (Windows), and Vite's dev server in debug builds.
fn allowed_origins() -> String {
    let mut origins = vec![
        "tauri://localhost",
        "http://tauri.localhost",
        "https://tauri.localhost",
    ];
    if cfg!(debug_assertions) {
        origins.push("http://localhost:1420");
    }
    origins.join(",")
}

/// Read events until the first stdout line; log stderr meanwhile.
async fn first_line(rx: &mut Receiver<CommandEvent>) -> Result<Ready, String> {
    while let Some(event) = rx.recv().await {
        match event {
            CommandEvent::Stdout(line) => {
                return match serde_json::from_slice::<FirstLine>(&line) {
                    Ok(FirstLine::Ready(ready)) => Ok(ready),
                    Ok(FirstLine::Error { error, message }) => Err(format!("{error}: {message}")),
                    Err(err) => Err(format!(
                        "unreadable first line ({err}): {}",
                        String::from_utf8_lossy(&line)
                    )),
                };
            }
            CommandEvent::Stderr(line) => eprintln!("[sidecar] {}", String::from_utf8_lossy(&line)),
            CommandEvent::Terminated(status) => {
                return Err(format!(
                    "exited before its ready line (code {:?})",
                    status.code
                ));
            }
            CommandEvent::Error(err) => return Err(err),
            _ => {}
        }
    }
    Err("closed its output before its ready line".into())
}

/// Spawn the sidecar, wait for its ready line, keep draining its events.
fn start_sidecar(app: &tauri::App) -> Result<Sidecar, String> {
    let args = vec![
        "--port".to_string(),
        "0".to_string(),
        // the sidecar exits on its own if this process dies, however it dies
        "--parent-pid".to_string(),
        std::process::id().to_string(),
        // ... and when its stdin closes: kill() drops the pipe, which also ends the inner
        // process of a one-file build (killing the bootloader alone would orphan it)
        "--exit-on-stdin-eof".to_string(),
        "--allowed-origins".to_string(),
        allowed_origins(),
    ];
    // "sidecar" is the file name of the externalBin entry "binaries/sidecar", without the triple
    let command = app.shell().sidecar("sidecar").map_err(|e| e.to_string())?;
    let (mut rx, child) = command.args(args).spawn().map_err(|e| e.to_string())?;
    let ready = async_runtime::block_on(async {
        match tokio::time::timeout(READY_TIMEOUT, first_line(&mut rx)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no ready line within {READY_TIMEOUT:?}")),
        }
    });
    let ready = match ready {
        Ok(ready) => ready,
        Err(err) => {
            let _ = child.kill();
            return Err(err);
        }
    };
    let handle = app.handle().clone();
    let stopping = Arc::new(AtomicBool::new(false));
    let stopped_by_us = stopping.clone();
    async_runtime::spawn(async move {
        while let Some(event) = rx.recv().await {
            match event {
                CommandEvent::Stderr(line) => {
                    eprintln!("[sidecar] {}", String::from_utf8_lossy(&line))
                }
                CommandEvent::Terminated(status) => {
                    eprintln!(
                        "[sidecar] exited: code {:?}, signal {:?}",
                        status.code, status.signal
                    );
                    // the sidecar is part of the app: without it there is nothing to show
                    if !stopped_by_us.load(Ordering::SeqCst) {
                        handle.exit(1);
                    }
                }
                _ => {}
            }
        }
    });
    Ok(Sidecar {
        ready,
        child: Mutex::new(Some(child)),
        stopping,
    })
}

#[cfg_attr(mobile, tauri::mobile_entry_point)]
pub fn run() {
    tauri::Builder::default()
        .plugin(tauri_plugin_shell::init())
        .setup(|app| {
            let sidecar =
                start_sidecar(app).map_err(|e| format!("the sidecar did not start: {e}"))?;
            app.manage(sidecar);
            Ok(())
        })
        .invoke_handler(tauri::generate_handler![sidecar_connection])
        .build(tauri::generate_context!())
        .expect("error while building the app")
        .run(|app, event| {
            // Children spawned from Rust are not in the plugin's list: kill ours ourselves.
            if let RunEvent::Exit = event {
                if let Some(sidecar) = app.try_state::<Sidecar>() {
                    sidecar.kill();
                }
            }
        });
}
