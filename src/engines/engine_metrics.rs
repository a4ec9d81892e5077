//! vLLM's and SGLang's Prometheus metrics, as a [`LoadReport`].
//!
//! | figure | vLLM | SGLang | over several series |
//! |---|---|---|---|
//! | `waiting` | `vllm:num_requests_waiting` | `sglang:num_queue_reqs` | summed |
//! | `running` | `vllm:num_requests_running` | `sglang:num_running_reqs` | summed |
//! | `kv_usage` | `vllm:kv_cache_usage_perc` (V1), else `vllm:gpu_cache_usage_perc` (V0) | `sglang:token_usage` | mean |
//! | `kv_blocks`, `kv_block_size` | labels `num_gpu_blocks`, `block_size` of `vllm:cache_config_info` | | blocks summed |
//! | `kv_tokens` | | `sglang:max_total_num_tokens` | summed |
//! | `prefilling` | `prefix_cache_queries_total − prefix_cache_hits_total − prompt_tokens_by_source_total{source="local_compute"}` | | summed, at least 0 |
//!
//! `prefilling`, the prompt tokens scheduled and not computed yet, comes from three vLLM
//! counters of the same scrape: a request's prompt tokens and those found cached count when it
//! is scheduled, the tokens computed when its prefill ends. It is given only when all three
//! are there.
//!
//! Both engines label their gauges (`model_name`; vLLM adds `engine` per data-parallel engine,
//! SGLang its ranks, reporting from one rank per data-parallel group). A server with several
//! engines has one queue and one batch per engine, so counts add up; each engine has its own
//! KV cache of the same size, so the usage is their mean, the share of the server's whole
//! cache in use. (vLLM's `_perc` gauges are fractions in `0..=1`, despite the name.)
//!
//! A body that holds none of these metrics gives no report: the endpoint is not one of these
//! engines, or its metrics are off.

use tokio::time::Instant;

use super::prometheus::samples;
use crate::report::{count, size, LoadReport};

#[derive(Default)]
struct Sum {
    total: f64,
    n: u32,
}

impl Sum {
    fn add(&mut self, v: f64) {
        if v.is_finite() {
            self.total += v;
            self.n += 1;
        }
    }
    fn sum(&self) -> Option<f64> {
        (self.n > 0).then_some(self.total)
    }
    fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.total / f64::from(self.n))
    }
}

#[derive(Default)]
struct Figures {
    waiting: Sum,
    running: Sum,
    kv: Sum,
    kv_v0: Sum,
    blocks: Sum,
    block_size: Option<f64>,
    tokens: Sum,
    queries: Sum,
    hits: Sum,
    computed: Sum,
}

impl Figures {
    fn any(&self) -> bool {
        self.waiting.n + self.running.n + self.kv.n + self.kv_v0.n + self.blocks.n + self.tokens.n
            > 0
    }
}

