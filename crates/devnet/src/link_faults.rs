//! Link faults for the development network, as CITA-Cloud's chaos suite injects them with
//! netem: delay with jitter, loss, duplication, corruption (bytes of the payload
//! flipped), a bandwidth cap, and partition, on every message to or from chosen nodes.
//!
//! A rule is one line of `key=value` words, e.g.
//! `nodes=1,2 delay=500ms jitter=100ms loss=75% duplicate=75% corrupt=75% rate=1mbps`;
//! `partition` alone cuts the chosen nodes off from the others; `down` stops the chosen
//! nodes' network service itself, as a killed network container would (its port refuses
//! connections and it forgets every registration until the rule is lifted). A file holds
//! one rule per line (`#` comments); the first rule naming either end of a message
//! applies.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// One rule.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkFaults {
    /// Messages to or from these nodes (1-based) are affected.
    pub nodes: BTreeSet<u64>,
    /// Added to every message's delivery.
    pub delay: Duration,
    /// Uniform ± around `delay`.
    pub jitter: Duration,
    /// Probability (0 to 1) a message is dropped.
    pub loss: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// Probability a message has bytes of its payload flipped.
    pub corrupt: f64,
    /// Bits per second each affected link carries; messages queue behind each other.
    pub rate_bps: Option<u64>,
    /// Cut the nodes off from every node not in `nodes`.
    pub partition: bool,
    /// The nodes' network service is down: nothing is delivered to or from them, their
    /// port is closed, and their registrations are forgotten.
    pub down: bool,
}

impl LinkFaults {
    /// A rule that changes nothing, for `nodes`.
    pub fn none(nodes: impl IntoIterator<Item = u64>) -> Self {
        Self {
            nodes: nodes.into_iter().collect(),
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            corrupt: 0.0,
            rate_bps: None,
            partition: false,
            down: false,
        }
    }

    /// Whether a message from `from` to `to` is affected.
    pub fn covers(&self, from: u64, to: u64) -> bool {
        self.nodes.contains(&from) || self.nodes.contains(&to)
    }

    /// Whether the rule cuts the link `from` → `to`.
    pub fn cuts(&self, from: u64, to: u64) -> bool {
        self.partition && (self.nodes.contains(&from) != self.nodes.contains(&to))
    }

    /// Parses a faults file: one rule per line, blank lines and `#` comments ignored.
    pub fn parse_file(text: &str) -> Result<Vec<LinkFaults>, String> {
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(str::parse)
            .collect()
    }
}

/// Parses `500ms`, `2s`, `100us` or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (e.g. 500ms, 2s)");
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "ms"),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || !(0.0..=3600.0).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `75%`, `75` (percent) or `0.75` (a fraction below 1).
pub fn parse_probability(s: &str) -> Result<f64, String> {
    let bad = || format!("{s:?} is not a percentage (e.g. 75%)");
    let p = match s.strip_suffix('%') {
        Some(n) => n.parse::<f64>().map_err(|_| bad())? / 100.0,
        None => {
            let n = s.parse::<f64>().map_err(|_| bad())?;
            if n < 1.0 {
                n
            } else {
                n / 100.0
            }
        }
    };
    if !(0.0..=1.0).contains(&p) {
        return Err(bad());
    }
    Ok(p)
}

/// Parses `1mbps`, `500kbps`, `8000bps` (bits per second).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a rate (e.g. 1mbps)");
    let lower = s.to_ascii_lowercase();
    let (num, factor) = if let Some(n) = lower.strip_suffix("gbps") {
        (n.to_string(), 1e9)
    } else if let Some(n) = lower.strip_suffix("mbps") {
        (n.to_string(), 1e6)
    } else if let Some(n) = lower.strip_suffix("kbps") {
        (n.to_string(), 1e3)
    } else if let Some(n) = lower.strip_suffix("bps") {
        (n.to_string(), 1.0)
    } else {
        return Err(bad());
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let bps = n * factor;
    if !bps.is_finite() || bps < 1.0 {
        return Err(bad());
    }
    Ok(bps as u64)
}

