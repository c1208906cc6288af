//! How text leaves the ODBC driver and becomes UTF-8.
//!
//! Sage's driver is an ANSI driver: narrow (`SQL_C_CHAR`) text arrives in the PC's code page
//! (Windows-1252 on UK PCs), not UTF-8. So text is fetched **wide** (`SQL_C_WCHAR`, UTF-16),
//! where the driver converts from its own encoding and nothing has to be guessed. A driver that
//! refuses wide buffers is read narrow instead, and its bytes are decoded here.
//!
//! The connection-string setting `TextEncoding=` (read by the connector, never passed to the
//! driver) chooses:
//! - `auto` (default): wide; if the driver refuses, narrow, taking each value as UTF-8 when it
//!   is valid UTF-8 and as Windows-1252 otherwise (a Windows-1252 name that is also valid UTF-8
//!   needs byte pairs like `Ã©`, which names do not contain);
//! - `wide`: wide only, failing if the driver refuses;
//! - any encoding label (`utf-8`, `windows-1252`, `iso-8859-15`, `cp1250`, `shift_jis`, …):
//!   narrow, decoded strictly from that encoding; a value that is not valid in it fails the
//!   table, naming the column, the row and this setting.
//!
//! Declared column lengths size the buffers; a longer value is never cut short: the table is
//! fetched again with a buffer that fits it (see the extract stage).

use std::borrow::Cow;

use encoding_rs::{Encoding, UTF_8, WINDOWS_1252};

/// The connection-string key of the setting.
pub const SETTING: &str = "TextEncoding";

/// What the connection string asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextEncoding {
    /// Wide, else narrow as UTF-8 or Windows-1252 per value.
    Auto,
    /// Wide only.
    Wide,
    /// Narrow, strictly in this encoding.
    Narrow(&'static Encoding),
}

impl TextEncoding {
    /// Parses the setting's value; the error says what is accepted.
    pub fn parse(value: &str) -> Result<Self, String> {
        let v = value.trim();
        if v.is_empty() || v.eq_ignore_ascii_case("auto") {
            return Ok(TextEncoding::Auto);
        }
        if ["wide", "utf-16", "utf16", "unicode"]
            .iter()
            .any(|w| v.eq_ignore_ascii_case(w))
        {
            return Ok(TextEncoding::Wide);
        }
        // Windows names code pages by number: `1252`, `cp1252`.
        let digits = v.trim_start_matches("cp").trim_start_matches("CP");
        let label = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            format!("windows-{digits}")
        } else {
            v.to_owned()
        };
        let encoding = Encoding::for_label(label.as_bytes())
            .or_else(|| (digits == "65001").then_some(UTF_8))
            .or_else(|| (digits == "932").then_some(encoding_rs::SHIFT_JIS))
            .or_else(|| (digits == "936").then_some(encoding_rs::GBK))
            .or_else(|| (digits == "949").then_some(encoding_rs::EUC_KR))
            .or_else(|| (digits == "950").then_some(encoding_rs::BIG5));
        match encoding {
            Some(e) if e == encoding_rs::UTF_16LE || e == encoding_rs::UTF_16BE => {
                Ok(TextEncoding::Wide)
            }
            Some(e) => Ok(TextEncoding::Narrow(e)),
            None => Err(format!(
                "the connection string's {SETTING}={value} is not an encoding the connector \
                 knows: use auto, wide, utf-8 or a code page such as windows-1252 (or 1252)"
            )),
        }
    }

    /// How to fetch first.
    pub fn first_mode(self) -> TextMode {
        match self {
            TextEncoding::Auto | TextEncoding::Wide => TextMode::Wide,
            TextEncoding::Narrow(e) => TextMode::Narrow(Narrow::strict(e)),
        }
    }

    /// Where to go when the driver refuses wide buffers; `None` when the setting forbids it.
    pub fn fallback(self) -> Option<TextMode> {
        match self {
            TextEncoding::Auto => Some(TextMode::Narrow(Narrow::AUTO)),
            _ => None,
        }
    }
}

