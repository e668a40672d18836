//! What a line typed into `switchboard connect` asks for. Pure: no I/O.

/// One stdin line, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    /// `@DST text`: a private message.
    Direct { to: &'a str, text: &'a str },
    /// `#ROOM text`: publish to a room.
    Publish { room: &'a str, text: &'a str },
    /// `/join ROOM`.
    Join(&'a str),
    /// `/leave ROOM`.
    Leave(&'a str),
    /// `/who`.
    Who,
    /// `/members ROOM`.
    Members(&'a str),
    /// `/send-file DST PATH` (DST `#ROOM` for a room).
    SendFile { to: &'a str, path: &'a str },
    /// Anything else: a message to the server.
    Server(&'a str),
    /// An empty line: nothing to send.
    Empty,
    /// A known command with missing arguments: the usage to show.
    Usage(&'static str),
}

/// Splits `rest` at its first space into a non-empty head and the text after it.
fn head_and_text(rest: &str) -> Option<(&str, &str)> {
    let (head, text) = rest.split_once(' ').unwrap_or((rest, ""));
    (!head.is_empty()).then_some((head, text))
}

/// Classifies one line (without its line ending).
pub(crate) fn parse(line: &str) -> Line<'_> {
    if line.trim().is_empty() {
        return Line::Empty;
    }
    if let Some(rest) = line.strip_prefix('@') {
        return match head_and_text(rest) {
            Some((to, text)) => Line::Direct { to, text },
            None => Line::Usage("@NAME text"),
        };
    }
    if let Some(rest) = line.strip_prefix('#') {
        return match head_and_text(rest) {
            Some((room, text)) => Line::Publish { room, text },
            None => Line::Usage("#ROOM text"),
        };
    }
    let (command, argument) = line.split_once(' ').unwrap_or((line, ""));
    let argument = argument.trim();
    match command {
        "/join" | "/leave" | "/members" if argument.is_empty() => Line::Usage(match command {
            "/join" => "/join ROOM",
            "/leave" => "/leave ROOM",
            _ => "/members ROOM",
        }),
        "/join" => Line::Join(argument),
        "/leave" => Line::Leave(argument),
        "/members" => Line::Members(argument),
        "/who" => Line::Who,
        "/send-file" => match argument.split_once(' ') {
            Some((to, path)) if !to.is_empty() && !path.trim().is_empty() => {
                Line::SendFile { to, path: path.trim() }
            }
            _ => Line::Usage("/send-file NAME|#ROOM PATH"),
        },
        _ => Line::Server(line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_table() {
        let cases: &[(&str, Line<'_>)] = &[
            ("@bob hi there", Line::Direct { to: "bob", text: "hi there" }),
            ("@bob", Line::Direct { to: "bob", text: "" }),
            ("@ hi", Line::Usage("@NAME text")),
            ("#lobby hello", Line::Publish { room: "lobby", text: "hello" }),
            ("#", Line::Usage("#ROOM text")),
            ("/join lobby", Line::Join("lobby")),
            ("/join  big room ", Line::Join("big room")),
            ("/join", Line::Usage("/join ROOM")),
            ("/leave lobby", Line::Leave("lobby")),
            ("/members lobby", Line::Members("lobby")),
            ("/who", Line::Who),
            ("/send-file bob /tmp/x y", Line::SendFile { to: "bob", path: "/tmp/x y" }),
            ("/send-file #r f", Line::SendFile { to: "#r", path: "f" }),
            ("/send-file bob", Line::Usage("/send-file NAME|#ROOM PATH")),
            ("hello server", Line::Server("hello server")),
            ("/unknown thing", Line::Server("/unknown thing")),
            ("   ", Line::Empty),
        ];
        for (line, expected) in cases {
            assert_eq!(&parse(line), expected, "{line:?}");
        }
    }
}