impl FromStr for LinkFaults {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        let mut rule = LinkFaults::none([]);
        for word in line.split_whitespace() {
            if word == "partition" {
                rule.partition = true;
                continue;
            }
            if word == "down" {
                rule.down = true;
                continue;
            }
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| format!("{word:?} is not key=value"))?;
            match key {
                "nodes" => {
                    rule.nodes = value
                        .split(',')
                        .map(|n| {
                            n.trim()
                                .parse::<u64>()
                                .ok()
                                .filter(|n| *n > 0)
                                .ok_or_else(|| format!("{n:?} is not a node number"))
                        })
                        .collect::<Result<_, _>>()?
                }
                "delay" => rule.delay = parse_duration(value)?,
                "jitter" => rule.jitter = parse_duration(value)?,
                "loss" => rule.loss = parse_probability(value)?,
                "duplicate" => rule.duplicate = parse_probability(value)?,
                "corrupt" => rule.corrupt = parse_probability(value)?,
                "rate" => rule.rate_bps = Some(parse_rate(value)?),
                other => return Err(format!("unknown fault {other:?}")),
            }
        }
        if rule.nodes.is_empty() {
            return Err(format!("{line:?} names no nodes (nodes=1,2)"));
        }
        Ok(rule)
    }
}

impl fmt::Display for LinkFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<String> = self.nodes.iter().map(u64::to_string).collect();
        write!(f, "nodes={}", nodes.join(","))?;
        if !self.delay.is_zero() {
            write!(f, " delay={}ms", self.delay.as_millis())?;
        }
        if !self.jitter.is_zero() {
            write!(f, " jitter={}ms", self.jitter.as_millis())?;
        }
        for (name, p) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("corrupt", self.corrupt),
        ] {
            if p > 0.0 {
                write!(f, " {name}={}%", p * 100.0)?;
            }
        }
        if let Some(r) = self.rate_bps {
            write!(f, " rate={r}bps")?;
        }
        if self.partition {
            write!(f, " partition")?;
        }
        if self.down {
            write!(f, " down")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rules_parse_and_print_back() {
        let rule: LinkFaults =
            "nodes=1,2 delay=500ms jitter=100ms loss=75% duplicate=0.5 corrupt=75 rate=1mbps"
                .parse()
                .unwrap();
        assert_eq!(rule.nodes, [1, 2].into());
        assert_eq!(rule.delay, Duration::from_millis(500));
        assert_eq!(rule.jitter, Duration::from_millis(100));
        assert_eq!((rule.loss, rule.duplicate, rule.corrupt), (0.75, 0.5, 0.75));
        assert_eq!(rule.rate_bps, Some(1_000_000));
        assert_eq!(rule.to_string().parse::<LinkFaults>().unwrap(), rule);
        let cut: LinkFaults = "nodes=3 partition".parse().unwrap();
        assert!(cut.cuts(3, 1) && cut.cuts(1, 3) && !cut.cuts(1, 2));
        assert!(cut.covers(2, 3) && !cut.covers(1, 2));
        let down: LinkFaults = "nodes=1,2 down".parse().unwrap();
        assert!(down.down && !down.partition);
        assert_eq!(down.to_string(), "nodes=1,2 down");
    }

    #[test]
    fn bad_rules_are_refused_with_the_word() {
        for (line, word) in [
            ("delay=5ms", "names no nodes"),
            ("nodes=0", "node number"),
            ("nodes=1 loss=175%", "percentage"),
            ("nodes=1 delay=fast", "duration"),
            ("nodes=1 rate=10", "rate"),
            ("nodes=1 flood=1", "unknown fault"),
            ("nodes=1 delay", "key=value"),
        ] {
            let e = line.parse::<LinkFaults>().unwrap_err();
            assert!(e.contains(word), "{line}: {e}");
        }
        assert_eq!(
            LinkFaults::parse_file("# none\n\nnodes=1 loss=10%\n")
                .unwrap()
                .len(),
            1
        );
    }
}
