//! `edgecascade costs`: totals from the ledger, and the savings against sending everything
//! remote.

use clap::Args as ClapArgs;
use edgecascade::cost::Ledger;

use crate::common::{ledger_path, ModelArgs};
use crate::Failure;

/// `costs` flags.
#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Only requests from the last N days.
    #[arg(long)]
    days: Option<f64>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<(), Failure> {
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
    for (route, n) in &r.by_route {
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
