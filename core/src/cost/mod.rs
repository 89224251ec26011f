//! Cost: prices per tier, the per-request cost record, the durable ledger, and budgets.

pub mod ledger;
pub mod plan;

pub use ledger::{CostRecord, CostReport, Ledger, LedgerError, RecordRoute};

use crate::config::PriceConfig;

/// USD for `prompt` + `completion` tokens on the remote tier.
pub fn remote_usd(p: &PriceConfig, prompt: u32, completion: u32) -> f64 {
    f64::from(prompt) / 1000.0 * p.remote_input_per_1k
        + f64::from(completion) / 1000.0 * p.remote_output_per_1k
}

/// USD for `tokens` generated in `seconds` on the local tier: from energy (watts x seconds x
/// $/kWh, plus amortised hardware per hour) when `local_watts` is set, else per 1k tokens.
pub fn local_usd(p: &PriceConfig, tokens: u32, seconds: f64) -> f64 {
    match p.local_watts {
        Some(watts) => {
            watts * seconds / 3.6e6 * p.electricity_usd_per_kwh
                + p.hardware_usd_per_hour * seconds / 3600.0
        }
        None => f64::from(tokens) / 1000.0 * p.local_per_1k,
    }
}

/// UTC (day number since 1970-01-01, month key YYYYMM) for a unix time.
pub fn utc_day_month(unix_s: f64) -> (i64, i64) {
    let days = (unix_s / 86_400.0).floor() as i64;
    // Civil-from-days (H. Hinnant), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (days, y * 100 + m)
}

/// Seconds since the Unix epoch.
pub fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_windows() {
        assert_eq!(utc_day_month(0.0), (0, 197_001));
        // 2026-11-24T01:00:00Z and 2024-02-29T23:59:59Z.
        assert_eq!(utc_day_month(1_795_482_000.0).1, 202_611);
        assert_eq!(utc_day_month(1_709_251_199.0).1, 202_402);
        assert_eq!(utc_day_month(1_709_251_200.0).1, 202_403);
    }

    #[test]
    fn prices() {
        let p = PriceConfig::default();
        assert!((remote_usd(&p, 1000, 1000) - 0.002).abs() < 1e-12);
        assert!((local_usd(&p, 100_000_000, 1.0) - 20.0).abs() < 1e-9);
        // 10 W for an hour at $0.15/kWh is 0.01 kWh = $0.0015; plus $0.36/h of hardware.
        let energy = PriceConfig {
            local_watts: Some(10.0),
            hardware_usd_per_hour: 0.36,
            ..PriceConfig::default()
        };
        assert!((local_usd(&energy, 0, 3600.0) - (0.0015 + 0.36)).abs() < 1e-12);
        assert!(
            (local_usd(&energy, 500, 2.0) - (10.0 * 2.0 / 3.6e6 * 0.15 + 0.0002)).abs() < 1e-12
        );
    }
}
