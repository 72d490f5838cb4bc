//! Model-name globs, as keys' `models` and `[[image_cost]]` write them: `*` stands for any run of
//! characters. Written here: model names need only this one wildcard, and the glob crates bring path
//! rules and regexes a model name has no use for.

/// Whether `name` matches `pattern`, where `*` stands for any run of characters (none included).
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    // Split at the first and last `*`: the head and tail must match the name's ends; the pieces
    // between, in order, what lies between them.
    let Some((first, after)) = pattern.split_once('*') else { return pattern == name };
    let (middle, last) = after.rsplit_once('*').unwrap_or(("", after));
    let Some(mut rest) = name.strip_prefix(first) else { return false };
    if rest.len() < last.len() || !rest.ends_with(last) {
        return false;
    }
    rest = &rest[..rest.len() - last.len()];
    for piece in middle.split('*').filter(|piece| !piece.is_empty()) {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
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
            ("a*a", "aa", true),
            ("glm-4v", "glm-4v", true),
            ("glm-4v", "glm-4v-flash", false),
            ("*b*", "abc", true),
            ("a**c", "ac", true),
            ("ab*bc", "abc", false),
        ] {
            assert_eq!(matches(pattern, name), expected, "{pattern} ~ {name}");
        }
    }
}
