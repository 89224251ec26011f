//! `edgecascade costs`: totals from the ledger, and the savings against sending everything
//! remote. `edgecascade costs plan`: the fleet cost planner.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Subcommand};
use edgecascade::cost::plan::{self, PlanInput, TierPrice};
use edgecascade::cost::Ledger;

use crate::common::{ledger_path, ModelArgs};
use crate::Failure;

/// `costs` flags.
#[derive(ClapArgs)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    plan: Option<Sub>,
    #[command(flatten)]
    model: ModelArgs,
    /// Only requests from the last N days.
    #[arg(long)]
    days: Option<f64>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Sub {
    /// Monthly cost of all-small, all-large and the cascade, with the arithmetic shown.
    Plan(PlanArgs),
}

/// `costs plan` flags. Tier presets (USD per 1k input/output tokens): 7b 0.0002/0.0002,
/// 30b 0.0009/0.0009, 70b 0.004/0.004, frontier 0.0025/0.01.
#[derive(ClapArgs)]
struct PlanArgs {
    /// Tokens per day, prompt and completion together.
    #[arg(long, conflicts_with = "requests_per_day")]
    tokens_per_day: Option<f64>,
    /// Requests per day (with --tokens-per-request).
    #[arg(long, requires = "tokens_per_request")]
    requests_per_day: Option<f64>,
    /// Tokens per request, prompt and completion together.
    #[arg(long)]
    tokens_per_request: Option<f64>,
    /// Share of tokens that are prompt (input) tokens.
    #[arg(long, default_value_t = 0.75)]
    input_share: f64,
    /// Small tier preset: 7b, 30b, 70b or frontier.
    #[arg(long, default_value = "7b")]
    small: String,
    /// Large tier preset.
    #[arg(long, default_value = "70b")]
    large: String,
    /// Small tier input price, USD per 1k tokens (overrides the preset).
    #[arg(long)]
    small_input_per_1k: Option<f64>,
    /// Small tier output price, USD per 1k tokens.
    #[arg(long)]
    small_output_per_1k: Option<f64>,
    /// Large tier input price, USD per 1k tokens.
    #[arg(long)]
    large_input_per_1k: Option<f64>,
    /// Large tier output price, USD per 1k tokens.
    #[arg(long)]
    large_output_per_1k: Option<f64>,
    /// Share of requests escalated to the large tier.
    #[arg(long, conflicts_with = "from_eval")]
    escalation: Option<f64>,
    /// Read the escalation rate from `eval --json` output (recommended.escalation_rate).
    #[arg(long, value_name = "FILE")]
    from_eval: Option<PathBuf>,
    /// Days per month.
    #[arg(long, default_value_t = 30.0)]
    days: f64,
    /// Redundant instances per deployment.
    #[arg(long, default_value_t = 1.0)]
    redundancy: f64,
    /// Regions.
    #[arg(long, default_value_t = 1.0)]
    regions: f64,
    /// Capacity held above average for peaks (0.3 = 30%).
    #[arg(long, default_value_t = 0.0)]
    peak_buffer: f64,
    /// Development and test traffic as a share of production.
    #[arg(long, default_value_t = 0.0)]
    dev_share: f64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn tier(preset: &str, input: Option<f64>, output: Option<f64>) -> Result<TierPrice, Failure> {
    let p = plan::preset(preset).ok_or_else(|| {
        Failure::Usage(format!(
            "unknown tier preset {preset:?}: use one of 7b, 30b, 70b, frontier"
        ))
    })?;
    Ok(TierPrice {
        input_per_1k: input.unwrap_or(p.input_per_1k),
        output_per_1k: output.unwrap_or(p.output_per_1k),
    })
}

fn run_plan(a: PlanArgs) -> Result<(), Failure> {
    let tokens_per_day = match (a.tokens_per_day, a.requests_per_day, a.tokens_per_request) {
        (Some(t), _, _) => t,
        (None, Some(r), Some(t)) => r * t,
        _ => PlanInput::default().tokens_per_day,
    };
    let escalation_rate = match (&a.escalation, &a.from_eval) {
        (Some(e), _) => *e,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::Runtime(format!("{}: {e}", path.display())))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Failure::Runtime(format!("{}: {e}", path.display())))?;
            v["recommended"]["escalation_rate"]
                .as_f64()
                .ok_or_else(|| {
                    Failure::Runtime(format!(
                        "{}: no recommended.escalation_rate (is it `eval --json` output?)",
                        path.display()
                    ))
                })?
        }
        (None, None) => PlanInput::default().escalation_rate,
    };
    let input = PlanInput {
        tokens_per_day,
        input_share: a.input_share,
        small: tier(&a.small, a.small_input_per_1k, a.small_output_per_1k)?,
        large: tier(&a.large, a.large_input_per_1k, a.large_output_per_1k)?,
        escalation_rate,
        days: a.days,
        redundancy: a.redundancy,
        regions: a.regions,
        peak_buffer: a.peak_buffer,
        dev_share: a.dev_share,
    };
    let p = plan::plan(&input).map_err(|e| Failure::Usage(e.0))?;
    if a.json {
        println!("{}", serde_json::to_value(&p)?);
    } else {
        for s in &p.steps {
            println!("{s}");
        }
    }
    Ok(())
}

pub fn run(args: Args) -> Result<(), Failure> {
    if let Some(Sub::Plan(p)) = args.plan {
        return run_plan(p);
    }
    let cfg = crate::common::load_config_file(&args.model)?;
    let ledger = Ledger::new(ledger_path(&cfg));
    let since = args.days.map(|d| edgecascade::cost::now_s() - d * 86_400.0);
    let r = ledger.report(since)?;
    if args.json {
        println!("{}", serde_json::to_value(&r)?);
        return Ok(());
    }
    println!("ledger {}", ledger.path().display());
    println!("requests        {}", r.requests);
    let by_route: std::collections::BTreeMap<_, _> = r.by_route.iter().collect();
    for (route, n) in by_route {
        println!("  {route:<14}{n}");
    }
    println!("escalation rate {:.1}%", r.escalation_rate * 100.0);
    println!("local           ${:.6}", r.local_usd);
    println!("remote          ${:.6}", r.remote_usd);
    println!("total           ${:.6}", r.total_usd);
    println!("all-remote      ${:.6}", r.all_remote_usd);
    println!(
        "saved           ${:.6} ({:.1}%)",
        r.savings_usd,
        if r.all_remote_usd > 0.0 {
            100.0 * r.savings_usd / r.all_remote_usd
        } else {
            0.0
        }
    );
    Ok(())
}
