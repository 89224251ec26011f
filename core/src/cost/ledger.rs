//! The cost ledger: one JSON line per request, appended under an exclusive file lock (std's
//! `File::lock`: flock on Unix, LockFileEx on Windows), so several
//! processes (`serve` and `ask`, say) can share one file. Budget reservations live in the same
//! file under the same lock, so concurrent requests can never overshoot a cap.
//!
//! Durability: each record is one `write` of a whole line, then `fsync`. A crash mid-write leaves
//! a torn last line; readers skip it, and the next append first terminates it, so it never
//! corrupts the record after it. A full disk is an error for the caller, never a lost answer.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{now_s, utc_day_month};
use crate::config::BudgetConfig;
use crate::error::ErrorKind;
use crate::types::{Reason, Route};

pub use crate::error::LedgerError;

/// One line of the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A finished request.
    Request(CostRecord),
    /// Worst-case remote spend held for a request in flight.
    Reserve {
        /// Request id.
        id: String,
        /// Unix seconds.
        ts: f64,
        /// USD held.
        usd: f64,
    },
}

/// The cost record of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostRecord {
    /// Request id.
    pub id: String,
    /// Unix seconds.
    pub ts: f64,
    /// The answer's route, or `failed` (a request that failed after reserving budget: its
    /// record settles the reservation).
    pub route: RecordRoute,
    /// Why it took that route.
    pub reason: Reason,
    /// Local prompt and completion tokens.
    pub local_tokens: [u32; 2],
    /// Remote prompt and completion tokens.
    pub remote_tokens: [u32; 2],
    /// USD on the local tier.
    pub local_usd: f64,
    /// USD on the remote tier.
    pub remote_usd: f64,
    /// What it would have cost all-remote.
    pub all_remote_usd: f64,
    /// Time to first token, ms.
    pub ttft_ms: f64,
    /// Whole request, ms.
    pub total_ms: f64,
    /// Prompt text, only with `store_prompts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Answer text, only with `store_prompts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// For a failed request (route `failed`): the error's stable kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorKind>,
}

/// A cost record's route: an answer's [`Route`], or `Failed` for a request that failed after
/// reserving budget. Written as the same snake_case names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordRoute {
    /// [`Route::Local`].
    Local,
    /// [`Route::Remote`].
    Remote,
    /// [`Route::Escalated`].
    Escalated,
    /// [`Route::DegradedLocal`].
    DegradedLocal,
    /// The request failed; its record bills what was spent and settles the reservation.
    Failed,
}

impl RecordRoute {
    /// The stable name, as in the ledger and [`CostReport::by_route`].
    pub fn name(self) -> &'static str {
        match self {
            RecordRoute::Local => Route::Local.name(),
            RecordRoute::Remote => Route::Remote.name(),
            RecordRoute::Escalated => Route::Escalated.name(),
            RecordRoute::DegradedLocal => Route::DegradedLocal.name(),
            RecordRoute::Failed => "failed",
        }
    }
}

impl From<Route> for RecordRoute {
    fn from(r: Route) -> Self {
        match r {
            Route::Local => RecordRoute::Local,
            Route::Remote => RecordRoute::Remote,
            Route::Escalated => RecordRoute::Escalated,
            Route::DegradedLocal => RecordRoute::DegradedLocal,
        }
    }
}

impl std::str::FromStr for RecordRoute {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            RecordRoute::Local,
            RecordRoute::Remote,
            RecordRoute::Escalated,
            RecordRoute::DegradedLocal,
            RecordRoute::Failed,
        ]
        .into_iter()
        .find(|r| r.name() == s)
        .ok_or_else(|| format!("unknown route {s:?}"))
    }
}

/// Totals over a period.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct CostReport {
    /// Requests.
    pub requests: u64,
    /// Requests per route.
    pub by_route: std::collections::HashMap<String, u64>,
    /// Share of requests escalated.
    pub escalation_rate: f64,
    /// USD on the local tier.
    pub local_usd: f64,
    /// USD on the remote tier.
    pub remote_usd: f64,
    /// Sum.
    pub total_usd: f64,
    /// What all of it would have cost all-remote.
    pub all_remote_usd: f64,
    /// `all_remote_usd - total_usd`.
    pub savings_usd: f64,
    /// Lines skipped as torn or unreadable.
    pub skipped_lines: u64,
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetRefusal {
    /// Which cap: "per_request", "daily" or "monthly".
    pub cap: &'static str,
    /// The cap in USD.
    pub limit_usd: f64,
    /// Spent and held in the window.
    pub used_usd: f64,
    /// The worst case asked for.
    pub asked_usd: f64,
}

