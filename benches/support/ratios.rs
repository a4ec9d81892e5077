//! Reads criterion's estimates from this run and prints ratios side by side.

use std::path::PathBuf;

fn mean_ns(group: &str, id: &str) -> Option<f64> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let path = dir
        .join("criterion")
        .join(group.replace('/', "_"))
        .join(id)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

/// Prints each benchmark's mean time and its ratio to `base`.
pub(crate) fn print(title: &str, group: &str, base: &str, others: &[String]) {
    let Some(base_ns) = mean_ns(group, base) else {
        return;
    };
    println!("\n{title}");
    println!("  {:<36} {:>12} {:>8}", "benchmark", "mean", "ratio");
    println!("  {:<36} {:>12} {:>8}", base, fmt(base_ns), "1.00");
    for id in others {
        if let Some(ns) = mean_ns(group, id) {
            println!("  {:<36} {:>12} {:>8.2}", id, fmt(ns), ns / base_ns);
        }
    }
}

/// Prints each benchmark's time over `base` and its ratio to `reference`'s time over `base`:
/// what a layer adds, against what the reference adds.
#[allow(dead_code)]
pub(crate) fn print_overhead(
    title: &str,
    group: &str,
    base: &str,
    reference: &str,
    others: &[String],
) {
    let (Some(base_ns), Some(reference_ns)) = (mean_ns(group, base), mean_ns(group, reference))
    else {
        return;
    };
    let reference_over = reference_ns - base_ns;
    println!("\n{title}");
    println!("  {:<36} {:>12} {:>8}", "benchmark", "added", "ratio");
    println!(
        "  {:<36} {:>12} {:>8}",
        reference,
        fmt(reference_over),
        "1.00"
    );
    for id in others {
        if let Some(ns) = mean_ns(group, id) {
            let over = ns - base_ns;
            println!(
                "  {:<36} {:>12} {:>8.2}",
                id,
                fmt(over),
                over / reference_over
            );
        }
    }
}

fn fmt(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.1} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}
