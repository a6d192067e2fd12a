//! Progress output: the classic `Messages published: N` lines every K messages, exactly
//! as the original demo printed them, plus a live bar with rate and ETA when stderr is
//! a terminal.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Counts messages and prints a progress line every `every` of them.
pub struct Progress {
    label: &'static str,
    every: u64,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// `label` is the start of each line, e.g. `"Messages published"`; `every` = 0 turns
    /// the lines off. `total` sizes the bar.
    pub fn new(label: &'static str, every: u64, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} ETA {eta} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Progress { label, every, bar }
    }

    /// Called with the running count after each message.
    #[inline]
    pub fn update(&self, count: u64) {
        if self.every > 0 && count.is_multiple_of(self.every) {
            let line = format!("{}: {count}", self.label);
            match &self.bar {
                Some(bar) => {
                    bar.set_position(count);
                    bar.println(line);
                }
                None => {
                    let _ = writeln!(std::io::stderr().lock(), "{line}");
                }
            }
        } else if let Some(bar) = &self.bar {
            if count.is_multiple_of(256) {
                bar.set_position(count);
            }
        }
    }

    /// Removes the bar before the summary is printed.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