impl std::fmt::Display for BudgetRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} remote budget of ${:.4} would be exceeded (${:.4} used, ${:.4} more asked)",
            self.cap, self.limit_usd, self.used_usd, self.asked_usd
        )
    }
}

/// Reservations older than this are treated as abandoned (a crashed process).
const RESERVATION_TTL_S: f64 = 900.0;

/// Remote spend aggregated from the ledger, read incrementally: the file only grows, so each
/// check reads just the bytes appended since the last one (by any process).
#[derive(Debug, Default)]
struct Spend {
    /// Bytes of complete lines already folded in.
    offset: u64,
    by_day: HashMap<i64, f64>,
    by_month: HashMap<i64, f64>,
    /// Reservations not yet settled: id -> (ts, usd).
    pending: HashMap<String, (f64, f64)>,
}

impl Spend {
    fn add(&mut self, e: Entry) {
        let (ts, usd) = match e {
            Entry::Request(r) => {
                self.pending.remove(&r.id);
                (r.ts, r.remote_usd)
            }
            Entry::Reserve { id, ts, usd } => {
                self.pending.insert(id, (ts, usd));
                return;
            }
        };
        let (d, m) = utc_day_month(ts);
        *self.by_day.entry(d).or_default() += usd;
        *self.by_month.entry(m).or_default() += usd;
    }

    fn used(&self, now: f64) -> (f64, f64) {
        let (today, month) = utc_day_month(now);
        let (mut day, mut mon) = (
            self.by_day.get(&today).copied().unwrap_or(0.0),
            self.by_month.get(&month).copied().unwrap_or(0.0),
        );
        for (ts, usd) in self.pending.values() {
            if now - ts < RESERVATION_TTL_S {
                let (d, m) = utc_day_month(*ts);
                if d == today {
                    day += usd;
                }
                if m == month {
                    mon += usd;
                }
            }
        }
        (day, mon)
    }
}

/// The ledger file.
#[derive(Debug, Clone)]
pub struct Ledger {
    path: PathBuf,
    spend: std::sync::Arc<std::sync::Mutex<Spend>>,
}

