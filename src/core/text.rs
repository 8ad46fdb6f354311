//! A requester's text quoted back in a message: bounded, saying how long it was.

/// The most of a requester's own text a message quotes back.
pub const MAX_ECHOED: usize = 512;

/// `text` cut to `max` characters, saying how long it was.
pub fn clip(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        text.to_string()
    } else {
        let head: String = text.chars().take(max).collect();
        format!("{head}… ({count} characters)")
    }
}
