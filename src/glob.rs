//! A tiny glob matcher for model ids: `*` matches any run of characters (also none), `?` exactly
//! one; every other character matches itself. Used by discovery filters and key allow-lists.

/// True when `text` matches `pattern` as a whole.
pub fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was seen and how much text it had taken: on a mismatch it takes one
    // more character. One star's position is enough (no exponential backtracking).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// True when `text` matches any of `patterns`.
pub fn any(patterns: &[String], text: &str) -> bool {
    patterns.iter().any(|p| matches(p, text))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn glob_table() {
        let cases = [
            ("*", "", true),
            ("*", "anything/at:all", true),
            ("", "", true),
            ("", "a", false),
            ("llama3", "llama3", true),
            ("llama3", "llama3.1", false),
            ("llama*", "llama3.1:8b", true),
            ("llama*", "codellama", false),
            ("*llama*", "codellama:7b", true),
            ("*:latest", "qwen2.5:latest", true),
            ("*:latest", "qwen2.5:7b", false),
            ("qwen?.5*", "qwen2.5:7b", true),
            ("qwen?.5*", "qwen.5", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("a*b", "abab", true),
            ("ollama/*", "ollama/llama3", true),
            ("ollama/*", "vllm/llama3", false),
            ("é?", "éü", true),
            ("**a", "a", true),
            (
                "*a*a*a*a*b",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                false,
            ),
        ];
        for (p, t, want) in cases {
            assert_eq!(matches(p, t), want, "{:?} vs {:?}", p, t);
        }
    }
}
