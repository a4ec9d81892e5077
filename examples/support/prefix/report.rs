//! The results: medians over seeds, the table, the bars, and the plot.

use std::fmt::Write as _;

use super::{
    fleet::Settings,
    routers::{Kind, KINDS},
    trace::Trace,
};

/// One replay's figures.
#[derive(Clone, Copy)]
pub struct Cell {
    pub hit: f64,
    pub ttft50: f64,
    pub ttft99: f64,
    pub latency99: f64,
    pub busiest: f64,
    pub utilisation: f64,
    pub misjudged: Option<f64>,
}

pub struct Row {
    pub cache: usize,
    pub target: f64,
    pub replicas: usize,
    pub kind: Kind,
    pub variant: Option<&'static str>,
    pub cell: Cell,
}

pub struct Report {
    source: String,
    synthetic: bool,
    requests: usize,
    span: f64,
    ceiling: f64,
    settings: Settings,
    speeds: Vec<(usize, f64, f64)>,
    seeds: u64,
    rows: Vec<Row>,
}

/// 12345 as "12,345".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

const ATTRIBUTION: &str = "Data: Qin et al., \"Mooncake: Trading More Storage for Less Computation — A KVCache-centric Architecture for Serving LLM Chatbot\", FAST 2025; data from kvcache-ai/Mooncake (Apache-2.0).";

impl Report {
    pub fn new(
        t: &Trace,
        settings: &Settings,
        speeds: &[(usize, f64, f64)],
        seeds: u64,
        rows: Vec<Row>,
    ) -> Self {
        Self {
            source: t.source.clone(),
            synthetic: t.synthetic,
            requests: t.requests.len(),
            span: t.requests.last().map_or(0.0, |r| r.at)
                - t.requests.first().map_or(0.0, |r| r.at),
            ceiling: t.reuse_ceiling(),
            settings: *settings,
            speeds: speeds.to_vec(),
            seeds,
            rows,
        }
    }

    /// The median figures of a policy at a setting.
    fn cell(
        &self,
        cache: usize,
        target: f64,
        replicas: usize,
        kind: Kind,
        variant: Option<&str>,
    ) -> Cell {
        let rows: Vec<&Cell> = self
            .rows
            .iter()
            .filter(|r| {
                r.cache == cache
                    && r.target == target
                    && r.replicas == replicas
                    && r.kind == kind
                    && r.variant == variant
            })
            .map(|r| &r.cell)
            .collect();
        let m = |f: fn(&Cell) -> f64| median(rows.iter().map(|c| f(c)).collect());
        let misjudged: Vec<f64> = rows.iter().filter_map(|c| c.misjudged).collect();
        Cell {
            hit: m(|c| c.hit),
            ttft50: m(|c| c.ttft50),
            ttft99: m(|c| c.ttft99),
            latency99: m(|c| c.latency99),
            busiest: m(|c| c.busiest),
            utilisation: m(|c| c.utilisation),
            misjudged: (!misjudged.is_empty()).then(|| median(misjudged)),
        }
    }