/// How text is fetched for one extraction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextMode {
    /// `SQL_C_WCHAR`: UTF-16 from the driver.
    Wide,
    /// `SQL_C_CHAR`: bytes in the driver's code page.
    Narrow(Narrow),
}

impl TextMode {
    /// Names the mode for logs and errors.
    pub fn describe(self) -> String {
        match self {
            TextMode::Wide => "wide (UTF-16)".to_owned(),
            TextMode::Narrow(n) if n.utf8_first && n.encoding != UTF_8 => {
                format!("narrow (UTF-8, else {})", n.encoding.name())
            }
            TextMode::Narrow(n) => format!("narrow ({})", n.encoding.name()),
        }
    }
}

/// How narrow bytes are decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Narrow {
    /// The driver's code page.
    pub encoding: &'static Encoding,
    /// Take a value that is valid UTF-8 as UTF-8 first.
    pub utf8_first: bool,
}

impl Narrow {
    /// `auto`'s narrow reading.
    pub const AUTO: Narrow = Narrow {
        encoding: WINDOWS_1252,
        utf8_first: true,
    };

    /// Exactly `encoding`.
    pub fn strict(encoding: &'static Encoding) -> Self {
        Narrow {
            encoding,
            utf8_first: false,
        }
    }

    /// The text of `bytes`; `None` when they are not valid in the encoding.
    pub fn decode(self, bytes: &[u8]) -> Option<Cow<'_, str>> {
        if bytes.is_ascii() {
            return std::str::from_utf8(bytes).ok().map(Cow::Borrowed);
        }
        if (self.utf8_first || self.encoding == UTF_8)
            && let Ok(s) = std::str::from_utf8(bytes)
        {
            return Some(Cow::Borrowed(s));
        }
        self.encoding
            .decode_without_bom_handling_and_without_replacement(bytes)
    }
}

/// Appends UTF-16 `units` to `out` as UTF-8; `false` on an unpaired surrogate.
pub fn push_utf16(out: &mut String, units: &[u16]) -> bool {
    if units.iter().all(|&u| u < 0x80) {
        out.extend(units.iter().map(|&u| u as u8 as char));
        return true;
    }
    for c in char::decode_utf16(units.iter().copied()) {
        match c {
            Ok(c) => out.push(c),
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_read_by_label_or_code_page_number() {
        assert_eq!(TextEncoding::parse("").unwrap(), TextEncoding::Auto);
        assert_eq!(TextEncoding::parse("Wide").unwrap(), TextEncoding::Wide);
        for s in ["windows-1252", "cp1252", "1252", "latin1"] {
            assert_eq!(
                TextEncoding::parse(s).unwrap(),
                TextEncoding::Narrow(WINDOWS_1252),
                "{s}"
            );
        }
        assert_eq!(
            TextEncoding::parse("65001").unwrap(),
            TextEncoding::Narrow(UTF_8)
        );
        let err = TextEncoding::parse("klingon").unwrap_err();
        assert!(err.contains("TextEncoding=klingon"), "{err}");
    }

    #[test]
    fn windows_1252_bytes_decode_to_their_characters() {
        // £ é ’ € in Windows-1252, by the code page's own table.
        let bytes = [0xA3, b' ', 0xE9, b' ', 0x92, b' ', 0x80];
        let want = "\u{a3} \u{e9} \u{2019} \u{20ac}";
        assert_eq!(Narrow::AUTO.decode(&bytes).unwrap(), want);
        assert_eq!(Narrow::strict(WINDOWS_1252).decode(&bytes).unwrap(), want);
        assert!(Narrow::strict(UTF_8).decode(&bytes).is_none());
        // The same characters in UTF-8 read as themselves under auto.
        assert_eq!(Narrow::AUTO.decode(want.as_bytes()).unwrap(), want);
    }

    #[test]
    fn utf16_with_surrogates_becomes_utf8_and_a_lone_surrogate_is_refused() {
        let mut s = String::new();
        let units: Vec<u16> = "Caf\u{e9} \u{1f600}".encode_utf16().collect();
        assert!(push_utf16(&mut s, &units));
        assert_eq!(s, "Caf\u{e9} \u{1f600}");
        assert!(!push_utf16(&mut String::new(), &[0xD800]));
    }
}
