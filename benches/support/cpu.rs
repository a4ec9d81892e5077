//! The process's CPU time, for figures that hold on a machine where other work takes turns on
//! the cores: a request's time on the cores rather than its wall-clock time.

/// User plus system CPU time of this process so far, in seconds, from `/proc/self/stat`
/// (Linux); `None` elsewhere.
pub(crate) fn seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    // The kernel counts in clock ticks of 1/100 s on Linux's usual configuration.
    Some((user + system) / 100.0)
}
