//! Adaptive decode thread count: graceful degradation on busy cores.
//!
//! Measured on a 2-core machine (README, "Busy cores"): with both cores free, 2 decode threads
//! beat 1 by about 1.5x; with one core kept busy by another process, 2 threads collapse to a
//! third of their speed (each step waits at a barrier for the descheduled thread) while 1
//! thread loses nothing. Phones are always in the second case some of the time. So the engine
//! starts at the configured maximum and watches its own per-token decode time:
//!
//! - at start-up it tries one thread fewer for one window and keeps the faster;
//! - a window much slower than the best seen at the current count means contention: step down;
//! - below the maximum it probes one thread more now and then, with exponential backoff, and
//!   steps back up when that is faster.
//!
//! Quiet machines pay one short probe per context; busy ones keep most of their speed.

/// Tokens per measurement window.
const WINDOW: u32 = 8;
/// A window this much slower than the best at the same count signals contention.
const SLOW: f64 = 1.6;
/// First and largest gap, in tokens, between probes back up.
const PROBE_FIRST: u32 = 128;
const PROBE_MAX: u32 = 1024;

/// Decides the decode thread count from measured step times.
#[derive(Debug)]
pub(crate) struct Governor {
    max: u32,
    current: u32,
    /// Best window mean (ms/token) seen per thread count, index = threads.
    best: Vec<f64>,
    sum: f64,
    n: u32,
    /// Tokens until the next probe up.
    until_probe: u32,
    backoff: u32,
    /// While probing: the thread count to return to, its last window mean, and whether this is
    /// the start-up descent.
    probe_from: Option<(u32, f64, bool)>,
    started: bool,
}

impl Governor {
    pub(crate) fn new(max: u32) -> Self {
        let max = max.max(1);
        Self {
            max,
            current: max,
            best: vec![f64::INFINITY; max as usize + 1],
            sum: 0.0,
            n: 0,
            until_probe: PROBE_FIRST,
            backoff: PROBE_FIRST,
            probe_from: None,
            started: false,
        }
    }

    /// Records one single-token decode step; returns the new thread count when it changes.
    pub(crate) fn record(&mut self, ms: f64) -> Option<u32> {
        self.sum += ms;
        self.n += 1;
        if self.n < WINDOW {
            return None;
        }
        let mean = self.sum / f64::from(self.n);
        self.sum = 0.0;
        self.n = 0;
        let k = self.current as usize;
        // Slow upward drift, so a longer context (slower steps) is not read as contention forever.
        self.best[k] = (self.best[k] * 1.02).min(mean);

        if let Some((home, home_mean, descending)) = self.probe_from.take() {
            if mean < home_mean * 0.95 {
                self.backoff = PROBE_FIRST;
                self.until_probe = self.backoff;
                // The probe is faster: stay; at start-up keep descending while that pays.
                if descending && self.current > 1 {
                    self.probe_from = Some((self.current, mean, true));
                    return self.set(self.current - 1);
                }
                return None;
            }
            self.backoff = (self.backoff * 2).min(PROBE_MAX);
            self.until_probe = self.backoff;
            return self.set(home);
        }
        if !self.started {
            self.started = true;
            if self.current > 1 {
                self.probe_from = Some((self.current, mean, true));
                return self.set(self.current - 1);
            }
        }
        if self.current > 1 && mean > SLOW * self.best[k] {
            log::debug!(
                "decode step {mean:.2} ms vs best {:.2} ms at {k} threads: stepping down",
                self.best[k]
            );
            self.until_probe = self.backoff;
            return self.set(self.current - 1);
        }
        if self.current < self.max {
            self.until_probe = self.until_probe.saturating_sub(WINDOW);
            if self.until_probe == 0 {
                self.probe_from = Some((self.current, mean, false));
                return self.set(self.current + 1);
            }
        }
        None
    }

    fn set(&mut self, n: u32) -> Option<u32> {
        (n != self.current).then(|| {
            self.current = n;
            n
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates a machine: ms per token as a function of threads and contention.
    fn run(g: &mut Governor, tokens: u32, cost: impl Fn(u32) -> f64) -> f64 {
        let mut total = 0.0;
        for _ in 0..tokens {
            let ms = cost(g.current);
            total += ms;
            g.record(ms);
        }
        total
    }

    #[test]
    fn quiet_machine_stays_at_max_after_the_start_probe() {
        let mut g = Governor::new(2);
        let quiet = |t: u32| if t == 2 { 7.5 } else { 12.0 };
        let total = run(&mut g, 2000, quiet);
        assert_eq!(g.current, 2);
        assert!(
            total < 2000.0 * 7.5 * 1.01,
            "quiet overhead {:.2}%",
            (total / (2000.0 * 7.5) - 1.0) * 100.0
        );
    }

    #[test]
    fn contention_steps_down_and_recovers() {
        let mut g = Governor::new(2);
        run(&mut g, 200, |t| if t == 2 { 7.5 } else { 12.0 });
        assert_eq!(g.current, 2);
        let busy = |t: u32| if t == 2 { 25.0 } else { 12.0 };
        let total = run(&mut g, 2000, busy);
        assert_eq!(g.current, 1);
        assert!(
            total < 2000.0 * 12.0 * 1.10,
            "busy cost {:.1} ms/token",
            total / 2000.0
        );
        run(&mut g, 1100, |t| if t == 2 { 7.5 } else { 12.0 });
        assert_eq!(g.current, 2, "back up once the core is free again");
    }

    #[test]
    fn starting_under_contention_finds_the_better_count() {
        let mut g = Governor::new(2);
        run(&mut g, 100, |t| if t == 2 { 25.0 } else { 12.0 });
        assert_eq!(g.current, 1);
    }

    #[test]
    fn start_up_descends_past_slow_cores() {
        // Eight cores, four of them slow: four threads is best.
        let mut g = Governor::new(8);
        run(&mut g, 400, |t| {
            [0.0, 40.0, 21.0, 15.0, 11.0, 14.0, 16.0, 18.0, 20.0][t as usize]
        });
        assert_eq!(g.current, 4);
    }

    #[test]
    fn single_thread_never_changes() {
        let mut g = Governor::new(1);
        run(&mut g, 500, |_| 10.0);
        assert_eq!(g.current, 1);
    }
}
