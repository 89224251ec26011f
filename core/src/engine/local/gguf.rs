//! GGUF validation in Rust, before llama.cpp sees the file.
//!
//! llama.cpp's reader is defensive, but a `GGML_ASSERT` anywhere on the load path aborts the whole
//! process, which inside a mobile app is a crash. So we walk the header ourselves, applying the
//! same checks as ggml's `gguf.cpp` (magic, version, counts, string and array lengths, tensor
//! shapes and types, offsets and alignment) plus one it leaves to the loader: the file must be long
//! enough to hold every tensor's data. Only the header is read; tensor data is never touched, so
//! validating a 4 GB model costs a few milliseconds.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

pub use crate::error::GgufError;

/// What a valid header says about the model.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct GgufInfo {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Number of tensors.
    pub tensor_count: u64,
    /// Number of metadata key/value pairs.
    pub kv_count: u64,
    /// `general.architecture`, if present.
    pub architecture: Option<String>,
    /// `general.name`, if present.
    pub name: Option<String>,
    /// `<arch>.context_length`, if present.
    pub context_length: Option<u64>,
    /// Whether `tokenizer.chat_template` is present.
    pub has_chat_template: bool,
    /// `<arch>.block_count` (layers), if present.
    pub block_count: Option<u64>,
    /// `<arch>.embedding_length`, if present.
    pub embedding_length: Option<u64>,
    /// `<arch>.attention.head_count_kv` (else `head_count`), if present.
    pub head_count_kv: Option<u64>,
    /// Width of one attention head's key plus value: `<arch>.attention.key_length` and
    /// `value_length`, else twice `embedding_length / head_count`.
    pub kv_width: Option<u64>,
    /// Tokens in the vocabulary (`tokenizer.ggml.tokens`), if present.
    pub n_vocab: Option<u64>,
    /// Bytes of tensor data.
    pub data_bytes: u64,
    /// Length of the file.
    pub file_len: u64,
}

const MAX_DIMS: u32 = 4;
const MAX_NAME: usize = 64;
const MAX_STRING: u64 = 1 << 30;
/// The longest metadata key (the GGUF specification's limit).
const MAX_KEY: u64 = 65_535;
/// The most bytes of a kept string value that are read (the rest is skipped).
const MAX_KEPT: u64 = 64 * 1024;

pub(crate) use crate::error::clip;
const MAX_ARRAY: u64 = 1 << 30;
const DEFAULT_ALIGNMENT: u64 = 32;

// GGUF value types.
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

fn scalar_size(t: u32) -> Option<u64> {
    match t {
        T_U8 | T_I8 | T_BOOL => Some(1),
        T_U16 | T_I16 => Some(2),
        T_U32 | T_I32 | T_F32 => Some(4),
        T_U64 | T_I64 | T_F64 => Some(8),
        _ => None,
    }
}

/// (bytes per block, elements per block) for a ggml tensor type, from ggml itself so the table
/// never drifts from the llama.cpp we link. `None` for out-of-range or removed types.
fn ggml_type_layout(t: u32) -> Option<(u64, u64)> {
    if t >= llama_cpp_sys_2::GGML_TYPE_COUNT {
        return None;
    }
    // SAFETY: `t` is in range, and these functions only index ggml's static type table.
    let (size, blck) = unsafe {
        (
            llama_cpp_sys_2::ggml_type_size(t as _),
            llama_cpp_sys_2::ggml_blck_size(t as _),
        )
    };
    if size == 0 || blck <= 0 {
        return None;
    }
    Some((size as u64, blck as u64))
}

/// A value we keep from the metadata, for the checks that need one.
enum Kept {
    Str(String),
    Uint(u64),
    Array { elem: u32, len: u64 },
    Other,
}

/// Where the validator reads from: a buffered file, or bytes in memory (fuzzing, tests).
trait Source: Read {
    /// Skips `n` bytes forward.
    fn skip_forward(&mut self, n: u64) -> std::io::Result<()>;
}

impl Source for BufReader<File> {
    fn skip_forward(&mut self, n: u64) -> std::io::Result<()> {
        self.seek_relative(i64::try_from(n).map_err(std::io::Error::other)?)
    }
}

impl Source for std::io::Cursor<&[u8]> {
    fn skip_forward(&mut self, n: u64) -> std::io::Result<()> {
        self.set_position(self.position().saturating_add(n));
        Ok(())
    }
}

