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
//!
//! Only steady-state steps are measured. The first decode steps of a request (after a prefill
//! the scheduler builds a new graph for one-token batches) and the first step after a thread
//! count change are slow on every machine, and on some (a 2-core Xeon VM) slow enough that a
//! window holding one of them read as contention: the governor then settled on one thread on
//! a quiet machine and lost up to 40% of decode speed. So the governor now skips those steps,
//! and steps down only when two windows in a row are much slower than the best at this count
//! and slower than one thread fewer has been: a noisy phase or a single burst on a quiet
//! machine is neither. Windows are summarised by their mean, not their median: under a busy
//! core the cost is in rare long stalls (seen: 24 ms steps with a 160 ms stall every six), which
//! a median hides.
//!
//! Prompt evaluation follows decode's decision: while decode has settled below its maximum, the
//! next prefill runs on the same share of the prompt threads (a probe in flight is not a
//! decision). A busy core costs a prefill as it costs decode; measured on a 2-core Zen 3 EPYC,
//! this lifted prefill under a busy core 2.7x (README, "Thread governor"). The price is paid
//! when the core frees again: prefill, like decode, waits for the next probe up.
/// Tokens per measurement window.
const WINDOW: u32 = 8;
/// A window this much slower than the best at the same count signals contention.
const SLOW: f64 = 1.6;
/// Steps skipped at the start of a request, and after a thread count change.
const WARMUP_REQUEST: u32 = 2;
const WARMUP_SWITCH: u32 = 1;
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
    /// Step times of the window being filled.
    window: Vec<f64>,
    /// Steps still to skip before measuring.
    skip: u32,
    /// Consecutive windows that looked like contention.
    slow_streak: u32,
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
            window: Vec::with_capacity(WINDOW as usize),
            skip: 0,
            slow_streak: 0,
            until_probe: PROBE_FIRST,
            backoff: PROBE_FIRST,
            probe_from: None,
            started: false,
        }
    }

    /// A new request starts decoding: its first steps are warm-up, not measurements.
    pub(crate) fn start_request(&mut self) {
        self.window.clear();
        self.skip = WARMUP_REQUEST;
    }

    /// The thread count in force.
    pub(crate) fn current(&self) -> u32 {
        self.current
    }

    /// Threads for the next prompt evaluation, out of `batch` configured: all of them while
    /// decode runs at its maximum, else the same share of them decode has settled on. A busy
    /// core stalls a prefill's barriers as it stalls decode's (measured on a 2-core Zen 3
    /// EPYC: prefill at 0.28x of its quiet speed on 2 threads). A probe in flight does not
    /// count; the count it returns to does.
    pub(crate) fn prefill_threads(&self, batch: u32) -> u32 {
        let settled = self.probe_from.map_or(self.current, |(home, _, _)| home);
        if settled >= self.max {
            return batch;
        }
        let scaled = (u64::from(batch) * u64::from(settled)).div_ceil(u64::from(self.max));
        // settled < max, so the share never exceeds the batch count.
        u32::try_from(scaled).unwrap_or(batch).max(1)
    }

    /// Records one single-token decode step; returns the new thread count when it changes.
    pub(crate) fn record(&mut self, ms: f64) -> Option<u32> {
        log::trace!(
            "decode step {ms:.3} ms at {} threads (skip {})",
            self.current,
            self.skip
        );
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        self.window.push(ms);
        if self.window.len() < WINDOW as usize {
            return None;
        }
        let mean = self.window.iter().sum::<f64>() / f64::from(WINDOW);
        self.window.clear();
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
        // Step down only when two windows in a row are much slower than the best at this count
        // and slower than one thread fewer has been: a noisy phase or one burst on a quiet
        // machine is still faster than one thread fewer, a busy core is not.
        let below = self.best[k.saturating_sub(1)];
        let slow = mean > SLOW * self.best[k] && (!below.is_finite() || mean > below);
        self.slow_streak = if slow { self.slow_streak + 1 } else { 0 };
        if self.current > 1 && self.slow_streak >= 2 {
            log::debug!(
                "decode step {mean:.2} ms vs best {:.2} ms at {k} threads: stepping down",
                self.best[k]
            );
            self.slow_streak = 0;
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
            self.slow_streak = 0;
            log::debug!("decode threads {} -> {n}", self.current);
            self.current = n;
            self.skip = WARMUP_SWITCH;
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

    /// Per-token decode times shaped like those seen on a quiet 2-core Xeon VM (llama-bench
    /// tg at 2 threads about 85 tok/s, 1 thread about 51 tok/s): each request's first step pays
    /// a graph rebuild, the second is still slow, a thread switch costs one slow step, and
    /// every step jitters. `busy` models another process holding one core (recorded with
    /// `RUST_LOG=edgecascade::engine::local::governor=trace edgecascade bench`).
    fn trace(
        g: &mut Governor,
        requests: u32,
        tokens: u32,
        busy: impl Fn(u32) -> bool,
    ) -> (f64, u32) {
        let mut total = 0.0;
        let mut at_max = 0;
        let mut seed = 0x2545_f491_u32;
        let mut step = 0u32;
        let mut last_threads = g.current();
        for _ in 0..requests {
            g.start_request();
            for t in 0..tokens {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                let jitter = f64::from(seed % 1000) / 1000.0; // 0..1
                let threads = g.current();
                // Busy, as recorded on the Xeon VM with a spinning process on one core: two
                // threads step in about 24 ms with a 150-170 ms stall every sixth step, one
                // thread in 17-22 ms.
                let base = match (threads, busy(step)) {
                    (2, false) => 11.0 + 2.0 * jitter,
                    (2, true) if step % 6 == 5 => 150.0 + 20.0 * jitter,
                    (2, true) => 23.0 + 2.0 * jitter,
                    (_, true) => 17.0 + 5.0 * jitter,
                    (_, false) => 19.2 + 1.0 * jitter,
                };
                let ms = match t {
                    0 => base + 60.0,
                    1 => base + 12.0,
                    _ if threads != last_threads => base + 15.0,
                    _ => base,
                };
                last_threads = threads;
                total += ms;
                if threads == 2 {
                    at_max += 1;
                }
                g.record(ms);
                step += 1;
            }
        }
        (total / f64::from(requests * tokens), at_max)
    }

    #[test]
    fn recorded_quiet_requests_keep_both_threads() {
        // bench: 6 repetitions of 64 tokens; serve: six consecutive requests.
        let mut g = Governor::new(2);
        let (ms, at_max) = trace(&mut g, 6, 64, |_| false);
        assert_eq!(g.current(), 2);
        assert!(at_max >= 6 * 64 - 12, "{at_max} of 384 steps at 2 threads");
        let mut fixed = Governor::new(2);
        fixed.started = true; // never probes: the fixed policy
        let (fixed_ms, _) = trace(&mut fixed, 6, 64, |_| false);
        assert!(
            ms < fixed_ms * 1.03,
            "adaptive {ms:.2} vs fixed {fixed_ms:.2} ms/token"
        );
    }

    #[test]
    fn recorded_busy_core_steps_down() {
        let mut g = Governor::new(2);
        let (ms, at_max) = trace(&mut g, 6, 64, |_| true);
        assert_eq!(g.current(), 1);
        assert!(
            at_max < 40,
            "{at_max} of 384 steps at 2 threads under contention"
        );
        assert!(ms < 22.0, "{ms:.1} ms/token");
    }

    #[test]
    fn recorded_bursts_are_not_contention() {
        // Three slow steps every 50: a preempted step now and then, not a busy core.
        let mut g = Governor::new(2);
        let (_, at_max) = trace(&mut g, 6, 64, |s| s % 50 < 3);
        assert_eq!(g.current(), 2);
        assert!(at_max >= 6 * 64 - 12, "{at_max} of 384 steps at 2 threads");
    }

    #[test]
    fn noisy_phases_of_a_quiet_machine_keep_both_threads() {
        // Seen on a Xeon VM: 2-thread steps of about 7 ms for a while, then about 12.5 ms, while
        // one thread runs at 16 ms. A slow phase is 1.7x the best window, but one thread fewer
        // would still be slower: no reason to step down.
        let mut g = Governor::new(2);
        let mut at_max = 0;
        for step in 0..2000u32 {
            let ms = match (g.current(), (step / 16) % 2) {
                (2, 0) => 7.0,
                (2, _) => 12.5,
                _ => 16.0,
            };
            at_max += u32::from(g.current() == 2);
            g.record(ms);
        }
        assert_eq!(g.current(), 2);
        assert!(at_max >= 1980, "{at_max} of 2000 steps at 2 threads");
    }

    #[test]
    fn contention_that_starts_mid_run_is_seen_and_left() {
        let mut g = Governor::new(2);
        trace(&mut g, 2, 64, |_| false);
        assert_eq!(g.current(), 2);
        trace(&mut g, 4, 64, |_| true);
        assert_eq!(g.current(), 1);
        trace(&mut g, 40, 64, |_| false);
        assert_eq!(g.current(), 2, "back up once the core is free again");
    }

    #[test]
    fn prefill_follows_the_settled_count_not_a_probe() {
        let mut g = Governor::new(2);
        // Quiet: the start-up probe to one thread is in flight, prefill keeps both.
        trace(&mut g, 1, 12, |_| false);
        assert_eq!(g.current(), 1, "the start-up probe");
        assert_eq!(g.prefill_threads(2), 2);
        trace(&mut g, 2, 64, |_| false);
        assert_eq!((g.current(), g.prefill_threads(2)), (2, 2));
        // A busy core: decode steps down, and so does prefill.
        trace(&mut g, 4, 64, |_| true);
        assert_eq!((g.current(), g.prefill_threads(2)), (1, 1));
        // A probe back up in flight is not yet a decision.
        let mut probes = 0;
        while g.current() == 1 && probes < 2000 {
            g.record(17.0);
            probes += 1;
        }
        assert_eq!(g.current(), 2, "a probe up within 2000 steps");
        assert_eq!(g.prefill_threads(2), 1, "a probe up is not a decision");
        // The core is free again: both follow back up, at the latest one probe gap (at most
        // PROBE_MAX decode tokens) later.
        let mut requests = 0;
        while g.prefill_threads(2) < 2 && requests < 100 {
            trace(&mut g, 1, 64, |_| false);
            requests += 1;
        }
        assert_eq!((g.current(), g.prefill_threads(2)), (2, 2));
        assert!(
            requests * 64 <= PROBE_MAX + 4 * WINDOW,
            "{requests} quiet requests of 64 tokens before prefill used both threads again"
        );
    }

    #[test]
    fn prefill_scales_a_larger_prompt_pool() {
        let mut g = Governor::new(8);
        run(&mut g, 400, |t| {
            [0.0, 40.0, 21.0, 15.0, 11.0, 14.0, 16.0, 18.0, 20.0][t as usize]
        });
        assert_eq!(g.current(), 4);
        assert_eq!(g.prefill_threads(8), 4);
        assert_eq!(g.prefill_threads(6), 3);
        assert_eq!(g.prefill_threads(1), 1);
        assert_eq!(Governor::new(4).prefill_threads(3), 3);
    }

    #[test]
    fn single_thread_never_changes() {
        let mut g = Governor::new(1);
        run(&mut g, 500, |_| 10.0);
        assert_eq!(g.current, 1);
    }
}
