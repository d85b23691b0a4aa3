//! Text from the database shown to a person: keys, notes and names that clients chose, with the
//! characters a terminal would obey (escape sequences, other control characters, bidirectional
//! overrides) shown as escapes instead.

/// `s` with every control character, and every character that reorders or hides text, as
/// `\u{..}` (a backslash as `\\`), so that printing it cannot move the cursor, recolour or
/// rewrite the screen, or make a line read other than it is.
pub fn escaped(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if needs_escape(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        // Bidirectional controls and invisible separators (Trojan Source).
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::escaped;

    #[test]
    fn terminal_controls_are_shown_not_obeyed() {
        assert_eq!(escaped("payments"), "payments");
        assert_eq!(escaped("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(escaped("x\ny\rz\u{7}"), "x\\u{a}y\\u{d}z\\u{7}");
        assert_eq!(escaped("\u{202e}gnp.exe"), "\\u{202e}gnp.exe");
        assert_eq!(escaped("c:\\temp"), "c:\\\\temp");
        assert_eq!(
            escaped("\u{9b}31m"),
            "\\u{9b}31m",
            "C1 control sequence introducer"
        );
        assert_eq!(escaped("café ☕"), "café ☕");
    }
}
