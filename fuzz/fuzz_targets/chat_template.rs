//! Compile and render arbitrary template source with a fixed chat: an error is fine, a panic, a hang
//! (fuel) or unbounded output (`MAX_OUTPUT_BYTES`) is not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelhost_core::text::template::{ChatMessage, ChatTemplate, MAX_OUTPUT_BYTES};

/// `ChatTemplate` catches minijinja's panics (constant folding `'x' * 10**20` overflows a capacity) and
/// turns them into errors; libfuzzer-sys's panic hook would abort on those before they are caught. A
/// silent hook lets the caught ones pass, while a panic that escapes is still caught by libfuzzer-sys
/// around the target and aborts.
fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}

fuzz_target!(|data: &[u8]| {
    init();
    let Ok(source) = std::str::from_utf8(data) else { return };
    let Ok(template) = ChatTemplate::new(source, "<s>", "</s>") else { return };
    let chat = [
        ChatMessage::new("system", "You are terse."),
        ChatMessage::new("user", "Hi {{ there }} <|im_start|>"),
        ChatMessage::new("assistant", "Hello."),
        ChatMessage::new("user", "Bye"),
    ];
    for add_generation_prompt in [true, false] {
        if let Ok(out) = template.render(&chat, add_generation_prompt) {
            assert!(out.len() <= MAX_OUTPUT_BYTES, "render wrote {} bytes", out.len());
        }
    }
});