impl Ledger {
    /// A ledger at `path`; the file and its folder are created on first write.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            spend: std::sync::Arc::default(),
        }
    }

    /// Folds the lines appended since the last call into `spend` (under the file lock).
    fn catch_up(&self, file: &mut File, spend: &mut Spend) -> Result<(), LedgerError> {
        let len = file.metadata().map_err(|e| self.io(e))?.len();
        if len < spend.offset {
            *spend = Spend::default(); // replaced or truncated: start over
        }
        if len == spend.offset {
            return Ok(());
        }
        let mut buf = Vec::with_capacity((len - spend.offset) as usize);
        file.seek(SeekFrom::Start(spend.offset))
            .map_err(|e| self.io(e))?;
        file.take(len - spend.offset)
            .read_to_end(&mut buf)
            .map_err(|e| self.io(e))?;
        // Only complete lines: a torn tail is left for later (it gets terminated, then skipped).
        let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in String::from_utf8_lossy(&buf[..complete])
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            if let Ok(e) = serde_json::from_str::<Entry>(line) {
                spend.add(e);
            }
        }
        spend.offset += complete as u64;
        Ok(())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> LedgerError {
        LedgerError::Io {
            path: self.path.clone(),
            source: std::sync::Arc::new(source),
        }
    }

    /// Runs `f` on the open file under an exclusive lock.
    fn locked<T>(
        &self,
        f: impl FnOnce(&mut File) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        file.lock().map_err(|e| self.io(e))?;
        let out = f(&mut file);
        let _ = file.unlock();
        out
    }

    fn read_all(&self, file: &mut File) -> Result<(Vec<Entry>, u64), LedgerError> {
        let mut text = String::new();
        file.seek(SeekFrom::Start(0)).map_err(|e| self.io(e))?;
        file.read_to_string(&mut text).map_err(|e| self.io(e))?;
        let mut skipped = 0;
        let entries = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| {
                serde_json::from_str::<Entry>(l)
                    .map_err(|_| skipped += 1)
                    .ok()
            })
            .collect();
        if skipped > 0 {
            log::warn!(
                "{}: skipped {skipped} torn or unreadable line(s)",
                self.path.display()
            );
        }
        Ok((entries, skipped))
    }

    fn write_line(&self, file: &mut File, entry: &Entry) -> Result<(), LedgerError> {
        // Terminate a torn last line left by a crash, so it cannot swallow this record.
        let len = file.metadata().map_err(|e| self.io(e))?.len();
        let mut line = String::new();
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1))
                .map_err(|e| self.io(e))?;
            file.read_exact(&mut last).map_err(|e| self.io(e))?;
            if last[0] != b'\n' {
                line.push('\n');
            }
        }
        line.push_str(&serde_json::to_string(entry).expect("ledger entries serialise"));
        line.push('\n');
        file.write_all(line.as_bytes()).map_err(|e| self.io(e))?;
        file.sync_data().map_err(|e| self.io(e))
    }

    /// Appends a finished request's record (and so settles its reservation, if any).
    pub fn record(&self, rec: &CostRecord) -> Result<(), LedgerError> {
        self.locked(|f| self.write_line(f, &Entry::Request(rec.clone())))
    }

    /// Whether `usd` more would fit every cap, without holding it.
    pub fn check(
        &self,
        budget: &BudgetConfig,
        usd: f64,
    ) -> Result<Result<(), BudgetRefusal>, LedgerError> {
        self.reserve_inner(budget, None, usd)
    }

    /// Holds `usd` of remote spend for request `id` if every cap allows it. Spend in the window
    /// is settled remote cost plus live reservations not yet settled.
    pub fn reserve(
        &self,
        budget: &BudgetConfig,
        id: &str,
        usd: f64,
    ) -> Result<Result<(), BudgetRefusal>, LedgerError> {
        self.reserve_inner(budget, Some(id), usd)
    }

    fn reserve_inner(
        &self,
        budget: &BudgetConfig,
        id: Option<&str>,
        usd: f64,
    ) -> Result<Result<(), BudgetRefusal>, LedgerError> {
        if let Some(limit) = budget.per_request_usd {
            if usd > limit {
                return Ok(Err(BudgetRefusal {
                    cap: "per_request",
                    limit_usd: limit,
                    used_usd: 0.0,
                    asked_usd: usd,
                }));
            }
        }
        if budget.daily_usd.is_none() && budget.monthly_usd.is_none() {
            return Ok(Ok(()));
        }
        self.locked(|f| {
            let now = now_s();
            let mut spend = self.spend.lock().expect("spend lock");
            self.catch_up(f, &mut spend)?;
            let (day_used, month_used) = spend.used(now);
            for (cap, limit, used) in [
                ("daily", budget.daily_usd, day_used),
                ("monthly", budget.monthly_usd, month_used),
            ] {
                if let Some(limit) = limit {
                    if used + usd > limit {
                        return Ok(Err(BudgetRefusal {
                            cap,
                            limit_usd: limit,
                            used_usd: used,
                            asked_usd: usd,
                        }));
                    }
                }
            }
            if let Some(id) = id {
                self.write_line(
                    f,
                    &Entry::Reserve {
                        id: id.to_owned(),
                        ts: now,
                        usd,
                    },
                )?;
            }
            Ok(Ok(()))
        })
    }

    /// Totals of requests at or after `since` (unix seconds; `None` for all).
    pub fn report(&self, since: Option<f64>) -> Result<CostReport, LedgerError> {
        if !self.path.exists() {
            return Ok(CostReport::default());
        }
        let (entries, skipped) = self.locked(|f| self.read_all(f))?;
        let mut r = CostReport {
            skipped_lines: skipped,
            ..CostReport::default()
        };
        let mut per_id: HashMap<&str, &CostRecord> = HashMap::new();
        for e in &entries {
            if let Entry::Request(rec) = e {
                if since.is_none_or(|s| rec.ts >= s) {
                    per_id.insert(rec.id.as_str(), rec);
                }
            }
        }
        for rec in per_id.values() {
            r.requests += 1;
            *r.by_route.entry(rec.route.name().to_owned()).or_default() += 1;
            r.local_usd += rec.local_usd;
            r.remote_usd += rec.remote_usd;
            r.all_remote_usd += rec.all_remote_usd;
        }
        r.total_usd = r.local_usd + r.remote_usd;
        r.savings_usd = r.all_remote_usd - r.total_usd;
        let escalated = r.by_route.get("escalated").copied().unwrap_or(0)
            + r.by_route.get("degraded_local").copied().unwrap_or(0);
        r.escalation_rate = if r.requests == 0 {
            0.0
        } else {
            escalated as f64 / r.requests as f64
        };
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, route: &str, remote_usd: f64) -> CostRecord {
        CostRecord {
            id: id.into(),
            ts: now_s(),
            route: route.parse().unwrap(),
            reason: Reason::Accepted,
            local_tokens: [10, 5],
            remote_tokens: [0, 0],
            local_usd: 0.001,
            remote_usd,
            all_remote_usd: 0.01,
            ttft_ms: 1.0,
            total_ms: 2.0,
            prompt: None,
            answer: None,
            error: None,
        }
    }

    #[test]
    fn report_sums_routes_costs_and_savings() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::new(dir.path().join("sub/ledger.jsonl"));
        l.record(&rec("a", "local", 0.0)).unwrap();
        l.record(&rec("b", "escalated", 0.004)).unwrap();
        let r = l.report(None).unwrap();
        assert_eq!(r.requests, 2);
        assert_eq!(r.by_route["escalated"], 1);
        assert!((r.escalation_rate - 0.5).abs() < 1e-12);
        assert!((r.total_usd - 0.006).abs() < 1e-12);
        assert!((r.savings_usd - 0.014).abs() < 1e-12);
    }

    #[test]
    fn torn_last_line_is_skipped_and_never_glued_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let l = Ledger::new(&path);
        l.record(&rec("a", "local", 0.0)).unwrap();
        // A crash mid-write.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"kind":"request","id":"torn","ts":1"#)
            .unwrap();
        drop(f);
        l.record(&rec("b", "local", 0.0)).unwrap();
        let r = l.report(None).unwrap();
        assert_eq!(r.requests, 2);
        assert_eq!(r.skipped_lines, 1);
    }

    #[test]
    fn reservations_enforce_caps_across_concurrent_callers() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::new(dir.path().join("ledger.jsonl"));
        let budget = BudgetConfig {
            daily_usd: Some(1.0),
            monthly_usd: Some(10.0),
            per_request_usd: Some(0.5),
        };
        assert!(
            l.reserve(&budget, "big", 0.6).unwrap().is_err(),
            "per-request cap"
        );
        let granted: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..16)
                .map(|i| {
                    // A separate Ledger per thread: its own cache, as a separate process would have.
                    let (l, b) = (Ledger::new(l.path()), budget.clone());
                    s.spawn(move || {
                        l.reserve(&b, &format!("r{i}"), 0.3)
                            .unwrap()
                            .is_ok()
                            .then(|| format!("r{i}"))
                    })
                })
                .collect();
            hs.into_iter().filter_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            granted.len(),
            3,
            "0.3 x 3 = 0.9 fits a $1 day; a fourth would not"
        );
        assert!(l.reserve(&budget, "more", 0.3).unwrap().is_err());
        // Settling one to its real (smaller) cost frees budget.
        l.record(&rec(&granted[0], "escalated", 0.01)).unwrap();
        assert!(l.reserve(&budget, "next", 0.3).unwrap().is_ok());
    }

    #[test]
    fn unwritable_path_is_an_error() {
        let l = Ledger::new("/proc/edgecascade-cannot-write/ledger.jsonl");
        assert!(l.record(&rec("a", "local", 0.0)).is_err());
    }

    /// Records read and write the same strings as before the fields were typed.
    #[test]
    fn record_codes_are_the_stable_strings() {
        let mut r = rec("a", "degraded_local", 0.0);
        r.reason = Reason::MidStreamLowConfidence;
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["route"], "degraded_local");
        assert_eq!(v["reason"], "mid_stream_low_confidence");
        assert!(v.get("error").is_none());
        r.route = RecordRoute::Failed;
        r.error = Some(ErrorKind::RemoteUnavailable);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            (&v["route"], &v["error"]),
            (&"failed".into(), &"remote_unavailable".into())
        );
        assert_eq!(serde_json::from_value::<CostRecord>(v).unwrap(), r);
        for name in ["local", "remote", "escalated", "degraded_local", "failed"] {
            let route: RecordRoute = name.parse().unwrap();
            assert_eq!(route.name(), name);
            assert_eq!(serde_json::to_value(route).unwrap(), name);
        }
        assert!("lost".parse::<RecordRoute>().is_err());
    }
}
