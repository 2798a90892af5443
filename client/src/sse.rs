//! A Server-Sent Events parser (the WHATWG event-stream format): bytes in, whole events out.
//! It owns no I/O; the watch stream feeds it whatever chunks arrive.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// `event:` (empty means `message`).
    pub event: String,
    /// `id:` of this event, if it set one.
    pub id: Option<String>,
    /// The `data:` lines joined by newlines.
    pub data: String,
}

/// Incremental parser; keeps an incomplete line between chunks.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The previous byte was a CR (a CRLF split across chunks must not end two lines).
    after_cr: bool,
    current: SseEvent,
    has_data: bool,
}

/// Longest line accepted; a longer one is cut (the server never sends one).
const MAX_LINE_BYTES: usize = 64 << 20;

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk; returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &b in chunk {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(e) = self.line_done(&line) {
                        out.push(e);
                    }
                }
                _ => {
                    self.after_cr = false;
                    if self.line.len() < MAX_LINE_BYTES {
                        self.line.push(b);
                    }
                }
            }
        }
        out
    }

    fn line_done(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            // Blank line: dispatch.
            let e = std::mem::take(&mut self.current);
            let had = std::mem::replace(&mut self.has_data, false);
            return had.then_some(e);
        }
        if line[0] == b':' {
            return None; // comment (keep-alive)
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (&*text, ""),
        };
        match field {
            "event" => self.current.event = value.to_owned(),
            "id" if !value.contains('\0') => self.current.id = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_across_chunks_come_out_whole() {
        let stream = b": heartbeat\n\nevent: change\nid: 3:0\ndata: {\"a\":1}\n\nevent: resync\r\nid: 4\r\ndata: x\r\ndata: y\r\n\r\n";
        for split in 0..stream.len() {
            let mut p = SseParser::new();
            let mut got = p.feed(&stream[..split]);
            got.extend(p.feed(&stream[split..]));
            assert_eq!(
                got,
                vec![
                    SseEvent {
                        event: "change".into(),
                        id: Some("3:0".into()),
                        data: "{\"a\":1}".into()
                    },
                    SseEvent {
                        event: "resync".into(),
                        id: Some("4".into()),
                        data: "x\ny".into()
                    },
                ],
                "split at {split}"
            );
        }
    }
}
