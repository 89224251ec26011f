//! The model manager: a catalog of known models, resumable verified downloads, and a models
//! folder with a storage quota. The folder keeps a small manifest (`edgecascade-models.json`)
//! of the files it verified, their sha256 and when each was last used, for `models list` and
//! for evicting the least recently used model when a pull needs room.

pub mod catalog;
pub mod pull;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use catalog::{CatalogEntry, CATALOG};
pub use pull::{
    pull, pull_with, PullError, PullEvents, PullOutcome, PullProgress, PullRequest, PullRetry,
    ATTEMPTS_WITHOUT_PROGRESS,
};

/// The manifest's file name in a models folder.
pub const MANIFEST: &str = "edgecascade-models.json";

/// Room kept free on the disk beyond what a pull needs.
const DISK_MARGIN: u64 = 64 << 20;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Manifest {
    files: BTreeMap<String, Recorded>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Recorded {
    sha256: String,
    size: u64,
    last_used: f64,
    /// The file's modification time when it was hashed, in integer nanoseconds since the Unix
    /// epoch (absent in older manifests, whose `mtime` in float seconds is ignored: serde_json
    /// reads a 19-digit float back only to within a unit in the last place, so a float
    /// stamp did not always compare equal to itself after a round trip).
    #[serde(default)]
    mtime_ns: Option<u64>,
}

/// A file's size and modification time (nanoseconds since the Unix epoch).
fn stamp(path: &Path) -> Option<(u64, u64)> {
    let md = std::fs::metadata(path).ok()?;
    let t = md
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some((md.len(), u64::try_from(t.as_nanos()).ok()?))
}

/// A model file in a models folder.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct StoredModel {
    /// The file.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Its catalog name, when its hash is a catalog entry's.
    pub catalog_name: Option<String>,
    /// The sha256 recorded when it was verified.
    pub sha256: Option<String>,
    /// Verified by a pull (or `verify`) and unchanged in size since.
    pub verified: bool,
    /// Last use recorded (Unix seconds), if any.
    pub last_used: Option<f64>,
}

