//! `connector-tray`: the connector with a tray icon. Takes the arguments of `connector run`,
//! runs that agent as its child process and shows its state; see `connector::tray`.

// A Windows GUI program: no console window (closing one would end the tray and the agent).
#![cfg_attr(windows, windows_subsystem = "windows")]

fn main() -> std::process::ExitCode {
    connector::telemetry::init("info");
    let args: Vec<String> = std::env::args().skip(1).collect();
    match connector::tray::gui::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
