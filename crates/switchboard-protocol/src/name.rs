//! Validated names for clients and rooms.
//!
//! A name is the identity the hub stamps on every message, so it is checked
//! once, at the edge, and carried afterwards in a type that cannot hold an
//! invalid value ([`ClientName`], [`RoomName`]).

use std::fmt;
use std::sync::Arc;

/// The longest name accepted by default, in characters.
///
/// Long enough for e-mail-like identities, short enough that a name never
/// dominates the size of a small message.
pub const DEFAULT_MAX_NAME_CHARS: usize = 64;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty (or only white space).
    #[error("name is empty")]
    Empty,
    /// The name has more characters than allowed.
    #[error("name is longer than {max} characters")]
    TooLong {
        /// The limit that was exceeded.
        max: usize,
    },
    /// The name contains a control character (newline, tab, NUL, ...).
    #[error("name contains a control character")]
    ControlCharacter,
    /// The name starts or ends with white space.
    #[error("name starts or ends with white space")]
    Whitespace,
}

fn validate(raw: &str, max_chars: usize) -> Result<(), NameError> {
    if raw.trim().is_empty() {
        return Err(NameError::Empty);
    }
    if raw.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter);
    }
    if raw.trim() != raw {
        return Err(NameError::Whitespace);
    }
    if raw.chars().count() > max_chars {
        return Err(NameError::TooLong { max: max_chars });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(Arc<str>);

        impl $ty {
            /// Validates `raw` with the default length limit.
            ///
            /// # Errors
            /// Returns the first rule the name breaks.
            pub fn parse(raw: &str) -> Result<Self, NameError> {
                Self::parse_with_limit(raw, DEFAULT_MAX_NAME_CHARS)
            }

            /// Validates `raw`, allowing at most `max_chars` characters.
            ///
            /// # Errors
            /// Returns the first rule the name breaks.
            pub fn parse_with_limit(raw: &str, max_chars: usize) -> Result<Self, NameError> {
                validate(raw, max_chars)?;
                Ok(Self(Arc::from(raw)))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The name as a shared string: a reference count, not a copy.
            pub fn to_shared(&self) -> Arc<str> {
                Arc::clone(&self.0)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A client's name: unique among connected clients, stamped by the hub as
    /// the sender of everything the client sends.
    ///
    /// ```
    /// use switchboard_protocol::ClientName;
    /// assert!(ClientName::parse("alice").is_ok());
    /// assert!(ClientName::parse("C1我是客户端").is_ok());
    /// assert!(ClientName::parse("bad\nname").is_err());
    /// ```
    ClientName
);

name_type!(
    /// A room's name. Rooms are created on first join and vanish when empty.
    RoomName
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        let cases: &[(&str, Result<(), NameError>)] = &[
            ("alice", Ok(())),
            ("C1我是客户端", Ok(())),
            ("a b", Ok(())),
            ("", Err(NameError::Empty)),
            ("   ", Err(NameError::Empty)),
            (" alice", Err(NameError::Whitespace)),
            ("alice\t", Err(NameError::ControlCharacter)),
            ("a\u{0}b", Err(NameError::ControlCharacter)),
            ("a\u{7f}b", Err(NameError::ControlCharacter)),
        ];
        for (raw, expected) in cases {
            assert_eq!(ClientName::parse(raw).map(|_| ()), *expected, "{raw:?}");
        }
        let long = "x".repeat(DEFAULT_MAX_NAME_CHARS + 1);
        assert_eq!(
            ClientName::parse(&long).map(|_| ()),
            Err(NameError::TooLong { max: DEFAULT_MAX_NAME_CHARS })
        );
        // The limit counts characters, not bytes.
        let wide = "我".repeat(DEFAULT_MAX_NAME_CHARS);
        assert!(ClientName::parse(&wide).is_ok());
    }
}
