//! One prediction's state between fragments: the tokens so far, UTF-8 streaming (a character split over tokens
//! waits for its last byte), stop strings (text that could still become one is held back), and the stats.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::sampling::{PredictionConfig, REPEAT_LAST_N};

/// Why a prediction ended (LM Studio's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-generation token.
    EosFound,
    /// `maxTokens` reached.
    MaxPredictedTokensReached,
    /// A stop string appeared.
    StopStringFound,
    /// The context is full.
    ContextLengthReached,
    /// Cancelled by the caller.
    UserStopped,
}

impl StopReason {
    /// LM Studio's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EosFound => "eosFound",
            StopReason::MaxPredictedTokensReached => "maxPredictedTokensReached",
            StopReason::StopStringFound => "stopStringFound",
            StopReason::ContextLengthReached => "contextLengthReached",
            StopReason::UserStopped => "userStopped",
        }
    }
}

/// A piece of streamed output.
#[derive(Debug, Clone, Default)]
pub struct Fragment {
    /// Text (complete UTF-8; stop strings withheld).
    pub content: String,
    /// The token ids that produced it.
    pub tokens: Vec<u32>,
}

/// The state of one prediction between fragments.
pub struct GenerationState {
    pub(super) prompt: Vec<u32>,
    pub(super) config: PredictionConfig,
    pub(super) rng: StdRng,
    started: Instant,
    pub(super) first_token_at: Option<Instant>,
    finished_at: Option<Instant>,
    /// The next token's logits, once the model has produced them.
    pub(super) logits: Option<Vec<f32>>,
    generated: Vec<u32>,
    /// Bytes of predicted tokens that do not yet end a UTF-8 character.
    pending_bytes: Vec<u8>,
    text: String,
    /// How much of `text` went out in fragments.
    emitted: usize,
    /// Tokens predicted since the last fragment.
    fragment_tokens: Vec<u32>,
    stop_reason: Option<StopReason>,
}

/// Counters of a finished prediction (LM Studio's names).
#[derive(Debug, Clone)]
pub struct PredictionStats {
    /// Tokens in the prompt.
    pub prompt_tokens_count: usize,
    /// Tokens predicted (end-of-generation token excluded).
    pub predicted_tokens_count: usize,
    /// Seconds from the request to the first sampled token.
    pub time_to_first_token_sec: f64,
    /// Decode speed after the first token.
    pub tokens_per_second: f64,
    /// Why it ended.
    pub stop_reason: StopReason,
}