    fn settings_list(&self) -> impl Iterator<Item = (usize, f64, f64)> + '_ {
        self.speeds.iter().copied()
    }

    /// The bars, as lines with a verdict each.
    fn bars(&self) -> Vec<(bool, String)> {
        let mut out = Vec::new();
        for (cache, target, _) in self.settings_list() {
            let ours = self.cell(cache, target, 1, Kind::Prefix, None);
            let (best_kind, best) = KINDS
                .iter()
                .filter(|k| **k != Kind::Prefix)
                .map(|&k| (k, self.cell(cache, target, 1, k, None)))
                .min_by(|a, b| a.1.ttft99.total_cmp(&b.1.ttft99))
                .expect("baselines");
            let ratio = ours.ttft99 / best.ttft99;
            let ok = ratio <= 0.8 && ours.hit >= best.hit;
            out.push((
                ok,
                format!(
                    "{} blocks, {:.0}% busy, one router: TTFT p99 {:.2} s = {ratio:.2}× the best baseline's ({}, {:.2} s; bar 0.8×); blocks from cache {:.1}% against its {:.1}%",
                    thousands(cache),
                    target * 100.0,
                    ours.ttft99,
                    best_kind.name(),
                    best.ttft99,
                    100.0 * ours.hit,
                    100.0 * best.hit
                ),
            ));
        }
        for (cache, target, _) in self.settings_list() {
            let one = self.cell(cache, target, 1, Kind::Prefix, None);
            let four = self.cell(cache, target, 4, Kind::Prefix, None);
            let points = 100.0 * (four.hit - one.hit);
            let ratio = four.ttft99 / one.ttft99;
            out.push((
                points >= -3.0 && ratio <= 1.25,
                format!(
                    "{} blocks, {:.0}% busy, four replicas: blocks from cache {:.1}% against {:.1}% with one router ({points:+.1} points; bar 3); TTFT p99 {:.2} s = {ratio:.2}× one router's (bar 1.25×)",
                    thousands(cache),
                    target * 100.0,
                    100.0 * four.hit,
                    100.0 * one.hit,
                    four.ttft99
                ),
            ));
        }
        out
    }

    /// The new policy fed the engines' KV events, beside it fed its own placements alone.
    fn kv_events_section(&self, s: &mut String) {
        if !self.rows.iter().any(|r| r.variant == Some(KV_EVENTS)) {
            return;
        }
        let _ = writeln!(
            s,
            "## With the engines' KV events (not the stated setting)\n"
        );
        let _ = writeln!(
            s,
            "Each router subscribes to every engine's KV events (vLLM's `BlockStored` and `BlockRemoved`, published as its cache changes; here delivered before the next arrival) through `PrefixIndex::apply`, so every replica's index lists what every engine holds, and the policy runs with `replicas(1)`: no bet on a prefix's home is needed. Medians over {} seeds.\n",
            self.seeds
        );
        let _ = writeln!(s, "| setting | one router, own placements | four replicas, own placements | one router, KV events | four replicas, KV events |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        for (cache, target, _) in self.settings_list() {
            let base = self.cell(cache, target, 1, Kind::Prefix, None);
            let cells = [
                base,
                self.cell(cache, target, 4, Kind::Prefix, None),
                self.cell(cache, target, 1, Kind::Prefix, Some(KV_EVENTS)),
                self.cell(cache, target, 4, Kind::Prefix, Some(KV_EVENTS)),
            ];
            let _ = write!(
                s,
                "| {} blocks, {:.0}% busy |",
                thousands(cache),
                target * 100.0
            );
            for (i, c) in cells.iter().enumerate() {
                let _ = write!(s, " {:.1}%, p99 {:.2} s", 100.0 * c.hit, c.ttft99);
                if i > 0 {
                    let _ = write!(s, " ({:.2}×)", c.ttft99 / base.ttft99);
                }
                s.push_str(" |");
            }
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "\nEach cell: prompt blocks from cache, TTFT p99, and in brackets that p99 against one router's with its own placements (the bars' reference).\n"
        );
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        if self.synthetic {
            let _ = writeln!(s, "SYNTHETIC WORKLOAD: the trace file was not found.");
        }
        for (cache, target, speed) in self.settings_list() {
            let _ = writeln!(
                s,
                "\n{} blocks per engine, {:.0}% of slots busy (arrivals ×{speed:.2}):",
                thousands(cache),
                target * 100.0
            );
            let _ = writeln!(
                s,
                "  {:<8} {:<34} {:>8} {:>9} {:>9} {:>9} {:>8}",
                "routers", "policy", "cached", "TTFT p50", "TTFT p99", "lat p99", "busiest"
            );
            for replicas in [1, 4] {
                for kind in KINDS {
                    let c = self.cell(cache, target, replicas, kind, None);
                    let _ = writeln!(
                        s,
                        "  {:<8} {:<34} {:>7.1}% {:>8.2}s {:>8.2}s {:>8.1}s {:>7.1}%",
                        replicas,
                        kind.name(),
                        100.0 * c.hit,
                        c.ttft50,
                        c.ttft99,
                        c.latency99,
                        100.0 * c.busiest
                    );
                }
            }
        }
        let _ = writeln!(s, "\nBars:");
        for (ok, line) in self.bars() {
            let _ = writeln!(s, "  [{}] {line}", if ok { "met" } else { "NOT met" });
        }
        let _ = write!(s, "\n{ATTRIBUTION}");
        s
    }

    pub fn markdown(&self) -> String {
        let st = &self.settings;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Prefix-cache-aware routing on the Mooncake conversation trace\n"
        );
        let _ = writeln!(
            s,
            "Produced by `cargo run --release --example prefix_cache`: medians over {} seeds. {ATTRIBUTION}\n",
            self.seeds
        );
        if self.synthetic {
            let _ = writeln!(s, "**These figures come from a synthetic workload with the trace's prefix structure: the trace file was not found.**\n");
        }
        let _ = writeln!(
            s,
            "The workload: {} requests from `{}` over {} s; prompts of 12,035 tokens on average (in 512-token blocks, 24 per prompt), outputs of 343. Every prompt begins with the same block, and {:.1}% of all prompt blocks could come from one cache that held everything (the ceiling for any router).\n",
            thousands(self.requests),
            self.source.rsplit('/').next().unwrap_or(&self.source),
            thousands(self.span as usize),
            100.0 * self.ceiling
        );
        let _ = writeln!(s, "## The fleet\n");
        let _ = writeln!(
            s,
            "{} engines, each one 8-GPU node serving a 70B-class model (H100-class, FP8, tensor-parallel over the node):\n\n\
             - prefill at {} tokens/s, one prefill at a time, of the prompt's tokens not found in the engine's KV cache when the prefill starts (at least one: the last token is always computed); the first token comes at its end;\n\
             - decode at {:.0} ms per output token and sequence;\n\
             - up to {} sequences at once (prefilling or decoding); the rest wait in the engine's queue, first come first served;\n\
             - a KV cache of 1,000 or 5,000 blocks of {} tokens (0.5 or 2.6 million tokens), least recently used out first, a prompt's tail before its head, as vLLM and SGLang evict.\n",
            st.workers,
            thousands(st.prefill_rate as usize),
            st.decode * 1000.0,
            st.slots,
            st.block_tokens
        );
        let _ = writeln!(
            s,
            "Why these speeds: a 70B model costs some 140 GFLOP per prompt token plus attention (about 16 GFLOP more at this trace's average context); eight H100s give 15.8 PFLOP/s in FP8, of which prefill keeps some 40%, hence about 40,000 tokens/s. A decode step reads the 70 GB of FP8 weights and the running sequences' KV cache over 27 TB/s of HBM and exchanges activations between the GPUs: about 20 ms per step at 16 long sequences. With these, the trace's prompts (mostly prefill) and outputs (mostly decode) load the prefill unit and the sequence slots about equally, as Mooncake describes for this workload.\n"
        );
        let _ = writeln!(
            s,
            "The routers see what a real router sees: their own placements and requests in flight (the crate's `LoadGuard` accounting), the first token and the end of their own responses, and the engines' metrics (waiting, running, KV usage, and vLLM's prompt-token counters: tokens scheduled and found cached, counted when a prefill starts, and tokens computed, counted when it ends) scraped every {:.0} ms. None sees another router's placements or an engine's cache. The trace's arrival times are divided by a constant chosen so that power of two choices keeps 70% and 90% of the fleet's slots busy on average while requests arrive:\n",
            st.scrape * 1000.0
        );
        let _ = writeln!(
            s,
            "| cache per engine | slots busy | arrivals sped up | requests/s |"
        );
        let _ = writeln!(s, "|---|---|---|---|");
        for (cache, target, speed) in self.settings_list() {
            let _ = writeln!(
                s,
                "| {} blocks | {:.0}% | ×{speed:.2} | {:.1} |",
                thousands(cache),
                target * 100.0,
                self.requests as f64 / self.span.max(1.0) * speed
            );
        }
        let _ = writeln!(s, "\nWith four replicas, each arrival goes to one of four routers at random, each with its own state (index, counts).\n");
        let _ = writeln!(s, "## Results\n");
        let _ = writeln!(
            s,
            "![TTFT p99 against blocks served from cache](prefix-cache.svg)\n"
        );
        for (cache, target, _) in self.settings_list() {
            let _ = writeln!(
                s,
                "### {cache} blocks per engine, {:.0}% of slots busy\n",
                target * 100.0
            );
            let _ = writeln!(s, "| routers | policy | prompt blocks from cache | TTFT p50 | TTFT p99 | latency p99 | busiest engine's share |");
            let _ = writeln!(s, "|---|---|---|---|---|---|---|");
            for replicas in [1, 4] {
                for kind in KINDS {
                    let c = self.cell(cache, target, replicas, kind, None);
                    let b = if kind == Kind::Prefix { "**" } else { "" };
                    let _ = writeln!(
                        s,
                        "| {replicas} | {b}{}{b} | {b}{:.1}%{b} | {:.2} s | {b}{:.2} s{b} | {:.1} s | {:.1}% |",
                        kind.name(),
                        100.0 * c.hit,
                        c.ttft50,
                        c.ttft99,
                        c.latency99,
                        100.0 * c.busiest
                    );
                }
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "## Against the bars\n");
        for (ok, line) in self.bars() {
            let _ = writeln!(s, "- **{}**: {line}", if ok { "met" } else { "not met" });
        }
        let _ = writeln!(s);
        self.kv_events_section(&mut s);
        let (cache, target, _) = self.speeds[1];
        let _ = writeln!(s, "## What the new policy's figures owe to its settings\n");
        let _ = writeln!(
            s,
            "{} blocks per engine, {:.0}% busy, one router; medians over {} seeds. The first row is the policy as measured above.\n",
            thousands(cache),
            target * 100.0,
            self.seeds.min(3)
        );
        let _ = writeln!(
            s,
            "| variant | prompt blocks from cache | TTFT p50 | TTFT p99 | latency p99 |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|");
        let base = self.cell(cache, target, 1, Kind::Prefix, None);
        let mut variants: Vec<&str> = self
            .rows
            .iter()
            .filter_map(|r| r.variant)
            .filter(|v| *v != KV_EVENTS)
            .collect();
        variants.dedup();
        for (name, c) in std::iter::once(("as measured (work weight 16, spread 0.5)", base)).chain(
            variants
                .iter()
                .map(|v| (*v, self.cell(cache, target, 1, Kind::Prefix, Some(v)))),
        ) {
            let _ = writeln!(
                s,
                "| {name} | {:.1}% | {:.2} s | {:.2} s | {:.1} s |",
                100.0 * c.hit,
                c.ttft50,
                c.ttft99,
                c.latency99
            );
        }
        let _ = writeln!(s, "\n## Where the replicas lose time\n");
        let _ = writeln!(
            s,
            "Each pick of the new policy comes with its expected time to first token. Among the slowest 1% of requests, the share the router expected to take under half the time they took:\n"
        );
        let _ = writeln!(s, "| setting | one router | four replicas |");
        let _ = writeln!(s, "|---|---|---|");
        for (cache, target, _) in self.settings_list() {
            let one = self
                .cell(cache, target, 1, Kind::Prefix, None)
                .misjudged
                .unwrap_or(f64::NAN);
            let four = self
                .cell(cache, target, 4, Kind::Prefix, None)
                .misjudged
                .unwrap_or(f64::NAN);
            let _ = writeln!(
                s,
                "| {} blocks, {:.0}% busy | {:.0}% | {:.0}% |",
                thousands(cache),
                target * 100.0,
                100.0 * one,
                100.0 * four
            );
        }
        s.push('\n');
        s.push_str(NOTES);
        s
    }

    /// TTFT p99 against prompt blocks from cache, one panel per setting.
    pub fn svg(&self) -> String {
        let (w, h) = (900.0, 720.0);
        let (pw, ph) = (330.0, 230.0);
        let colors = ["#999", "#37b", "#e90", "#a6d", "#8a5", "#d33"];
        let mut svg = format!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="20" y="24" font-size="15">TTFT p99 (log scale) against prompt blocks served from cache; filled: one router, open: four replicas</text>
<text x="20" y="42" font-size="11" fill="#555">Mooncake conversation trace (Qin et al., FAST 2025; kvcache-ai/Mooncake, Apache-2.0), 16 simulated engines, medians over {} seeds</text>
"##,
            self.seeds
        );
        let max = self
            .rows
            .iter()
            .filter(|r| r.variant.is_none())
            .map(|r| r.cell.ttft99)
            .fold(1.0f64, f64::max);
        let (lo, hi) = (0.0f64, max.log10().ceil().max(1.0));
        for (p, (cache, target, _)) in self.settings_list().enumerate() {
            let (ox, oy) = (
                70.0 + (p % 2) as f64 * (pw + 90.0),
                80.0 + (p / 2) as f64 * (ph + 70.0),
            );
            let x = |hit: f64| ox + hit / 0.4 * pw;
            let y = |v: f64| oy + ph - (v.max(1.0).log10() - lo) / (hi - lo) * ph;
            let _ = writeln!(
                svg,
                r##"<rect x="{ox}" y="{oy}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/><text x="{}" y="{}" text-anchor="middle">{} blocks per engine, {:.0}% of slots busy</text>"##,
                ox + pw / 2.0,
                oy - 8.0,
                thousands(cache),
                target * 100.0
            );
            for e in 0..=(hi as i32) {
                let v = 10f64.powi(e);
                let _ = writeln!(
                    svg,
                    r##"<line x1="{ox}" x2="{}" y1="{}" y2="{}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{v} s</text>"##,
                    ox + pw,
                    y(v),
                    y(v),
                    ox - 6.0,
                    y(v) + 4.0
                );
            }
            for k in 0..=4 {
                let hit = k as f64 * 0.1;
                let _ = writeln!(
                    svg,
                    r#"<text x="{}" y="{}" text-anchor="middle">{:.0}%</text>"#,
                    x(hit),
                    oy + ph + 16.0,
                    hit * 100.0
                );
            }
            for (i, kind) in KINDS.iter().enumerate() {
                for replicas in [1, 4] {
                    let c = self.cell(cache, target, replicas, *kind, None);
                    let fill = if replicas == 1 { colors[i] } else { "white" };
                    let _ = writeln!(
                        svg,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="6" fill="{fill}" stroke="{}" stroke-width="2"/>"#,
                        x(c.hit),
                        y(c.ttft99),
                        colors[i]
                    );
                }
            }
        }
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">x: prompt blocks served from cache; y: time to first token, p99</text>"##,
            w / 2.0,
            h - 64.0
        );
        for (i, kind) in KINDS.iter().enumerate() {
            let (lx, ly) = (
                70.0 + (i % 3) as f64 * 270.0,
                h - 30.0 + (i / 3) as f64 * 18.0 - 10.0,
            );
            let _ = writeln!(
                svg,
                r#"<circle cx="{lx}" cy="{ly}" r="6" fill="{}"/><text x="{}" y="{}">{}</text>"#,
                colors[i],
                lx + 12.0,
                ly + 4.0,
                kind.name()
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// The prose that follows the figures: how to read them, the policy, the baselines.
const NOTES: &str = include_str!("notes.md");

/// The variant of the new policy whose routers subscribe to the engines' KV events.
pub const KV_EVENTS: &str = "fed the engines' KV events";
