//! Model-name globs, as keys' `models` and `[[image_cost]]` write them: `*` stands for any run of
//! characters. Written here: model names need only this one wildcard, and the glob crates bring path
//! rules and regexes a model name has no use for.

/// Whether `name` matches `pattern`, where `*` stands for any run of characters (none included).
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    let mut pieces = pattern.split('*');
    let first = pieces.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else { return false };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else { return rest.is_empty() };
    for piece in middle {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_star_matches_any_run_of_characters() {
        use super::matches;
        for (pattern, name, expected) in [
            ("*", "", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "acb", false),
            ("*-vl", "qwen-vl", true),
            ("a*a", "a", false),
        ] {
            assert_eq!(matches(pattern, name), expected, "{pattern} ~ {name}");
        }
    }
}