struct Reader<'p, R: Source> {
    inner: R,
    pos: u64,
    len: u64,
    path: &'p Path,
}

impl<R: Source> Reader<'_, R> {
    fn truncated(&self, what: &str) -> GgufError {
        GgufError::TruncatedHeader {
            path: self.path.to_owned(),
            file_len: self.len,
            what: what.to_owned(),
        }
    }

    fn malformed(&self, problem: String) -> GgufError {
        GgufError::Malformed {
            path: self.path.to_owned(),
            offset: self.pos,
            problem,
        }
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        if self.len - self.pos < N as u64 {
            return Err(self.truncated(what));
        }
        let mut b = [0u8; N];
        self.inner
            .read_exact(&mut b)
            .map_err(|source| GgufError::Io {
                path: self.path.to_owned(),
                source: source.into(),
            })?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        self.bytes::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        self.bytes::<8>(what).map(u64::from_le_bytes)
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<(), GgufError> {
        if self.len - self.pos < n {
            return Err(self.truncated(what));
        }
        self.inner.skip_forward(n).map_err(|source| GgufError::Io {
            path: self.path.to_owned(),
            source: source.into(),
        })?;
        self.pos += n;
        Ok(())
    }

    /// Reads a length-prefixed string; `keep` decides whether its bytes are kept or skipped.
    /// A string's raw bytes, failing past `limit` bytes.
    fn raw_string(&mut self, what: &str, limit: u64) -> Result<Vec<u8>, GgufError> {
        let n = self.u64(what)?;
        if n > limit || n > self.len - self.pos {
            return Err(self.malformed(format!(
                "{what} is {n} bytes long, more than the limit ({limit}) or what is left in the file"
            )));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|source| GgufError::Io {
                path: self.path.to_owned(),
                source: source.into(),
            })?;
        self.pos += n;
        Ok(buf)
    }

    /// A string: `None` when not kept (skipped). A string longer than `limit` is malformed; a
    /// kept one is read only up to `MAX_KEPT` bytes (the rest skipped), so no length in the
    /// file decides how much memory is allocated.
    fn string(
        &mut self,
        what: &str,
        keep: bool,
        limit: Option<u64>,
    ) -> Result<Option<String>, GgufError> {
        let n = self.u64(what)?;
        if let Some(l) = limit.filter(|&l| n > l) {
            return Err(self.malformed(format!("{what} is {n} bytes long, the limit is {l}")));
        }
        if n > MAX_STRING {
            return Err(self.malformed(format!(
                "{what}: string length {n} exceeds the 1 GiB maximum"
            )));
        }
        if n > self.len - self.pos {
            return Err(self.malformed(format!(
                "{what}: string length {n} exceeds the {} bytes left in the file",
                self.len - self.pos
            )));
        }
        if !keep {
            self.skip(n, what)?;
            return Ok(None);
        }
        let kept = n.min(MAX_KEPT);
        let mut buf = vec![0u8; kept as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|source| GgufError::Io {
                path: self.path.to_owned(),
                source: source.into(),
            })?;
        self.pos += kept;
        if n > kept {
            self.skip(n - kept, what)?;
        }
        Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
    }
}

/// Validates the GGUF file at `path` without loading it.
#[allow(clippy::too_many_lines)] // one linear walk over the format, in file order
pub fn validate(path: &Path) -> Result<GgufInfo, GgufError> {
    let io = |source: std::io::Error| GgufError::Io {
        path: path.to_owned(),
        source: source.into(),
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(GgufError::NotAFile {
            path: path.to_owned(),
        });
    }
    let len = meta.len();
    if len == 0 {
        return Err(GgufError::Empty {
            path: path.to_owned(),
        });
    }
    let file = File::open(path).map_err(io)?;
    walk(Reader {
        inner: BufReader::with_capacity(1 << 16, file),
        pos: 0,
        len,
        path,
    })
}

/// Validates GGUF bytes held in memory (for fuzzing and tests); errors name `<memory>`.
pub fn validate_bytes(bytes: &[u8]) -> Result<GgufInfo, GgufError> {
    let path = Path::new("<memory>");
    if bytes.is_empty() {
        return Err(GgufError::Empty {
            path: path.to_owned(),
        });
    }
    walk(Reader {
        inner: std::io::Cursor::new(bytes),
        pos: 0,
        len: bytes.len() as u64,
        path,
    })
}

