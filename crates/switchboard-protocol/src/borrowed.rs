//! Strings parsed out of a frame without copying them when they need no
//! unescaping (issue 6: an allocation per field per message, otherwise).

use std::borrow::Cow;

use serde::Deserialize;

/// A string borrowed from the frame unless it has escapes. serde borrows a
/// `Cow<str>` only when it is the field's whole type: an `Option<Cow<str>>`
/// is always copied, so optional fields wrap it in this.
#[derive(Deserialize)]
pub(crate) struct Borrowed<'a>(#[serde(borrow)] pub(crate) Cow<'a, str>);