/// A models folder.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The folder `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST)
    }

    fn read(&self) -> Manifest {
        std::fs::read_to_string(self.manifest_path())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// Reads the manifest, lets `change` edit it, and writes it back if `change` says it
    /// changed: under an exclusive lock on `MANIFEST.lock`, so that the app and the CLI (or two
    /// threads) updating one folder never lose each other's entries, and through a temporary
    /// file of this writer's own, renamed over the manifest, so that a reader never sees half
    /// of it. A manifest that cannot be updated is only a lost hint: it is logged.
    fn update(&self, change: impl FnOnce(&mut Manifest) -> bool) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = self.manifest_path();
        let result = (|| -> std::io::Result<()> {
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(self.dir.join(format!("{MANIFEST}.lock")))?;
            lock.lock()?;
            let mut m = self.read();
            if !change(&mut m) {
                return Ok(());
            }
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = self
                .dir
                .join(format!("{MANIFEST}.{}.{n}.tmp", std::process::id()));
            let text = serde_json::to_string_pretty(&m).map_err(std::io::Error::other)?;
            let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path));
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            written
            // The lock is released when `lock` closes.
        })();
        if let Err(e) = result {
            log::warn!("could not update {}: {e}", path.display());
        }
    }

    fn key(path: &Path) -> String {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Records a verified file.
    pub fn record(&self, path: &Path, sha256: &str, size: u64) {
        let entry = Recorded {
            sha256: sha256.to_owned(),
            size,
            last_used: crate::cost::now_s(),
            mtime_ns: stamp(path).filter(|(n, _)| *n == size).map(|(_, t)| t),
        };
        self.update(|m| {
            m.files.insert(Self::key(path), entry);
            true
        });
    }

    /// The sha256 its folder's manifest recorded for `path`, if the file still has the size
    /// and modification time it had when it was hashed: hashing a 4 GB model takes about 20 s,
    /// which the runtime then saves at load (a probe checks the model by its hash).
    pub fn known_sha256(path: &Path) -> Option<String> {
        let store = Store::new(path.parent()?);
        let m = store.read();
        let r = m.files.get(&Self::key(path))?;
        let (size, mtime) = stamp(path)?;
        (r.size == size && r.mtime_ns == Some(mtime)).then(|| r.sha256.clone())
    }

    /// Notes that `path` was used now, if its folder is a managed one (has a manifest that
    /// knows the file). Never creates a manifest.
    pub fn touch(path: &Path) {
        let Some(dir) = path.parent() else { return };
        let store = Store::new(dir);
        if !store.manifest_path().exists() {
            return;
        }
        store.update(|m| match m.files.get_mut(&Self::key(path)) {
            Some(r) => {
                r.last_used = crate::cost::now_s();
                true
            }
            None => false,
        });
    }

    /// The `.gguf` files in the folder, by name.
    pub fn list(&self) -> Vec<StoredModel> {
        let m = self.read();
        let mut out: Vec<StoredModel> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let size = std::fs::metadata(&p).map_or(0, |md| md.len());
                let rec = m.files.get(&Self::key(&p));
                StoredModel {
                    path: p.to_string_lossy().into_owned(),
                    size,
                    catalog_name: rec
                        .and_then(|r| catalog::by_sha256(&r.sha256))
                        .map(|e| e.name.to_owned()),
                    sha256: rec.map(|r| r.sha256.clone()),
                    verified: rec.is_some_and(|r| r.size == size),
                    last_used: rec.map(|r| r.last_used),
                }
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// Hashes `path` and records it when the hash is `expected` (or any catalog entry's, when
    /// `expected` is `None`). Returns the hash.
    pub fn verify(&self, path: &Path, expected: Option<&str>) -> Result<String, PullError> {
        let io = |e: std::io::Error| PullError::Io {
            path: path.to_owned(),
            detail: e.to_string(),
        };
        let (sha, size) = pull::sha256_file(path)
            .map_err(io)?
            .ok_or_else(|| io(std::io::ErrorKind::NotFound.into()))?;
        let known = match expected {
            Some(e) => e.eq_ignore_ascii_case(&sha),
            None => catalog::by_sha256(&sha).is_some(),
        };
        if known {
            self.record(path, &sha, size);
        }
        Ok(sha)
    }

    /// Deletes a model (by file name, path or catalog name) and its partial download. Returns
    /// what was deleted.
    pub fn remove(&self, name: &str) -> Result<Vec<PathBuf>, PullError> {
        let file = catalog::find(name).map_or(name, |e| e.file_name);
        let path = self
            .dir
            .join(Path::new(file).file_name().unwrap_or_default());
        let mut gone = Vec::new();
        for p in [
            path.clone(),
            PathBuf::from(format!("{}.part", path.display())),
            PathBuf::from(format!("{}.part.json", path.display())),
        ] {
            match std::fs::remove_file(&p) {
                Ok(()) => gone.push(p),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(PullError::Io {
                        path: p,
                        detail: e.to_string(),
                    })
                }
            }
        }
        if gone.is_empty() {
            return Err(PullError::Invalid(format!(
                "no model {name} in {}",
                self.dir.display()
            )));
        }
        self.update(|m| m.files.remove(&Self::key(&path)).is_some());
        Ok(gone)
    }

    /// Bytes the folder's models and partial downloads take.
    pub fn usage(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n.ends_with(".gguf") || n.ends_with(".gguf.part")
                    })
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// Makes room for `need` more bytes for the pull `r`: within its quota (evicting the least
/// recently used models, never `r.keep` nor the file being pulled) and on the disk. Returns
/// the files evicted.
pub(crate) fn make_room(r: &PullRequest, need: u64) -> Result<Vec<String>, PullError> {
    let (dest, dir) = r.paths();
    let store = Store::new(&dir);
    let mut evicted = Vec::new();
    if let Some(quota) = r.quota_bytes {
        let keep = r.keep.as_deref().map(Path::new);
        let same = |a: &Path, b: &Path| {
            a == b
                || (a.canonicalize().ok().is_some()
                    && a.canonicalize().ok() == b.canonicalize().ok())
        };
        let mut used = store.usage();
        if used + need > quota {
            let mut candidates: Vec<StoredModel> = store
                .list()
                .into_iter()
                .filter(|m| {
                    let p = Path::new(&m.path);
                    !same(p, &dest) && keep.is_none_or(|k| !same(p, k))
                })
                .collect();
            // Least recently used first; files never used (no record) before all others.
            let age = |m: &StoredModel| {
                m.last_used.unwrap_or_else(|| {
                    std::fs::metadata(&m.path)
                        .and_then(|md| md.modified())
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0.0, |d| d.as_secs_f64())
                })
            };
            candidates.sort_by(|a, b| age(a).total_cmp(&age(b)));
            let room: u64 = candidates.iter().map(|m| m.size).sum();
            if used.saturating_sub(room) + need > quota {
                return Err(PullError::Storage(format!(
                    "the models quota of {:.2} GB cannot hold {:.2} GB more: {:.2} GB are used, and only {:.2} GB of that may be evicted (the configured model is kept)",
                    quota as f64 / 1e9,
                    need as f64 / 1e9,
                    used as f64 / 1e9,
                    room as f64 / 1e9
                )));
            }
            for m in candidates {
                if used + need <= quota {
                    break;
                }
                let name = Path::new(&m.path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                store.remove(&name)?;
                log::info!("quota: evicted {} ({} bytes)", m.path, m.size);
                used = used.saturating_sub(m.size);
                evicted.push(m.path);
            }
        }
    }
    if let Some(free) = pull::free_space(&dir) {
        if free < need + DISK_MARGIN {
            return Err(PullError::Storage(format!(
                "{}: {:.2} GB free, the download needs {:.2} GB (and {} MB to spare)",
                dir.display(),
                free as f64 / 1e9,
                need as f64 / 1e9,
                DISK_MARGIN >> 20
            )));
        }
    }
    Ok(evicted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_hash_is_trusted_only_while_the_file_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let f = dir.path().join("m.gguf");
        std::fs::write(&f, b"GGUF model bytes").unwrap();
        // Unmanaged folder, or a file never recorded: unknown.
        assert_eq!(Store::known_sha256(&f), None);
        let (sha, size) = pull::sha256_file(&f).unwrap().unwrap();
        store.record(&f, &sha, size);
        assert_eq!(Store::known_sha256(&f).as_deref(), Some(sha.as_str()));
        // Rewritten with the same size at another time: unknown again.
        let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
        file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
            .unwrap();
        drop(file);
        assert_eq!(Store::known_sha256(&f), None);
        // Recorded again, then grown: unknown.
        store.record(&f, &sha, size);
        assert!(Store::known_sha256(&f).is_some());
        std::fs::write(&f, b"GGUF model bytes, longer").unwrap();
        assert_eq!(Store::known_sha256(&f), None);
        // Manifests from before mtimes were recorded, or recorded as float seconds, are read,
        // and their hash is not trusted.
        let len = std::fs::metadata(&f).unwrap().len();
        for extra in ["", r#","mtime":1764625655.123456789"#] {
            let old = format!(
                r#"{{"files":{{"m.gguf":{{"sha256":"{sha}","size":{len},"last_used":1.0{extra}}}}}}}"#
            );
            std::fs::write(dir.path().join(MANIFEST), old).unwrap();
            assert_eq!(store.list()[0].sha256.as_deref(), Some(sha.as_str()));
            assert_eq!(Store::known_sha256(&f), None);
        }
    }

    /// Threads recording different models in one folder at once: every entry survives (with
    /// one fixed temporary name and no lock, concurrent updates lost entries or failed).
    #[test]
    fn concurrent_records_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..64).map(|i| format!("m{i}.gguf")).collect();
        std::thread::scope(|s| {
            for chunk in names.chunks(8) {
                let dir = dir.path();
                s.spawn(move || {
                    let store = Store::new(dir);
                    for n in chunk {
                        let f = dir.join(n);
                        std::fs::write(&f, b"GGUF").unwrap();
                        store.record(&f, "abc", 4);
                        Store::touch(&f);
                    }
                });
            }
        });
        let listed = Store::new(dir.path()).list();
        assert_eq!(listed.len(), 64);
        assert!(
            listed.iter().all(|m| m.sha256.as_deref() == Some("abc")),
            "{listed:?}"
        );
        // No temporary file is left behind.
        let stray: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
    }

    #[test]
    fn nanosecond_stamps_survive_the_manifest_round_trip() {
        // Float seconds lost the last digit on some of these in serde_json's default parser.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let f = dir.path().join("m.gguf");
        std::fs::write(&f, b"GGUF").unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
        for i in 0..2000u64 {
            let t = std::time::Duration::new(
                1_764_625_655 + i * 7919,
                (i * 104_729_113) as u32 % 1_000_000_000,
            );
            file.set_modified(std::time::UNIX_EPOCH + t).unwrap();
            store.record(&f, "abc", 4);
            assert_eq!(Store::known_sha256(&f).as_deref(), Some("abc"), "at {t:?}");
        }
    }
}