/// Reads a `/metrics` body from vLLM or SGLang into a report measured at `at`; `None` if it
/// holds neither engine's load metrics.
pub fn from_prometheus(text: &[u8], at: Instant) -> Option<LoadReport> {
    let (mut vllm, mut sglang) = (Figures::default(), Figures::default());
    for s in samples(text) {
        match s.name {
            "vllm:num_requests_waiting" => vllm.waiting.add(s.value),
            "vllm:num_requests_running" => vllm.running.add(s.value),
            "vllm:kv_cache_usage_perc" => vllm.kv.add(s.value),
            "vllm:gpu_cache_usage_perc" => vllm.kv_v0.add(s.value),
            "vllm:prefix_cache_queries_total" => vllm.queries.add(s.value),
            "vllm:prefix_cache_hits_total" => vllm.hits.add(s.value),
            "vllm:prompt_tokens_by_source_total"
                if s.label("source").as_deref() == Some("local_compute") =>
            {
                vllm.computed.add(s.value)
            }
            "vllm:cache_config_info" => {
                let number = |name| s.label(name).and_then(|v| v.trim().parse::<f64>().ok());
                if let Some(blocks) = number("num_gpu_blocks") {
                    vllm.blocks.add(blocks);
                }
                vllm.block_size = vllm.block_size.or_else(|| number("block_size"));
            }
            "sglang:num_queue_reqs" => sglang.waiting.add(s.value),
            "sglang:num_running_reqs" => sglang.running.add(s.value),
            "sglang:token_usage" => sglang.kv.add(s.value),
            "sglang:max_total_num_tokens" => sglang.tokens.add(s.value),
            _ => {}
        }
    }
    let f = if vllm.any() {
        vllm
    } else if sglang.any() {
        sglang
    } else {
        return None;
    };
    let mut report = LoadReport::new(at);
    report.waiting = f.waiting.sum().and_then(count);
    report.running = f.running.sum().and_then(count);
    if let Some(kv) = f.kv.mean().or_else(|| f.kv_v0.mean()) {
        report = report.kv_usage(kv);
    }
    report.kv_blocks = f.blocks.sum().and_then(size);
    report.kv_block_size = f.block_size.and_then(size);
    report.kv_tokens = f.tokens.sum().and_then(size);
    if let (Some(queries), Some(hits), Some(computed)) =
        (f.queries.sum(), f.hits.sum(), f.computed.sum())
    {
        report.prefilling = size((queries - hits - computed).max(0.0));
    }
    Some(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of a vLLM V1 server's output with two data-parallel engines (abridged).
    const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 10.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.9
vllm:kv_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.5
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="True",engine="0",gpu_memory_utilization="0.9",num_cpu_blocks="None",num_gpu_blocks="2789",num_gpu_blocks_override="None"} 1.0
vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="True",engine="1",gpu_memory_utilization="0.9",num_cpu_blocks="None",num_gpu_blocks="2789",num_gpu_blocks_override="None"} 1.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:prefix_cache_queries Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 90000.0
vllm:prefix_cache_queries_total{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 50000.0
# HELP vllm:prefix_cache_hits Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 30000.0
vllm:prefix_cache_hits_total{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 10000.0
# HELP vllm:prompt_tokens_by_source Number of prompt tokens by source.
# TYPE vllm:prompt_tokens_by_source counter
vllm:prompt_tokens_by_source_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct",source="local_compute"} 56000.0
vllm:prompt_tokens_by_source_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct",source="local_cache_hit"} 30000.0
vllm:prompt_tokens_by_source_total{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct",source="local_compute"} 40000.0
vllm:prompt_tokens_by_source_total{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct",source="local_cache_hit"} 10000.0
"#;

    /// The shape of SGLang's output (from its production metrics documentation, abridged).
    const SGLANG: &str = r#"# HELP sglang:max_total_num_tokens Maximum total number of tokens
# TYPE sglang:max_total_num_tokens gauge
sglang:max_total_num_tokens{model_name="meta-llama/Llama-3.1-8B-Instruct"} 161721.0
# HELP sglang:token_usage The token usage
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.28
# HELP sglang:num_running_reqs The number of running requests
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 31.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 2.0
"#;

    #[test]
    fn vllm_engines_add_up_and_share_a_cache() {
        let at = Instant::now();
        let r = from_prometheus(VLLM.as_bytes(), at).unwrap();
        assert_eq!((r.waiting, r.running), (Some(3), Some(22)));
        assert!((r.kv_usage.unwrap() - 0.7).abs() < 1e-9);
        assert_eq!((r.kv_blocks, r.kv_block_size), (Some(5578), Some(16)));
        assert_eq!(r.kv_capacity_tokens(), Some(5578 * 16));
        assert_eq!(r.measured_at, at);
        // Scheduled and not cached, less computed: (60,000 − 56,000) + (40,000 − 40,000).
        assert_eq!(r.prefilling, Some(4_000));
    }

    #[test]
    fn the_prefill_under_way_needs_all_three_counters() {
        let at = Instant::now();
        let partial = "vllm:num_requests_waiting 1
vllm:prefix_cache_queries_total 500
vllm:prefix_cache_hits_total 100
";
        let r = from_prometheus(partial.as_bytes(), at).unwrap();
        assert_eq!(r.prefilling, None);
        // Counters read a moment apart can cross: never below zero.
        let crossed = format!(
            "{partial}vllm:prompt_tokens_by_source_total{{source=\"local_compute\"}} 450\n\
             vllm:prompt_tokens_by_source_total{{source=\"local_cache_hit\"}} 100\n"
        );
        let r = from_prometheus(crossed.as_bytes(), at).unwrap();
        assert_eq!(r.prefilling, Some(0));
        assert_eq!(
            from_prometheus(SGLANG.as_bytes(), at).unwrap().prefilling,
            None
        );
    }

    #[test]
    fn vllm_v0_cache_gauge_is_the_fallback() {
        let text = "vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.25\nvllm:num_requests_waiting{model_name=\"m\"} 1\n";
        let r = from_prometheus(text.as_bytes(), Instant::now()).unwrap();
        assert_eq!(
            (r.kv_usage, r.waiting, r.running),
            (Some(0.25), Some(1), None)
        );
    }

    #[test]
    fn sglang() {
        let r = from_prometheus(SGLANG.as_bytes(), Instant::now()).unwrap();
        assert_eq!((r.waiting, r.running), (Some(2), Some(31)));
        assert_eq!((r.kv_usage, r.kv_tokens), (Some(0.28), Some(161_721)));
    }

    #[test]
    fn other_metrics_give_no_report() {
        let text = "process_cpu_seconds_total 12.5\nhttp_requests_total{code=\"200\"} 1027\n";
        assert_eq!(from_prometheus(text.as_bytes(), Instant::now()), None);
        assert_eq!(from_prometheus(b"", Instant::now()), None);
        // Nonsense values are dropped, not turned into counts.
        let r = from_prometheus(
            b"vllm:num_requests_waiting -3\nvllm:num_requests_running NaN\n",
            Instant::now(),
        );
        assert_eq!(r.map(|r| (r.waiting, r.running)), Some((None, None)));
    }
}
