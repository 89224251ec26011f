//! The fleet cost planner (`edgecascade costs plan`): the monthly cost of sending all traffic to
//! the small tier, all of it to the large tier, or cascading, with the arithmetic shown.
//!
//! The cascade runs every request on the small tier and pays the large tier again for the
//! escalated share: cascade = all-small + escalation x all-large.

use crate::error::Invalid;
use serde::{Deserialize, Serialize};

/// Prices of one tier, USD per 1k tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TierPrice {
    /// Prompt tokens.
    pub input_per_1k: f64,
    /// Completion tokens.
    pub output_per_1k: f64,
}

/// Documented default prices, USD per 1k tokens (input, output). They are round illustrative
/// figures in line with 2025 list prices for hosted open models and a frontier API; put your
/// own in with the price flags.
pub const PRESETS: [(&str, TierPrice); 4] = [
    (
        "7b",
        TierPrice {
            input_per_1k: 0.0002,
            output_per_1k: 0.0002,
        },
    ),
    (
        "30b",
        TierPrice {
            input_per_1k: 0.0009,
            output_per_1k: 0.0009,
        },
    ),
    (
        "70b",
        TierPrice {
            input_per_1k: 0.004,
            output_per_1k: 0.004,
        },
    ),
    (
        "frontier",
        TierPrice {
            input_per_1k: 0.0025,
            output_per_1k: 0.01,
        },
    ),
];

/// A preset by name.
pub fn preset(name: &str) -> Option<TierPrice> {
    PRESETS.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

/// What the planner needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanInput {
    /// Tokens per day, prompt and completion together.
    pub tokens_per_day: f64,
    /// Share of those tokens that are prompt (input) tokens, 0 to 1.
    pub input_share: f64,
    /// The small tier.
    pub small: TierPrice,
    /// The large tier.
    pub large: TierPrice,
    /// Share of requests the cascade escalates, 0 to 1 (measure it with `eval`).
    pub escalation_rate: f64,
    /// Days in the month.
    pub days: f64,
    /// Redundant instances of each deployment (capacity you pay for, 1 = none).
    pub redundancy: f64,
    /// Regions deployed to (1 = one).
    pub regions: f64,
    /// Extra capacity held for peaks, as a share (0.3 = 30% above the average).
    pub peak_buffer: f64,
    /// Extra traffic for development and testing, as a share of production (0.1 = 10%).
    pub dev_share: f64,
}

impl Default for PlanInput {
    fn default() -> Self {
        Self {
            tokens_per_day: 100e6,
            input_share: 0.75,
            small: PRESETS[0].1,
            large: PRESETS[2].1,
            escalation_rate: 0.3,
            days: 30.0,
            redundancy: 1.0,
            regions: 1.0,
            peak_buffer: 0.0,
            dev_share: 0.0,
        }
    }
}

/// The plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Monthly USD, everything on the small tier.
    pub all_small_usd: f64,
    /// Monthly USD, everything on the large tier.
    pub all_large_usd: f64,
    /// Monthly USD, cascading.
    pub cascade_usd: f64,
    /// All-large minus cascade.
    pub savings_usd: f64,
    /// The arithmetic, one line per step.
    pub steps: Vec<String>,
}

/// Checks the inputs.
pub fn validate(i: &PlanInput) -> Result<(), Invalid> {
    let nonneg = [
        ("tokens per day", i.tokens_per_day),
        ("small input price", i.small.input_per_1k),
        ("small output price", i.small.output_per_1k),
        ("large input price", i.large.input_per_1k),
        ("large output price", i.large.output_per_1k),
        ("peak buffer", i.peak_buffer),
        ("dev/test share", i.dev_share),
    ];
    for (name, v) in nonneg {
        if !v.is_finite() || v < 0.0 {
            return Err(Invalid(format!("{name} must be a number >= 0 (got {v})")));
        }
    }
    for (name, v) in [
        ("input share", i.input_share),
        ("escalation rate", i.escalation_rate),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(Invalid(format!("{name} must be between 0 and 1 (got {v})")));
        }
    }
    for (name, v) in [
        ("days", i.days),
        ("redundancy", i.redundancy),
        ("regions", i.regions),
    ] {
        if !v.is_finite() || v < 1.0 {
            return Err(Invalid(format!("{name} must be 1 or more (got {v})")));
        }
    }
    Ok(())
}

/// Thousands separators for whole numbers.
fn grouped(x: f64) -> String {
    let s = format!("{:.0}", x.round());
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn usd(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!(
            "${}.{:02}",
            grouped(x.trunc()),
            ((x.abs().fract()) * 100.0).round() as u64 % 100
        )
    } else {
        format!("${x:.4}")
    }
}

