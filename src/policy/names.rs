//! Validation of the names and texts that come from outside, with errors naming the field.

use std::fmt;

/// A request field and what is wrong with it: becomes `INVALID_ARGUMENT` at the boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for FieldError {}

/// Longest identifier we accept (integration ids, tool names, person ids, request ids).
pub const MAX_ID_BYTES: usize = 256;
/// Longest free text (descriptions, display names, comments).
pub const MAX_TEXT_BYTES: usize = 16 * 1024;

/// An identifier: 1 to 256 bytes, no white space and no control characters.
///
/// Tool names come in every style (`get_user`, `users.list`, `Get-MgUser`,
/// `chat.postMessage`), so any other printable character is accepted.
pub fn check_id(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(FieldError::new(
            field,
            format!("is {} bytes long; at most {MAX_ID_BYTES}", value.len()),
        ));
    }
    // Nearly every id is printable ASCII: that one pass decides it. Anything else is
    // checked character by character.
    if value.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok(());
    }
    if let Some(c) = value.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(FieldError::new(
            field,
            format!("must not contain white space or control characters (found {c:?})"),
        ));
    }
    Ok(())
}

/// Like [`check_id`], but empty is allowed (an optional reference).
pub fn check_optional_id(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        Ok(())
    } else {
        check_id(field, value)
    }
}

/// Free text: at most 16 KiB and no NUL (which some stores and logs mangle).
pub fn check_text(field: &str, value: &str) -> Result<(), FieldError> {
    if value.len() > MAX_TEXT_BYTES {
        return Err(FieldError::new(
            field,
            format!("is {} bytes long; at most {MAX_TEXT_BYTES}", value.len()),
        ));
    }
    if value.contains('\0') {
        return Err(FieldError::new(field, "must not contain NUL characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_every_naming_style() {
        for name in [
            "get_user",
            "users.list",
            "Get-MgUser",
            "chat.postMessage",
            "a/b:c",
        ] {
            assert_eq!(check_id("tool_name", name), Ok(()), "{name}");
        }
    }

    #[test]
    fn ids_reject_empty_space_control_and_overlong() {
        assert_eq!(
            check_id("tool_name", "").unwrap_err().to_string(),
            "tool_name: is required"
        );
        assert!(check_id("tool_name", "get user").is_err());
        assert!(check_id("tool_name", "get\nuser").is_err());
        assert!(check_id("tool_name", &"a".repeat(MAX_ID_BYTES + 1)).is_err());
        assert!(check_id("tool_name", &"a".repeat(MAX_ID_BYTES)).is_ok());
    }

    proptest::proptest! {
        /// The printable-ASCII shortcut accepts exactly what the character rule accepts.
        #[test]
        fn ids_are_accepted_exactly_when_nonempty_short_and_free_of_space_and_controls(
            value in "(?s).{0,40}|[!-~]{1,40}|[ -~\u{85}\u{a0}\u{2028}\u{7f}é]{0,40}"
        ) {
            let expected = !value.is_empty()
                && value.len() <= MAX_ID_BYTES
                && !value.chars().any(|c| c.is_whitespace() || c.is_control());
            proptest::prop_assert_eq!(check_id("tool_name", &value).is_ok(), expected);
        }
    }

    #[test]
    fn text_rejects_nul_and_overlong() {
        assert!(check_text("comment", "fine, approved").is_ok());
        assert!(check_text("comment", "a\0b").is_err());
        assert!(check_text("comment", &"x".repeat(MAX_TEXT_BYTES + 1)).is_err());
    }
}
