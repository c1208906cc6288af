//! Starting the connector when the user logs on: the Windows Run key
//! (`HKCU\Software\Microsoft\Windows\CurrentVersion\Run`), an XDG autostart entry on Linux
//! (`~/.config/autostart/sage-connector.desktop`), a login item on macOS, all through the
//! `auto-launch` crate, which keeps each platform's part out of this code.
//!
//! Takes the `connector` executable and the arguments of `connector run`; produces the entry,
//! or says whether it is there. The user's answer is kept in the agent's settings
//! (`startAtLogon`); `connector doctor` compares the two.

use std::path::{Path, PathBuf};

/// The entry's name (the Run key's value, the `.desktop` file's name).
pub const APP_NAME: &str = "sage-connector";

/// Why the entry could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("could not {doing} the start-at-logon entry ({APP_NAME}): {detail}")]
pub struct AutostartError {
    doing: &'static str,
    detail: String,
}

/// A path or argument as one word of a command line (the Run key's value, a `.desktop`
/// file's `Exec=`): quoted when it holds a space or a quote.
fn word(text: &str) -> String {
    if text.is_empty() || text.contains([' ', '\t', '"']) {
        format!("\"{}\"", text.replace('"', "\\\""))
    } else {
        text.to_owned()
    }
}

fn entry(exe: &Path, args: &[String]) -> Result<auto_launch::AutoLaunch, AutostartError> {
    let args: Vec<String> = args.iter().map(|a| word(a)).collect();
    auto_launch::AutoLaunchBuilder::new()
        .set_app_name(APP_NAME)
        .set_app_path(&word(&exe.display().to_string()))
        .set_args(&args)
        // HKCU's Run key even when run elevated: the connector runs per Windows user
        .set_windows_enable_mode(auto_launch::WindowsEnableMode::CurrentUser)
        .build()
        .map_err(|e| AutostartError {
            doing: "describe",
            detail: e.to_string(),
        })
}

/// Whether the connector starts at logon.
pub fn is_enabled(exe: &Path) -> Result<bool, AutostartError> {
    entry(exe, &[])?.is_enabled().map_err(|e| AutostartError {
        doing: "read",
        detail: e.to_string(),
    })
}

/// What starts at logon for an agent started as `connector ARGS…` (`run …`): the tray
/// (`connector-tray` beside `connector`, with the same arguments but `run`) when it is
/// installed, else the agent itself; folders made absolute, and the server named even when it
/// came from `CONNECTOR_SERVER`.
pub fn command(connector: &Path, args: &[String]) -> (PathBuf, Vec<String>) {
    let tray = connector.with_file_name(format!("connector-tray{}", std::env::consts::EXE_SUFFIX));
    let mut out: Vec<String> = Vec::new();
    let mut it = args.iter().skip_while(|a| *a == "run").peekable();
    let mut has_server = false;
    while let Some(a) = it.next() {
        out.push(a.clone());
        if a == "--server" || a.starts_with("--server=") {
            has_server = true;
        }
        if (a == "--state-dir" || a == "--sage-root")
            && let Some(v) = it.next()
        {
            out.push(
                std::path::absolute(v)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| v.clone()),
            );
        }
    }
    if !has_server && let Ok(server) = std::env::var("CONNECTOR_SERVER") {
        out.extend(["--server".to_owned(), server]);
    }
    if tray.is_file() {
        (tray, out)
    } else {
        (
            connector.to_owned(),
            std::iter::once("run".to_owned()).chain(out).collect(),
        )
    }
}

/// Makes the connector start at logon as `exe ARGS…` (on), or not (off).
pub fn set(exe: &Path, args: &[String], on: bool) -> Result<(), AutostartError> {
    let launch = entry(exe, args)?;
    let done = if on {
        launch.enable()
    } else if launch.is_enabled().unwrap_or(false) {
        launch.disable()
    } else {
        Ok(())
    };
    done.map_err(|e| AutostartError {
        doing: if on { "write" } else { "remove" },
        detail: e.to_string(),
    })?;
    tracing::info!(on, exe = %exe.display(), "Set whether the connector starts at logon.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_starts_the_tray_when_installed_with_absolute_folders_and_quoted_words() {
        let dir = tempfile::tempdir().unwrap();
        let connector = dir.path().join("my apps").join("connector");
        std::fs::create_dir_all(connector.parent().unwrap()).unwrap();
        let args: Vec<String> = ["run", "--server", "https://s", "--state-dir", "state"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (exe, a) = command(&connector, &args);
        assert_eq!(exe, connector);
        assert_eq!(a[0], "run");
        assert!(Path::new(&a[4]).is_absolute(), "{a:?}");
        std::fs::write(connector.with_file_name("connector-tray"), b"").unwrap();
        let (exe, a) = command(&connector, &args);
        assert!(exe.ends_with("connector-tray"));
        assert_eq!(a[..2], ["--server", "https://s"]);
        assert_eq!(
            word(&exe.display().to_string()),
            format!("\"{}\"", exe.display())
        );
        assert_eq!(word("--port"), "--port");
    }
}
