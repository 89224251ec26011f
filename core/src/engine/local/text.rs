//! Turns the model's token bytes into streamable text: whole UTF-8 characters only, and stop
//! sequences cut out even when they span tokens.

/// What one push produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Text safe to emit now (may be empty while bytes or a possible stop prefix are held).
    Text(String),
    /// A stop sequence matched: this is the text before it; generation must end.
    Stopped(String),
}

/// Incremental decoder for token pieces.
#[derive(Debug, Default)]
pub struct TextStream {
    bytes: Vec<u8>,
    held: String,
    stops: Vec<String>,
}

impl TextStream {
    /// A stream that ends at any of `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            bytes: Vec::new(),
            held: String::new(),
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
        }
    }

    /// Adds one token's bytes.
    pub fn push(&mut self, piece: &[u8]) -> Pushed {
        self.bytes.extend_from_slice(piece);
        self.decode_bytes(false);
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let before = self.held[..pos].to_owned();
            self.held.clear();
            self.bytes.clear();
            return Pushed::Stopped(before);
        }
        // Hold back the longest tail that could still grow into a stop sequence.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(|&k| s.is_char_boundary(k))
                    .map(move |k| &s[..k])
            })
            .filter(|prefix| self.held.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_owned();
        self.held.drain(..cut);
        Pushed::Text(out)
    }

    /// Everything still held, at the end of generation. A trailing incomplete UTF-8 sequence (the
    /// token budget ran out mid-character) is dropped: it can never complete, and half a
    /// character is not text.
    pub fn finish(&mut self) -> String {
        self.decode_bytes(true);
        std::mem::take(&mut self.held)
    }

    fn decode_bytes(&mut self, flush: bool) {
        loop {
            match std::str::from_utf8(&self.bytes) {
                Ok(s) => {
                    self.held.push_str(s);
                    self.bytes.clear();
                    return;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    // SAFETY-free: the prefix is valid UTF-8 by construction.
                    self.held
                        .push_str(std::str::from_utf8(&self.bytes[..good]).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            self.held.push('\u{FFFD}');
                            self.bytes.drain(..good + bad);
                        }
                        None if flush => {
                            log::debug!(
                                "dropping {} bytes of an unfinished UTF-8 character",
                                self.bytes.len() - good
                            );
                            self.bytes.clear();
                            return;
                        }
                        None => {
                            self.bytes.drain(..good);
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&[u8]]) -> (Vec<String>, bool, String) {
        let mut t = TextStream::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut out = Vec::new();
        for p in pieces {
            match t.push(p) {
                Pushed::Text(s) => out.push(s),
                Pushed::Stopped(s) => {
                    out.push(s);
                    return (out, true, String::new());
                }
            }
        }
        let rest = t.finish();
        (out, false, rest)
    }

    #[test]
    fn splits_multibyte_characters_safely() {
        let e = "é€😀".as_bytes();
        let (out, _, rest) = run(&[], &[&e[..1], &e[1..3], &e[3..6], &e[6..]]);
        assert_eq!(out.concat() + &rest, "é€😀");
        for s in &out {
            assert!(std::str::from_utf8(s.as_bytes()).is_ok());
        }
        assert_eq!(out[0], "");
    }

    #[test]
    fn stop_spanning_tokens_is_never_emitted() {
        let (out, stopped, _) = run(&["END"], &[b"hello E", b"N", b"D more"]);
        assert!(stopped);
        assert_eq!(out.concat(), "hello ");
        assert!(!out.concat().contains('E'));
    }

    #[test]
    fn false_stop_prefix_is_released() {
        let (out, stopped, rest) = run(&["END"], &[b"an E", b"Nx"]);
        assert!(!stopped);
        assert_eq!(out.concat() + &rest, "an ENx");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let (out, stopped, _) = run(&["\n\n", "User:"], &[b"a User: b\n\nc"]);
        assert!(stopped);
        assert_eq!(out.concat(), "a ");
    }

    #[test]
    fn invalid_bytes_become_replacement() {
        let (out, _, rest) = run(&[], &[b"a\xffb", b"\xe2\x82"]);
        assert_eq!(out.concat() + &rest, "a\u{FFFD}b");
    }
}