/// The walk over the format, in file order.
#[allow(clippy::too_many_lines)]
fn walk<R: Source>(mut r: Reader<'_, R>) -> Result<GgufInfo, GgufError> {
    let (len, path) = (r.len, r.path);
    if len < 4 {
        return Err(r.truncated("the magic bytes"));
    }
    let magic = r.bytes::<4>("the magic bytes")?;
    if &magic != b"GGUF" {
        return Err(GgufError::BadMagic {
            path: path.to_owned(),
            found: magic.to_vec(),
        });
    }
    let version = r.u32("the version")?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion {
            path: path.to_owned(),
            version,
        });
    }
    let tensor_count = r.u64("the tensor count")?;
    let kv_count = r.u64("the metadata count")?;
    // Each KV needs at least 8 (key length) + 1 (key) + 4 (type) + 1 bytes, each tensor info at
    // least 8 + 1 + 4 + 8 + 4 + 8: a count the file cannot possibly hold is corrupt.
    if kv_count > (len - r.pos) / 14 {
        return Err(r.malformed(format!(
            "metadata count {kv_count} cannot fit in a {len}-byte file"
        )));
    }
    if tensor_count > (len - r.pos) / 33 {
        return Err(r.malformed(format!(
            "tensor count {tensor_count} cannot fit in a {len}-byte file"
        )));
    }

    let mut keys = HashSet::new();
    let mut kept: Vec<(String, Kept)> = Vec::new();
    for i in 0..kv_count {
        let key = r
            .string(&format!("metadata key {i}"), true, Some(MAX_KEY))?
            .unwrap_or_default();
        let k = clip(&key);
        if key.is_empty() {
            return Err(r.malformed(format!("metadata key {i} is empty")));
        }
        if !keys.insert(key.clone()) {
            return Err(r.malformed(format!("duplicate metadata key '{k}'")));
        }
        let what = format!("the value of '{k}'");
        let ty = r.u32(&what)?;
        let value = match ty {
            T_STRING => {
                let keep = key.starts_with("general.") || key == "tokenizer.ggml.model";
                match r.string(&what, keep, None)? {
                    Some(s) => Kept::Str(s),
                    None => Kept::Other,
                }
            }
            T_ARRAY => {
                let elem = r.u32(&what)?;
                let n = r.u64(&what)?;
                if n > MAX_ARRAY {
                    return Err(r.malformed(format!("'{k}': array length {n} exceeds the maximum")));
                }
                if elem == T_STRING && key == "tokenizer.ggml.tokens" {
                    // llama.cpp asserts (aborting the process) when two tokens are the same
                    // string: its token-to-id map would be smaller than the vocabulary. It reads
                    // them as C strings, so a token ends at its first NUL byte.
                    let mut seen = HashSet::with_capacity(n.min(1 << 18) as usize);
                    for t in 0..n {
                        let mut token = r.raw_string(&what, MAX_KEY)?;
                        if let Some(nul) = token.iter().position(|&b| b == 0) {
                            token.truncate(nul);
                        }
                        if !seen.insert(token) {
                            return Err(r.malformed(format!(
                                "tokenizer.ggml.tokens: token {t} repeats an earlier token"
                            )));
                        }
                    }
                } else if elem == T_STRING {
                    for _ in 0..n {
                        r.string(&what, false, None)?;
                    }
                } else if let Some(sz) = scalar_size(elem) {
                    let bytes = n
                        .checked_mul(sz)
                        .ok_or_else(|| r.malformed(format!("'{k}': array size overflows")))?;
                    r.skip(bytes, &what)?;
                } else {
                    return Err(
                        r.malformed(format!("'{k}': array has invalid element type {elem}"))
                    );
                }
                Kept::Array { elem, len: n }
            }
            t => {
                let sz = scalar_size(t)
                    .ok_or_else(|| r.malformed(format!("'{k}' has invalid GGUF type {t}")))?;
                if t == T_U32 {
                    Kept::Uint(u64::from(r.u32(&what)?))
                } else if t == T_U64 {
                    Kept::Uint(r.u64(&what)?)
                } else {
                    r.skip(sz, &what)?;
                    Kept::Other
                }
            }
        };
        if key.starts_with("general.")
            || key.starts_with("tokenizer.")
            || key.ends_with(".context_length")
            || key.ends_with(".block_count")
            || key.ends_with(".embedding_length")
            || key.contains(".attention.")
        {
            kept.push((key, value));
        }
    }

    let get = |k: &str| kept.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let alignment = match get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Kept::Uint(a)) if a.is_power_of_two() => *a,
        Some(Kept::Uint(a)) => {
            return Err(r.malformed(format!("general.alignment {a} is not a power of 2")))
        }
        Some(_) => return Err(r.malformed("general.alignment must be a u32".into())),
    };
    // The metadata llama.cpp reads through asserting accessors must have the right types.
    let tokens_len = match get("tokenizer.ggml.tokens") {
        None => None,
        Some(Kept::Array {
            elem: T_STRING,
            len,
        }) => Some(*len),
        Some(_) => {
            return Err(r.malformed("tokenizer.ggml.tokens must be an array of strings".into()))
        }
    };
    for (key, want, name) in [
        ("tokenizer.ggml.scores", T_F32, "f32"),
        ("tokenizer.ggml.token_type", T_I32, "i32"),
        ("tokenizer.ggml.merges", T_STRING, "string"),
    ] {
        let Some(value) = get(key) else { continue };
        let Kept::Array { elem, len } = value else {
            return Err(r.malformed(format!("{key} must be an array of {name}")));
        };
        let type_ok = *elem == want || (key.ends_with("scores") && *elem == T_I32);
        if !type_ok {
            return Err(r.malformed(format!("{key} must be an array of {name}")));
        }
        // llama.cpp indexes these by token id.
        if key != "tokenizer.ggml.merges" && tokens_len.is_some_and(|t| *len < t) {
            return Err(r.malformed(format!(
                "{key} has {len} entries but there are {} tokens",
                tokens_len.unwrap_or(0)
            )));
        }
    }
    let string_of = |k: &str| match get(k) {
        Some(Kept::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let architecture = string_of("general.architecture");
    if get("general.architecture").is_some() && architecture.is_none() {
        return Err(r.malformed("general.architecture must be a string".into()));
    }
    let context_length =
        architecture
            .as_ref()
            .and_then(|a| match get(&format!("{a}.context_length")) {
                Some(Kept::Uint(n)) => Some(*n),
                _ => None,
            });

    // llama.cpp asserts 0 < block_count <= LLAMA_MAX_LAYERS (512) while loading.
    if let Some(a) = &architecture {
        match get(&format!("{a}.block_count")) {
            None => {}
            Some(Kept::Uint(n)) if (1..=512).contains(n) => {}
            Some(Kept::Uint(n)) => {
                return Err(r.malformed(format!(
                    "{}.block_count {n} is not between 1 and 512",
                    clip(a)
                )))
            }
            Some(_) => {
                return Err(r.malformed(format!(
                    "{}.block_count must be an unsigned integer",
                    clip(a)
                )))
            }
        }
    }

    // Tensor infos.
    let mut names = HashSet::new();
    // Grown as tensors are read: the count was only checked against a loose bound (33 bytes per
    // tensor), which a multi-gigabyte file satisfies for millions of tensors.
    let mut tensors: Vec<(String, u64, u64)> = Vec::with_capacity(tensor_count.min(1024) as usize);
    for i in 0..tensor_count {
        let name = r
            .string(
                &format!("tensor {i}'s name"),
                true,
                Some(MAX_NAME as u64 - 1),
            )?
            .unwrap_or_default();
        if name.len() >= MAX_NAME {
            return Err(r.malformed(format!(
                "tensor {i}'s name is {} bytes, the limit is {}",
                name.len(),
                MAX_NAME - 1
            )));
        }
        if !names.insert(name.clone()) {
            return Err(r.malformed(format!("duplicate tensor name '{name}'")));
        }
        let what = format!("tensor '{name}'");
        let n_dims = r.u32(&what)?;
        if n_dims > MAX_DIMS {
            return Err(r.malformed(format!(
                "tensor '{name}' has {n_dims} dimensions, the limit is {MAX_DIMS}"
            )));
        }
        let mut ne = [1u64; MAX_DIMS as usize];
        for d in ne.iter_mut().take(n_dims as usize) {
            *d = r.u64(&what)?;
            if *d > i64::MAX as u64 {
                return Err(r.malformed(format!("tensor '{name}' has a negative dimension")));
            }
        }
        let nelements = ne
            .iter()
            .try_fold(1u64, |acc, &d| {
                acc.checked_mul(d).filter(|n| i64::try_from(*n).is_ok())
            })
            .ok_or_else(|| r.malformed(format!("tensor '{name}' shape {ne:?} overflows")))?;
        let ty = r.u32(&what)?;
        let (type_size, blck) = ggml_type_layout(ty)
            .ok_or_else(|| r.malformed(format!("tensor '{name}' has invalid ggml type {ty}")))?;
        if ne[0] % blck != 0 {
            return Err(r.malformed(format!(
                "tensor '{name}' of type {ty} has {} elements per row, not a multiple of its block size {blck}",
                ne[0]
            )));
        }
        let nbytes = (nelements / blck)
            .checked_mul(type_size)
            .ok_or_else(|| r.malformed(format!("tensor '{name}' size overflows")))?;
        let offset = r.u64(&what)?;
        tensors.push((name, offset, nbytes));
    }

    // Tensor data starts at the next multiple of the alignment; each tensor follows the previous
    // one, padded to the alignment.
    let data_start = r.pos.div_ceil(alignment) * alignment;
    let mut expected = 0u64;
    for (name, offset, nbytes) in &tensors {
        if *offset != expected {
            return Err(r.malformed(format!(
                "tensor '{name}' has data offset {offset}, expected {expected}"
            )));
        }
        let padded = nbytes
            .checked_add(alignment - 1)
            .map(|n| n / alignment * alignment)
            .ok_or_else(|| r.malformed(format!("tensor '{name}' size overflows after padding")))?;
        expected = expected
            .checked_add(padded)
            .ok_or_else(|| r.malformed("total tensor size overflows".into()))?;
    }
    // The last tensor need not be padded at the end of the file.
    let data_bytes = tensors.last().map_or(0, |(_, off, nbytes)| off + nbytes);
    // With no tensor data there is no data section to pad to (gguf.cpp only seeks there).
    let needed = if data_bytes == 0 {
        r.pos
    } else {
        data_start.saturating_add(data_bytes)
    };
    if needed > len {
        return Err(GgufError::TruncatedData {
            path: path.to_owned(),
            needed,
            file_len: len,
            missing: needed - len,
        });
    }

    let shape = shape(&kept, architecture.as_deref());
    Ok(GgufInfo {
        block_count: shape.block_count,
        embedding_length: shape.embedding_length,
        head_count_kv: shape.head_count_kv,
        kv_width: shape.kv_width,
        n_vocab: shape.n_vocab,
        version,
        tensor_count,
        kv_count,
        name: string_of("general.name"),
        architecture,
        context_length,
        has_chat_template: get("tokenizer.chat_template").is_some(),
        data_bytes,
        file_len: len,
    })
}

/// What the header says of the model's shape, for the memory estimate (each `None` when absent).
struct Shape {
    block_count: Option<u64>,
    embedding_length: Option<u64>,
    head_count_kv: Option<u64>,
    kv_width: Option<u64>,
    n_vocab: Option<u64>,
}

fn shape(kept: &[(String, Kept)], architecture: Option<&str>) -> Shape {
    let get = |k: &str| kept.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let uint = |k: &str| match architecture.and_then(|a| get(&format!("{a}.{k}"))) {
        Some(Kept::Uint(n)) => Some(*n),
        _ => None,
    };
    let head_count = uint("attention.head_count").filter(|&n| n > 0);
    let embedding_length = uint("embedding_length");
    let kv_width = match (uint("attention.key_length"), uint("attention.value_length")) {
        (Some(k), Some(v)) => Some(k + v),
        _ => embedding_length.zip(head_count).map(|(e, h)| 2 * (e / h)),
    };
    Shape {
        block_count: uint("block_count"),
        embedding_length,
        head_count_kv: uint("attention.head_count_kv").or(head_count),
        kv_width,
        n_vocab: match get("tokenizer.ggml.tokens") {
            Some(Kept::Array { len, .. }) => Some(*len),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Builds a small well-formed GGUF: a few KVs and two F32 tensors.
    fn tiny_gguf() -> Vec<u8> {
        fn s(out: &mut Vec<u8>, v: &str) {
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes()); // tensors
        b.extend_from_slice(&2u64.to_le_bytes()); // kvs
        s(&mut b, "general.architecture");
        b.extend_from_slice(&T_STRING.to_le_bytes());
        s(&mut b, "llama");
        s(&mut b, "llama.context_length");
        b.extend_from_slice(&T_U32.to_le_bytes());
        b.extend_from_slice(&2048u32.to_le_bytes());
        for (name, off) in [("a", 0u64), ("b", 32)] {
            s(&mut b, name);
            b.extend_from_slice(&1u32.to_le_bytes());
            b.extend_from_slice(&4u64.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes()); // F32
            b.extend_from_slice(&off.to_le_bytes());
        }
        while b.len() % 32 != 0 {
            b.push(0);
        }
        b.extend_from_slice(&[0u8; 48]); // 16 bytes + 16 pad + 16 bytes
        b
    }

    /// `tiny_gguf` with more KVs: (key, GGUF type, value bytes).
    fn with_kvs(extra: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
        let mut b = tiny_gguf();
        let kvs = 2 + extra.len() as u64;
        b[16..24].copy_from_slice(&kvs.to_le_bytes());
        // Insert after the two existing KVs (before the tensor infos).
        let mut at = 24;
        for _ in 0..2 {
            let klen = u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize;
            at += 8 + klen;
            let ty = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
            at += 4;
            at += if ty == T_STRING {
                8 + u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize
            } else {
                4
            };
        }
        let mut ins = Vec::new();
        for (k, ty, v) in extra {
            ins.extend_from_slice(&(k.len() as u64).to_le_bytes());
            ins.extend_from_slice(k.as_bytes());
            ins.extend_from_slice(&ty.to_le_bytes());
            ins.extend_from_slice(v);
        }
        b.splice(at..at, ins);
        // Re-pad the tensor data start to the alignment.
        let infos_end = b.len() - 48;
        let mut head = b[..infos_end].to_vec();
        while head.last() == Some(&0) && head.len() % 32 != 0 {
            head.pop();
        }
        let unpadded = head.len();
        let infos: Vec<u8> = b[..infos_end].to_vec();
        let mut out = infos[..unpadded.max(infos_end - (infos_end % 32))].to_vec();
        out.truncate(unpadded);
        while out.len() % 32 != 0 {
            out.push(0);
        }
        out.extend_from_slice(&[0u8; 48]);
        out
    }

    fn strings(items: &[&[u8]]) -> Vec<u8> {
        let mut v = T_STRING.to_le_bytes().to_vec();
        v.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for it in items {
            v.extend_from_slice(&(it.len() as u64).to_le_bytes());
            v.extend_from_slice(it);
        }
        v
    }

    #[test]
    fn what_llama_cpp_would_assert_on_is_refused_first() {
        let check = |extra: &[(&str, u32, Vec<u8>)]| {
            let f = write(&with_kvs(extra));
            validate(f.path()).map(|_| ()).map_err(|e| e.to_string())
        };
        let tokens = |t: &[&[u8]]| ("tokenizer.ggml.tokens", T_ARRAY, strings(t));
        check(&[tokens(&[b"a", b"b"])]).expect("distinct tokens");
        let e = check(&[tokens(&[b"a", b"b", b"a"])]).unwrap_err();
        assert!(e.contains("token 2 repeats"), "{e}");
        // llama.cpp reads tokens as C strings: "b\0x" is "b".
        let e = check(&[tokens(&[b"a", b"b\0x", b"b"])]).unwrap_err();
        assert!(e.contains("token 2 repeats"), "{e}");
        let block = |n: u32| ("llama.block_count", T_U32, n.to_le_bytes().to_vec());
        check(&[block(30)]).expect("30 layers");
        for n in [0, 513, 29_982] {
            let e = check(&[block(n)]).unwrap_err();
            assert!(e.contains("block_count"), "{e}");
        }
        // A key longer than the specification allows: refused, in a short one-line message.
        let long = "k\n".repeat(50_000);
        let e = check(&[(long.as_str(), T_U32, 1u32.to_le_bytes().to_vec())]).unwrap_err();
        assert!(
            e.contains("limit is 65535") && e.len() < 400 && !e.contains('\n'),
            "{e}"
        );
    }

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn accepts_well_formed() {
        let f = write(&tiny_gguf());
        let info = validate(f.path()).unwrap();
        assert_eq!(info.architecture.as_deref(), Some("llama"));
        assert_eq!(info.context_length, Some(2048));
        assert_eq!(info.tensor_count, 2);
    }

    #[test]
    fn rejects_every_truncation() {
        let full = tiny_gguf();
        for cut in 0..full.len() - 16 {
            let f = write(&full[..cut]);
            let err = validate(f.path()).expect_err(&format!("cut at {cut} must fail"));
            assert!(
                err.to_string().contains(&f.path().display().to_string()),
                "{err}"
            );
        }
    }

    #[test]
    fn rejects_bad_magic_version_and_dirs() {
        let mut b = tiny_gguf();
        b[0] = b'X';
        assert!(matches!(
            validate(write(&b).path()),
            Err(GgufError::BadMagic { .. })
        ));
        let mut b = tiny_gguf();
        b[4] = 1;
        assert!(matches!(
            validate(write(&b).path()),
            Err(GgufError::UnsupportedVersion { version: 1, .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            validate(dir.path()),
            Err(GgufError::NotAFile { .. })
        ));
        assert!(matches!(
            validate(write(b"").path()),
            Err(GgufError::Empty { .. })
        ));
        assert!(matches!(
            validate(Path::new("/no/such/model.gguf")),
            Err(GgufError::Io { .. })
        ));
    }

    #[test]
    fn rejects_absurd_counts_and_lengths() {
        let mut b = tiny_gguf();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            validate(write(&b).path()),
            Err(GgufError::Malformed { .. })
        ));
        // The first key's length, made huge.
        let mut b = tiny_gguf();
        b[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let err = validate(write(&b).path()).unwrap_err();
        assert!(err.to_string().contains("the limit is 65535"), "{err}");
    }

    /// A GGUF with one tokenizer array of `elem` type and `len` entries, beside `n_tokens` tokens.
    fn with_token_arrays(n_tokens: u64, key: &str, elem: u32, len: u64) -> Vec<u8> {
        fn s(out: &mut Vec<u8>, v: &str) {
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        s(&mut b, "tokenizer.ggml.tokens");
        b.extend_from_slice(&T_ARRAY.to_le_bytes());
        b.extend_from_slice(&T_STRING.to_le_bytes());
        b.extend_from_slice(&n_tokens.to_le_bytes());
        for i in 0..n_tokens {
            s(&mut b, &format!("t{i}"));
        }
        s(&mut b, key);
        b.extend_from_slice(&T_ARRAY.to_le_bytes());
        b.extend_from_slice(&elem.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b.extend(std::iter::repeat_n(
            0u8,
            (len * scalar_size(elem).unwrap_or(0)) as usize,
        ));
        b
    }

    #[test]
    fn tokenizer_arrays_are_type_and_length_checked() {
        let ok = with_token_arrays(3, "tokenizer.ggml.token_type", T_I32, 3);
        assert!(validate(write(&ok).path()).is_ok());
        let ok = with_token_arrays(3, "tokenizer.ggml.scores", T_F32, 3);
        assert!(validate(write(&ok).path()).is_ok());
        let wrong_type = with_token_arrays(3, "tokenizer.ggml.token_type", T_U8, 3);
        let err = validate(write(&wrong_type).path()).unwrap_err().to_string();
        assert!(err.contains("must be an array of i32"), "{err}");
        let short = with_token_arrays(3, "tokenizer.ggml.scores", T_F32, 2);
        let err = validate(write(&short).path()).unwrap_err().to_string();
        assert!(err.contains("2 entries but there are 3 tokens"), "{err}");
    }

    #[test]
    fn random_bytes_never_panic() {
        // Byte flips and truncations of valid files (not random bytes, whose random counts all
        // fail the first check): the mutants must reach many checks, and none may panic.
        let bases = [
            tiny_gguf(),
            with_token_arrays(3, "tokenizer.ggml.scores", T_F32, 3),
        ];
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut outcomes = std::collections::BTreeSet::new();
        for i in 0..600 {
            let mut b = bases[i % bases.len()].clone();
            for _ in 0..=next() % 3 {
                let at = 4 + next() as usize % (b.len() - 4);
                b[at] = next() as u8;
            }
            if next() % 4 == 0 {
                let keep = 8 + next() as usize % (b.len() - 8);
                b.truncate(keep);
            }
            let outcome = match validate(write(&b).path()) {
                Ok(_) => "ok".to_owned(),
                Err(e) => format!("{e:?}")
                    .split([' ', '{', '('])
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            };
            outcomes.insert(outcome);
        }
        assert!(
            outcomes.len() >= 3,
            "the mutants reach several checks: {outcomes:?}"
        );
    }
}
