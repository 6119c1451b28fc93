//! The bodies of the fuzz targets, as plain functions of the input bytes: each `run` must
//! never panic, and panics (an `assert!`) when a property does not hold.
//!
//! libFuzzer drives them through `../fuzz_targets/*.rs` (nightly, `cargo fuzz`); the replay
//! test (`tests/replay.rs`, stable) runs every committed seed and regression input through
//! them. Inputs with several fields use [`Fields`] (fields separated by `\n`, the last one
//! takes the rest of the input), so seeds can be written by hand and libFuzzer's
//! dictionaries (`../dict/`) work field by field; `examples/seeds.rs` writes the seed corpora.

pub mod form;
pub mod lambda_event;
pub mod lambda_fields;
pub mod payload;
pub mod signature;
pub mod sqlite_rows;
pub mod stored_json;
pub mod twiml;

/// The targets, in the order `../run.sh` runs them (also the seed and regression directories).
pub const TARGETS: [&str; 8] = [
    "form",
    "signature",
    "lambda_event",
    "lambda_fields",
    "payload",
    "twiml",
    "stored_json",
    "sqlite_rows",
];

/// Run the target named `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "form" => form::run(data),
        "signature" => signature::run(data),
        "lambda_event" => lambda_event::run(data),
        "lambda_fields" => lambda_fields::run(data),
        "payload" => payload::run(data),
        "twiml" => twiml::run(data),
        "stored_json" => stored_json::run(data),
        "sqlite_rows" => sqlite_rows::run(data),
        other => panic!("no fuzz target named {other:?}"),
    }
}

/// Fields of an input: `sep`-separated, the last one whatever is left.
pub struct Fields<'a> {
    rest: Option<&'a [u8]>,
    sep: u8,
}

impl<'a> Fields<'a> {
    pub fn new(data: &'a [u8], sep: u8) -> Self {
        Self {
            rest: Some(data),
            sep,
        }
    }

    /// The next field (empty once the input is used up).
    pub fn next_bytes(&mut self) -> &'a [u8] {
        let Some(rest) = self.rest else {
            return b"";
        };
        match rest.iter().position(|b| *b == self.sep) {
            Some(i) => {
                self.rest = Some(&rest[i + 1..]);
                &rest[..i]
            }
            None => {
                self.rest = None;
                rest
            }
        }
    }

    /// The next field as text (invalid UTF-8 replaced, so every input still does something).
    pub fn next_str(&mut self) -> String {
        String::from_utf8_lossy(self.next_bytes()).into_owned()
    }

    /// Everything not taken yet, separators included.
    pub fn rest(&mut self) -> &'a [u8] {
        self.rest.take().unwrap_or(b"")
    }

    pub fn is_done(&self) -> bool {
        self.rest.is_none()
    }
}

/// Join fields the way [`Fields`] splits them (for writing seeds).
pub fn join_fields<I, F>(fields: I, sep: u8) -> Vec<u8>
where
    I: IntoIterator<Item = F>,
    F: AsRef<[u8]>,
{
    let mut out = Vec::new();
    for (i, f) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(sep);
        }
        out.extend_from_slice(f.as_ref());
    }
    out
}

/// A small deterministic choice from a byte (for flags kept in the first byte of an input).
pub fn bit(flags: u8, n: u8) -> bool {
    flags >> n & 1 == 1
}
