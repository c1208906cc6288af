//! The Sage companies on this PC: every `COMPANY` file of every installed Sage 50 version.
//!
//! Takes the root of Sage's settings folders (`C:\ProgramData\Sage\Accounts`: `2020`…`2026`
//! for v26…v32, `V33` and later); produces [`FoundCompany`]s, newest version first, each with
//! its data folder, whether this process can see it, and whether it looks like a network path
//! (a UNC path, or a drive letter other than C:, which may be a mapped drive a background
//! process does not have). A `COMPANY` file lists one data path per line, in UTF-8 or in the
//! PC's Windows-1252 code page; both are read. The same data folder listed by several versions
//! is kept once, under the newest.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Overrides the root of Sage's settings folders (unusual installs, and tests).
pub const ROOT_ENV: &str = "CONNECTOR_SAGE_ROOT";
/// The ODBC connection string of a Sage company: `{VERSION}`, `{ACCDATA}` and `{DATA_DIR}`
/// are filled in; `{{` and `}}` are literal braces.
pub const DEFAULT_TEMPLATE: &str =
    "Driver={{Sage Line 50 v{VERSION}}};DIR={ACCDATA};UseDataPath=No";

/// Where Sage keeps its settings folders.
pub fn default_root() -> PathBuf {
    if let Some(root) = std::env::var_os(ROOT_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(root);
    }
    if cfg!(windows) {
        let data = std::env::var_os("PROGRAMDATA").unwrap_or_else(|| "C:\\ProgramData".into());
        PathBuf::from(data).join("Sage").join("Accounts")
    } else {
        // Sage 50 runs on Windows only; elsewhere the root must be given.
        PathBuf::from("/var/lib/sage50")
    }
}

/// The Sage major version of a settings folder's name (`2026` → 32, `V33` → 33).
pub fn version_of_folder(name: &str) -> Option<u32> {
    if let Some(n) = name.strip_prefix(['V', 'v']) {
        return n.parse().ok().filter(|v| *v >= 33);
    }
    let year: u32 = name.parse().ok()?;
    (2015..=2026).contains(&year).then(|| year - 1994)
}

/// The ODBC driver of a Sage version.
pub fn driver_name(version: u32) -> String {
    format!("Sage Line 50 v{version}")
}

/// A Sage company listed on this PC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FoundCompany {
    /// The Sage version whose settings list it.
    pub version: u32,
    /// The `COMPANY` file.
    pub listed_in: PathBuf,
    /// The company folder.
    pub data_dir: PathBuf,
    /// Its `ACCDATA` folder.
    pub accdata: PathBuf,
    /// Whether this process can see the ACCDATA folder.
    pub exists: bool,
    /// A UNC path or a drive letter other than C: (maybe a mapped network drive).
    pub network: bool,
}

/// Windows-1252's characters for 0x80–0x9F (undefined ones kept as their C1 control).
const CP1252_HIGH: [char; 32] = [
    '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8D}', 'Ž', '\u{8F}',
    '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9D}', 'ž', 'Ÿ',
];

/// The lines of a `COMPANY` file: UTF-8 (with or without a BOM), else Windows-1252.
pub fn parse_company_file(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t.to_owned(),
        Err(_) => bytes
            .iter()
            .map(|&b| match b {
                0x80..=0x9F => CP1252_HIGH[(b - 0x80) as usize],
                _ => b as char,
            })
            .collect(),
    };
    text.lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

fn is_network(line: &str) -> bool {
    let b = line.as_bytes();
    line.starts_with("\\\\")
        || line.starts_with("//")
        || (b.len() >= 2
            && b[1] == b':'
            && b[0].is_ascii_alphabetic()
            && !b[0].eq_ignore_ascii_case(&b'C'))
}

/// One listed line as a company.
fn company_of(line: &str, version: u32, listed_in: &Path) -> FoundCompany {
    let windows_style = line.contains('\\') && !line.contains('/');
    let trimmed = line.trim_end_matches(['\\', '/']);
    let last = trimmed.rsplit(['\\', '/']).next().unwrap_or("");
    let (data_dir, accdata) = if last.eq_ignore_ascii_case("ACCDATA") {
        let parent = &trimmed[..trimmed.len() - last.len()];
        (
            PathBuf::from(parent.trim_end_matches(['\\', '/'])),
            PathBuf::from(trimmed),
        )
    } else if windows_style {
        (
            PathBuf::from(trimmed),
            PathBuf::from(format!("{trimmed}\\ACCDATA")),
        )
    } else {
        (PathBuf::from(trimmed), Path::new(trimmed).join("ACCDATA"))
    };
    FoundCompany {
        version,
        listed_in: listed_in.to_owned(),
        exists: accdata.is_dir(),
        network: is_network(line),
        data_dir,
        accdata,
    }
}

