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

/// Identifier types: each a checked [`check_id`] value, made only by `parse` where the value
/// enters (a request field, a flag), so code that takes one need not check it again, and
/// one kind of id cannot be passed where another is meant.
macro_rules! id_types {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// `value` as the field `field`, or what is wrong with it.
            pub fn parse(field: &str, value: impl Into<String>) -> Result<Self, FieldError> {
                let value = value.into();
                check_id(field, &value)?;
                Ok($name(value))
            }

            /// Like `parse`, but empty is `None` (an optional reference).
            pub fn parse_optional(
                field: &str,
                value: impl Into<String>,
            ) -> Result<Option<Self>, FieldError> {
                let value = value.into();
                if value.is_empty() {
                    return Ok(None);
                }
                Self::parse(field, value).map(Some)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}

id_types! {
    /// A tenant (from `keys create --tenant`; requests carry it in their key).
    TenantId;
    /// An integration of a tenant.
    IntegrationId;
    /// A tool of an integration.
    ToolName;
    /// An approval.
    ApprovalId;
    /// An agent backend's name for one intended execution of a call.
    RequestId;
    /// A person of the tenant's directory.
    PersonId;
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
    fn an_id_type_is_made_only_from_a_checked_value() {
        assert_eq!(
            ToolName::parse("tool_name", "get_user").unwrap().as_str(),
            "get_user"
        );
        let err = ApprovalId::parse("approval_id", "a b").unwrap_err();
        assert_eq!(err.field, "approval_id");
        assert!(RequestId::parse("request_id", "").is_err(), "required");
        assert_eq!(RequestId::parse_optional("request_id", "").unwrap(), None);
        assert!(PersonId::parse_optional("requester_id", "\n").is_err());
    }

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
