//! Load progress: a throttled, monotone callback, and the byte accounting that drives it while weights are
//! materialised. An error from the callback cancels the load.

use crate::error::{BoxError, Error, Result};

/// The smallest progress increase worth a callback (SPEC §4: about every 1%).
const PROGRESS_STEP: f32 = 0.01;

/// The progress callback type: a fraction in `[0, 1]`; an error cancels the load.
pub type ProgressFn<'a> = dyn FnMut(f32) -> std::result::Result<(), BoxError> + 'a;

/// Throttled, monotone progress: 0.0 first, increases of at least 1%, exactly 1.0 last.
pub struct Progress<'a> {
    callback: Option<&'a mut ProgressFn<'a>>,
    last: f32,
}

impl<'a> Progress<'a> {
    /// Wrap an optional callback.
    pub fn new(callback: Option<&'a mut ProgressFn<'a>>) -> Self {
        Progress { callback, last: -1.0 }
    }

    fn send(&mut self, value: f32) -> Result<()> {
        self.last = value;
        match self.callback.as_mut() {
            Some(cb) => cb(value).map_err(Error::Cancelled),
            None => Ok(()),
        }
    }

    /// Report 0.0.
    pub fn start(&mut self) -> Result<()> {
        self.send(0.0)
    }

    /// Report `fraction` if it moved enough; 1.0 is kept for `finish`.
    pub fn update(&mut self, fraction: f32) -> Result<()> {
        let fraction = fraction.clamp(0.0, 0.999);
        if fraction - self.last >= PROGRESS_STEP {
            self.send(fraction)?;
        }
        Ok(())
    }

    /// Report exactly 1.0.
    pub fn finish(&mut self) -> Result<()> {
        self.send(1.0)
    }
}

/// Walks a list of byte spans, reporting progress as each span is materialised.
pub struct ChunkedLoad<'p, 'a> {
    progress: &'p mut Progress<'a>,
    total: u64,
    done: u64,
    base: f32,
    weight: f32,
}

impl<'p, 'a> ChunkedLoad<'p, 'a> {
    /// Progress over `[base, base + weight)` of the bar, for `total` bytes.
    pub fn new(progress: &'p mut Progress<'a>, total: u64, base: f32, weight: f32) -> Self {
        ChunkedLoad { progress, total: total.max(1), done: 0, base, weight }
    }

    /// Record `bytes` more as loaded; an error from the callback cancels.
    pub fn advance(&mut self, bytes: u64) -> Result<()> {
        self.done += bytes;
        let f = self.base + self.weight * (self.done as f32 / self.total as f32);
        self.progress.update(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_monotone_and_throttled() {
        let mut seen = Vec::new();
        {
            let mut cb = |v: f32| -> std::result::Result<(), BoxError> {
                seen.push(v);
                Ok(())
            };
            let mut p = Progress::new(Some(&mut cb));
            p.start().unwrap();
            let mut chunks = ChunkedLoad::new(&mut p, 10_000, 0.0, 1.0);
            for _ in 0..10_000 {
                chunks.advance(1).unwrap();
            }
            p.finish().unwrap();
        }
        assert_eq!(seen[0], 0.0);
        assert_eq!(*seen.last().unwrap(), 1.0);
        assert!(seen.windows(2).all(|w| w[1] > w[0]));
        assert!(seen.len() <= 102, "{} calls", seen.len());
    }

    #[test]
    fn callback_error_cancels() {
        let mut cb = |v: f32| -> std::result::Result<(), BoxError> {
            if v > 0.5 {
                Err("stop".into())
            } else {
                Ok(())
            }
        };
        let mut p = Progress::new(Some(&mut cb));
        p.start().unwrap();
        let err = (0..100).try_for_each(|i| p.update(i as f32 / 100.0)).unwrap_err();
        assert!(matches!(err, Error::Cancelled(_)));
    }
}