/// Every company of every version under `root`, newest version first.
pub fn find_companies(root: &Path) -> Vec<FoundCompany> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            version_of_folder(&name).map(|v| (v, e.path()))
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    let mut found: Vec<FoundCompany> = Vec::new();
    for (version, dir) in versions {
        let file = dir.join("COMPANY");
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "Could not read a Sage COMPANY file.");
                continue;
            }
        };
        for line in parse_company_file(&bytes) {
            let company = company_of(&line, version, &file);
            if !found.iter().any(|f| f.accdata == company.accdata) {
                found.push(company);
            }
        }
    }
    found
}

/// The connection string of a company from a template (see [`DEFAULT_TEMPLATE`]).
pub fn connection_string(template: &str, found: &FoundCompany) -> String {
    template
        .replace("{VERSION}", &found.version.to_string())
        .replace("{ACCDATA}", &found.accdata.display().to_string())
        .replace("{DATA_DIR}", &found.data_dir.display().to_string())
        .replace("{{", "{")
        .replace("}}", "}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_folders_name_their_sage_version() {
        assert_eq!(version_of_folder("2026"), Some(32));
        assert_eq!(version_of_folder("2020"), Some(26));
        assert_eq!(version_of_folder("2015"), Some(21));
        assert_eq!(version_of_folder("V33"), Some(33));
        assert_eq!(version_of_folder("v34"), Some(34));
        assert_eq!(version_of_folder("Backup"), None);
        assert_eq!(version_of_folder("1999"), None);
    }

    #[test]
    fn every_company_file_of_every_version_is_read_newest_first_once_each() {
        let root = tempfile::tempdir().unwrap();
        let here = |name: &str| {
            let dir = root.path().join("data").join(name);
            std::fs::create_dir_all(dir.join("ACCDATA")).unwrap();
            dir
        };
        let a = here("Company.000");
        let b = here("Société.001");
        for (folder, content) in [
            (
                "2022",
                format!(
                    "{}\r\n\r\n{}\\ACCDATA\r\n",
                    a.display(),
                    "F:\\Accounts\\Company.000"
                )
                .into_bytes(),
            ),
            (
                "2026",
                format!("{}\n\\\\server\\share\\Company.002\n", a.display()).into_bytes(),
            ),
            ("Backup", b"/nowhere\n".to_vec()),
        ] {
            std::fs::create_dir_all(root.path().join(folder)).unwrap();
            std::fs::write(root.path().join(folder).join("COMPANY"), content).unwrap();
        }
        // V33's file is in Windows-1252: é is 0xE9.
        std::fs::create_dir_all(root.path().join("V33")).unwrap();
        let cp1252: Vec<u8> = b
            .display()
            .to_string()
            .replace('é', "\u{0}")
            .bytes()
            .map(|c| if c == 0 { 0xE9 } else { c })
            .collect();
        std::fs::write(root.path().join("V33").join("COMPANY"), cp1252).unwrap();

        let found = find_companies(root.path());
        let summary: Vec<(u32, String, bool, bool)> = found
            .iter()
            .map(|f| {
                (
                    f.version,
                    f.accdata.display().to_string(),
                    f.exists,
                    f.network,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (33, b.join("ACCDATA").display().to_string(), true, false),
                (32, a.join("ACCDATA").display().to_string(), true, false),
                (
                    32,
                    "\\\\server\\share\\Company.002\\ACCDATA".into(),
                    false,
                    true
                ),
                (28, "F:\\Accounts\\Company.000\\ACCDATA".into(), false, true),
            ]
        );
        assert_eq!(
            found[3].data_dir,
            PathBuf::from("F:\\Accounts\\Company.000")
        );
    }

    #[test]
    fn the_template_fills_in_the_company() {
        let found = company_of(
            "C:\\ProgramData\\Sage\\Accounts\\2026\\Company.000",
            32,
            Path::new("x"),
        );
        assert_eq!(
            connection_string(DEFAULT_TEMPLATE, &found),
            "Driver={Sage Line 50 v32};DIR=C:\\ProgramData\\Sage\\Accounts\\2026\\Company.000\\ACCDATA;UseDataPath=No"
        );
        assert_eq!(driver_name(found.version), "Sage Line 50 v32");
    }
}