/// Computes the plan.
pub fn plan(i: &PlanInput) -> Result<Plan, Invalid> {
    validate(i)?;
    let mut steps = Vec::new();
    let month_tokens = i.tokens_per_day * i.days;
    steps.push(format!(
        "tokens per month = {} per day x {} days = {}",
        grouped(i.tokens_per_day),
        i.days,
        grouped(month_tokens)
    ));
    let input_k = month_tokens * i.input_share / 1000.0;
    let output_k = month_tokens * (1.0 - i.input_share) / 1000.0;
    steps.push(format!(
        "input {:.0}% = {} k tokens; output {:.0}% = {} k tokens",
        i.input_share * 100.0,
        grouped(input_k),
        (1.0 - i.input_share) * 100.0,
        grouped(output_k)
    ));
    let fleet = i.redundancy * i.regions * (1.0 + i.peak_buffer) * (1.0 + i.dev_share);
    steps.push(format!(
        "fleet multiplier = {} redundancy x {} regions x {:.2} peak buffer x {:.2} dev/test = {fleet:.4}",
        i.redundancy,
        i.regions,
        1.0 + i.peak_buffer,
        1.0 + i.dev_share
    ));
    let tier = |name: &str, p: TierPrice, steps: &mut Vec<String>| {
        let base = input_k * p.input_per_1k + output_k * p.output_per_1k;
        let total = base * fleet;
        steps.push(format!(
            "all-{name} = ({} k x ${} + {} k x ${}) x {fleet:.4} = {} x {fleet:.4} = {}",
            grouped(input_k),
            p.input_per_1k,
            grouped(output_k),
            p.output_per_1k,
            usd(base),
            usd(total)
        ));
        total
    };
    let all_small = tier("small", i.small, &mut steps);
    let all_large = tier("large", i.large, &mut steps);
    let cascade = all_small + i.escalation_rate * all_large;
    steps.push(format!(
        "cascade = all-small {} + {:.1}% escalated x all-large {} = {}",
        usd(all_small),
        i.escalation_rate * 100.0,
        usd(all_large),
        usd(cascade)
    ));
    let savings = all_large - cascade;
    steps.push(format!(
        "savings against all-large = {} - {} = {} ({:.1}%)",
        usd(all_large),
        usd(cascade),
        usd(savings),
        if all_large > 0.0 {
            100.0 * savings / all_large
        } else {
            0.0
        }
    ));
    if i.escalation_rate > 0.0 && i.small.input_per_1k + i.small.output_per_1k > 0.0 {
        let breakeven = 1.0 - all_small / all_large.max(f64::MIN_POSITIVE);
        steps.push(format!(
            "break-even: the cascade saves money while it escalates under {:.1}% of requests",
            breakeven.max(0.0) * 100.0
        ));
    }
    Ok(Plan {
        all_small_usd: all_small,
        all_large_usd: all_large,
        cascade_usd: cascade,
        savings_usd: savings,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn a_hundred_million_tokens_a_day_at_0_0002_is_600_a_month() {
        let p = plan(&PlanInput {
            tokens_per_day: 100e6,
            small: TierPrice {
                input_per_1k: 0.0002,
                output_per_1k: 0.0002,
            },
            ..PlanInput::default()
        })
        .unwrap();
        assert!(close(p.all_small_usd, 600.0), "{}", p.all_small_usd);
        assert!(
            p.steps.iter().any(|s| s.contains("$600.00")),
            "{:#?}",
            p.steps
        );
    }

    #[test]
    fn cascade_and_savings_by_hand() {
        // 10M tokens/day, 30 days = 300M tokens: 200M input, 100M output.
        // Small: 200,000 k x 0.0001 + 100,000 k x 0.0003 = 20 + 30 = $50.
        // Large: 200,000 k x 0.001 + 100,000 k x 0.003 = 200 + 300 = $500.
        // Cascade at 20%: 50 + 0.2 x 500 = $150; savings $350.
        let input = PlanInput {
            tokens_per_day: 10e6,
            input_share: 2.0 / 3.0,
            small: TierPrice {
                input_per_1k: 0.0001,
                output_per_1k: 0.0003,
            },
            large: TierPrice {
                input_per_1k: 0.001,
                output_per_1k: 0.003,
            },
            escalation_rate: 0.2,
            ..PlanInput::default()
        };
        let p = plan(&input).unwrap();
        assert!(close(p.all_small_usd, 50.0));
        assert!(close(p.all_large_usd, 500.0));
        assert!(close(p.cascade_usd, 150.0));
        assert!(close(p.savings_usd, 350.0));
        // Two regions, one redundant instance each, 25% peak buffer, 10% dev/test: x 5.5.
        let p = plan(&PlanInput {
            redundancy: 2.0,
            regions: 2.0,
            peak_buffer: 0.25,
            dev_share: 0.1,
            ..input
        })
        .unwrap();
        assert!(close(p.all_large_usd, 500.0 * 5.5), "{}", p.all_large_usd);
        assert!(close(p.cascade_usd, 150.0 * 5.5));
    }

    #[test]
    fn bad_inputs_are_refused() {
        for bad in [
            PlanInput {
                escalation_rate: 1.5,
                ..PlanInput::default()
            },
            PlanInput {
                tokens_per_day: -1.0,
                ..PlanInput::default()
            },
            PlanInput {
                regions: 0.0,
                ..PlanInput::default()
            },
            PlanInput {
                input_share: f64::NAN,
                ..PlanInput::default()
            },
        ] {
            assert!(plan(&bad).is_err());
        }
        assert_eq!(grouped(1_234_567.0), "1,234,567");
        assert_eq!(usd(600.0), "$600.00");
        assert_eq!(usd(1234.5), "$1,234.50");
    }
}