impl GenerationState {
    /// A prediction of `prompt` with `config`, nothing run yet.
    pub(super) fn new(prompt: Vec<u32>, config: PredictionConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed.unwrap_or_else(rand::random));
        GenerationState {
            prompt,
            config,
            rng,
            started: Instant::now(),
            first_token_at: None,
            finished_at: None,
            logits: None,
            generated: Vec::new(),
            pending_bytes: Vec::new(),
            text: String::new(),
            emitted: 0,
            fragment_tokens: Vec::new(),
            stop_reason: None,
        }
    }

    /// Take a predicted token whose detokenized bytes are `bytes`; true if a stop string ended the prediction.
    pub(super) fn push_token(&mut self, token: u32, bytes: &[u8]) -> bool {
        self.generated.push(token);
        self.fragment_tokens.push(token);
        self.pending_bytes.extend_from_slice(bytes);
        self.take_complete_utf8();
        self.check_stop_strings()
    }

    /// The repeat penalty's look-back window: the last `REPEAT_LAST_N` tokens of prompt and prediction.
    pub(super) fn recent(&self) -> Vec<u32> {
        let skip = (self.prompt.len() + self.generated.len()).saturating_sub(REPEAT_LAST_N);
        self.prompt.iter().chain(&self.generated).skip(skip).copied().collect()
    }

    pub(super) fn finish(&mut self, reason: StopReason) {
        if self.stop_reason.is_none() {
            self.stop_reason = Some(reason);
            self.finished_at = Some(Instant::now());
        }
    }

    /// Stop at the next step with "userStopped".
    pub fn cancel(&mut self) {
        self.finish(StopReason::UserStopped);
    }

    /// Whether the prediction has ended.
    pub fn is_done(&self) -> bool {
        self.stop_reason.is_some()
    }

    /// Move the longest valid UTF-8 prefix of the pending bytes into the text.
    fn take_complete_utf8(&mut self) {
        let valid = match std::str::from_utf8(&self.pending_bytes) {
            Ok(s) => s.len(),
            // An incomplete sequence at the end waits for the next token; invalid bytes become U+FFFD.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending_bytes.len(),
        };
        let head: Vec<u8> = self.pending_bytes.drain(..valid).collect();
        self.text.push_str(&String::from_utf8_lossy(&head));
    }

    /// Truncate at the first stop string and end the prediction; true if one was found.
    fn check_stop_strings(&mut self) -> bool {
        let from = self.emitted;
        let hit = self
            .config
            .stop_strings
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = hit {
            self.text.truncate(at);
            self.finish(StopReason::StopStringFound);
            return true;
        }
        false
    }

    /// Text that can no longer become part of a stop string, as a fragment.
    pub(super) fn emit_ready(&mut self) -> Option<Fragment> {
        let mut end = self.text.len();
        if self.stop_reason.is_none() {
            for s in self.config.stop_strings.iter().filter(|s| !s.is_empty()) {
                // Hold back the longest text suffix that is a prefix of a stop string.
                for (i, _) in self.text.char_indices().filter(|&(i, _)| i >= self.emitted) {
                    if s.starts_with(&self.text[i..]) {
                        end = end.min(i);
                        break;
                    }
                }
            }
        }
        if end <= self.emitted {
            // Nothing printable yet: the tokens ride along with the next fragment.
            return None;
        }
        let content = self.text[self.emitted..end].to_string();
        self.emitted = end;
        Some(Fragment { content, tokens: std::mem::take(&mut self.fragment_tokens) })
    }

    /// Whatever is left once the prediction has ended, as a last fragment.
    pub(super) fn flush(&mut self) -> Option<Fragment> {
        if !self.pending_bytes.is_empty() && self.stop_reason != Some(StopReason::StopStringFound) {
            let rest = std::mem::take(&mut self.pending_bytes);
            self.text.push_str(&String::from_utf8_lossy(&rest));
        }
        if self.emitted < self.text.len() || !self.fragment_tokens.is_empty() {
            let content = self.text[self.emitted..].to_string();
            self.emitted = self.text.len();
            return Some(Fragment { content, tokens: std::mem::take(&mut self.fragment_tokens) });
        }
        None
    }

    /// All text so far (after the prediction ends: the full content).
    pub fn content(&self) -> &str {
        &self.text
    }

    /// Predicted token ids.
    pub fn tokens(&self) -> &[u32] {
        &self.generated
    }

    /// Statistics; meaningful once the prediction has ended.
    pub fn stats(&self) -> PredictionStats {
        let end = self.finished_at.unwrap_or_else(Instant::now);
        let first = self.first_token_at.unwrap_or(end);
        let n = self.generated.len();
        let decode = end.duration_since(first).as_secs_f64();
        let tokens_per_second = if n > 1 && decode > 0.0 { (n - 1) as f64 / decode } else { 0.0 };
        PredictionStats {
            prompt_tokens_count: self.prompt.len(),
            predicted_tokens_count: n,
            time_to_first_token_sec: first.duration_since(self.started).as_secs_f64(),
            tokens_per_second,
            stop_reason: self.stop_reason.unwrap_or(StopReason::UserStopped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(stop_strings: &[&str]) -> GenerationState {
        let config = PredictionConfig {
            stop_strings: stop_strings.iter().map(|s| s.to_string()).collect(),
            seed: Some(0),
            ..PredictionConfig::default()
        };
        GenerationState::new(vec![1, 2, 3], config)
    }

    #[test]
    fn a_character_split_over_tokens_waits_for_its_last_byte() {
        let mut st = state(&[]);
        let e_acute = "é".as_bytes();
        assert!(!st.push_token(10, &e_acute[..1]));
        assert!(st.emit_ready().is_none(), "half a character is not emitted");
        assert!(!st.push_token(11, &e_acute[1..]));
        let f = st.emit_ready().unwrap();
        assert_eq!((f.content.as_str(), f.tokens.as_slice()), ("é", &[10, 11][..]));
        // Invalid bytes become U+FFFD at once; a truncated character at the end is flushed as one.
        st.push_token(12, b"\xff");
        assert_eq!(st.emit_ready().unwrap().content, "\u{fffd}");
        st.push_token(13, &e_acute[..1]);
        st.finish(StopReason::MaxPredictedTokensReached);
        let last = st.flush().unwrap();
        assert_eq!((last.content.as_str(), last.tokens.as_slice()), ("\u{fffd}", &[13][..]));
        assert_eq!(st.content(), "é\u{fffd}\u{fffd}");
        assert_eq!(st.stats().stop_reason, StopReason::MaxPredictedTokensReached);
    }

    #[test]
    fn text_that_may_start_a_stop_string_is_held_back_and_the_stop_string_is_never_emitted() {
        let mut st = state(&["</end>"]);
        assert!(!st.push_token(1, b"Hello <"));
        assert_eq!(st.emit_ready().unwrap().content, "Hello ");
        assert!(!st.push_token(2, b"/en"));
        assert!(st.emit_ready().is_none(), "\"</en\" may still become the stop string");
        assert!(st.push_token(3, b"d> more"));
        assert!(st.is_done());
        assert!(st.emit_ready().is_none());
        let last = st.flush().unwrap();
        assert_eq!((last.content.as_str(), last.tokens.as_slice()), ("", &[2, 3][..]));
        assert_eq!(st.content(), "Hello ");
        assert_eq!(st.tokens(), &[1, 2, 3]);
        let stats = st.stats();
        assert_eq!(
            (stats.stop_reason, stats.prompt_tokens_count, stats.predicted_tokens_count),
            (StopReason::StopStringFound, 3, 3)
        );
    }

    #[test]
    fn a_held_back_prefix_that_does_not_complete_is_emitted() {
        let mut st = state(&["STOP"]);
        st.push_token(1, b"ST");
        assert!(st.emit_ready().is_none());
        st.push_token(2, b"AY");
        assert_eq!(st.emit_ready().unwrap().content, "STAY");
        assert!(!st.is_done());
    }

    #[test]
    fn the_repeat_window_is_the_last_tokens_of_prompt_and_prediction() {
        let mut st = GenerationState::new((0..100).collect(), PredictionConfig::default());
        st.push_token(500, b"x");
        let recent = st.recent();
        assert_eq!(recent.len(), REPEAT_LAST_N);
        assert_eq!((recent[0], *recent.last().unwrap()), (100 + 1 - REPEAT_LAST_N as u32, 500));
    }
}
