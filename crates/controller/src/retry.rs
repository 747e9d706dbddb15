//! Bounded exponential backoff for calls that may fail transiently.

use std::future::Future;
use std::time::Duration;

/// Exponential backoff with a cap and jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Give up after this many attempts (`None`: never).
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(3),
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (1-based), doubling up to `max`, with up to
    /// 20% random jitter so many clients do not retry in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let base = exp.min(self.max);
        let jitter = rand::random::<f64>() * 0.2;
        base.mul_f64(1.0 - jitter)
    }
}

/// Runs `call` until it succeeds, fails with an error `is_transient` rejects, or the
/// attempts run out. Logs each retry at `warn` with `what`.
pub async fn retry<T, E, F, Fut>(
    what: &str,
    backoff: &Backoff,
    is_transient: impl Fn(&E) -> bool,
    mut call: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if is_transient(&e) && backoff.max_attempts.is_none_or(|m| attempt < m) => {
                let delay = backoff.delay(attempt);
                if attempt == 1 || attempt.is_power_of_two() {
                    tracing::warn!(%what, attempt, error = %e, ?delay, "call failed, retrying");
                }
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn delay_doubles_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(350),
            max_attempts: None,
        };
        assert!(b.delay(1) <= Duration::from_millis(100));
        assert!(b.delay(1) >= Duration::from_millis(80));
        assert!(b.delay(2) >= Duration::from_millis(160));
        assert!(b.delay(10) <= Duration::from_millis(350));
        assert!(b.delay(40) >= Duration::from_millis(280));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_until_success_and_stops_on_permanent() {
        let calls = AtomicU32::new(0);
        let out: Result<u32, String> = retry(
            "t",
            &Backoff::default(),
            |e: &String| e == "again",
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 3 {
                    Err("again".to_string())
                } else {
                    Ok(n)
                }
            },
        )
        .await;
        assert_eq!(out, Ok(3));

        let calls = AtomicU32::new(0);
        let out: Result<u32, String> = retry(
            "t",
            &Backoff::default(),
            |e: &String| e == "again",
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("fatal".to_string())
            },
        )
        .await;
        assert_eq!(out, Err("fatal".to_string()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts() {
        let calls = AtomicU32::new(0);
        let b = Backoff {
            max_attempts: Some(4),
            ..Backoff::default()
        };
        let out: Result<(), String> = retry(
            "t",
            &b,
            |_| true,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("down".to_string())
            },
        )
        .await;
        assert!(out.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }
}
