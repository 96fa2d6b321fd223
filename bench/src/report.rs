//! BENCHMARKS.md: what was measured, how, on what, and every figure,
//! including those that miss their targets.
use std::fmt::Write as _;

pub struct Table {
    pub title: String,
    pub how: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// One target from the issue, and whether this run met it.
pub struct Target {
    pub what: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Default)]
pub struct Report {
    pub command: String,
    pub tables: Vec<Table>,
    pub plots: Vec<crate::plot::Plot>,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn table(&mut self, title: &str, how: &str, header: &[&str], rows: Vec<Vec<String>>) {
        self.tables.push(Table {
            title: title.into(),
            how: how.into(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows,
        });
    }

    pub fn plot(
        &mut self,
        file: &str,
        title: &str,
        y_label: &str,
        lines: Vec<(String, Vec<(f64, f64)>)>,
    ) {
        self.plots.push(crate::plot::Plot {
            file: file.into(),
            title: title.into(),
            y_label: y_label.into(),
            lines,
        });
    }

    pub fn target(&mut self, what: &str, measured: String, met: bool) {
        self.targets.push(Target {
            what: what.into(),
            measured,
            met,
        });
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# ferrolb benchmarks\n");
        let _ = writeln!(
            s,
            "Produced by `{}` at commit {} on {}. Every figure this run produced is here, met target or not. \
             Absolute times on a shared VM are noisy; the comparisons that matter are the ratios \
             measured in the same run.\n",
            self.command,
            commit(),
            machine()
        );
        let _ = writeln!(s, "## Targets\n");
        let _ = writeln!(s, "| target | measured | met |\n|---|---|---|");
        for t in &self.targets {
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                t.what,
                t.measured,
                if t.met { "yes" } else { "**no**" }
            );
        }
        for t in &self.tables {
            let _ = writeln!(s, "\n## {}\n\n{}\n", t.title, t.how);
            let _ = writeln!(s, "| {} |", t.header.join(" | "));
            let _ = writeln!(s, "|{}", "---|".repeat(t.header.len()));
            for r in &t.rows {
                let _ = writeln!(s, "| {} |", r.join(" | "));
            }
        }
        if !self.plots.is_empty() {
            let _ = writeln!(s, "\n## Plots\n");
            for p in &self.plots {
                let _ = writeln!(s, "![{}](docs/bench/{})\n", p.title, p.file);
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        for t in &self.targets {
            let _ = writeln!(
                s,
                "{} {}: {}",
                if t.met { "[met]   " } else { "[MISSED]" },
                t.what,
                t.measured
            );
        }
        s
    }
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| format!("{} GiB", kb / 1024 / 1024))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem}, Linux {}", kernel.trim())
}
