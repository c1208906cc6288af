//! Starting the connector when the user logs on: the Windows Run key
//! (`HKCU\Software\Microsoft\Windows\CurrentVersion\Run`), an XDG autostart entry on Linux
//! (`~/.config/autostart/sage-connector.desktop`), a login item on macOS, all through the
//! `auto-launch` crate, which keeps each platform's part out of this code.
//!
//! Takes the `connector` executable and the arguments of `connector run`; produces the entry,
//! or says whether it is there. The user's answer is kept in the agent's settings
//! (`startAtLogon`); `connector doctor` compares the two.

use std::path::Path;

/// The entry's name (the Run key's value, the `.desktop` file's name).
pub const APP_NAME: &str = "sage-connector";

/// Why the entry could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("could not {doing} the start-at-logon entry ({APP_NAME}): {detail}")]
pub struct AutostartError {
    doing: &'static str,
    detail: String,
}

fn entry(exe: &Path, args: &[String]) -> Result<auto_launch::AutoLaunch, AutostartError> {
    auto_launch::AutoLaunchBuilder::new()
        .set_app_name(APP_NAME)
        .set_app_path(&exe.display().to_string())
        .set_args(args)
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
