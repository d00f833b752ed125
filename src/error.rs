//! Configuration errors: every problem found at start-up, reported together.

use std::fmt;

/// One thing wrong with the configuration, named by its dotted key
/// (for example `rate_limit.policies[0].limit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted path of the offending key, e.g. `https.allowed_hosts[2]`.
    pub key: String,
    /// What is wrong with it, in words a user can act on.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Everything wrong with a configuration, found in one pass.
///
/// Palisade validates the whole configuration before it serves a request and
/// returns one `ConfigError` listing every problem, so a user fixes them all in one
/// round instead of one per restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    problems: Vec<ConfigProblem>,
}

impl ConfigError {
    /// An error with a single problem.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::default();
        e.push(key, message);
        e
    }

    /// Every problem found, in the order they were found.
    pub fn problems(&self) -> &[ConfigProblem] {
        &self.problems
    }

    /// Whether a problem is reported for exactly this key.
    pub fn has_key(&self, key: &str) -> bool {
        self.problems.iter().any(|p| p.key == key)
    }

    /// Records one more problem.
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// Appends all problems of `other`.
    pub fn merge(&mut self, other: ConfigError) {
        self.problems.extend(other.problems);
    }

    /// Keeps the value of a fallible step, or records its problems and returns `None`,
    /// so a builder can go on and find the remaining problems.
    pub fn collect<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.merge(e);
                None
            }
        }
    }

    /// Whether no problem was recorded.
    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    /// `Ok(())` when no problem was recorded, otherwise `Err(self)`.
    pub fn into_result(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }

    /// `Ok(value)` when no problem was recorded, otherwise `Err(self)`.
    pub fn and_ok<T>(self, value: T) -> Result<T, ConfigError> {
        self.into_result().map(|()| value)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid palisade configuration ({n} problem{})",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_lists_every_problem() {
        let mut e = ConfigError::new("a.b", "must be positive");
        e.push("c[1]", "not a CIDR");
        let text = e.to_string();
        assert!(text.starts_with("invalid palisade configuration (2 problems)"));
        assert!(text.contains("\n  - a.b: must be positive"));
        assert!(text.contains("\n  - c[1]: not a CIDR"));
    }

    #[test]
    fn collect_keeps_going_after_an_error() {
        let mut all = ConfigError::default();
        assert_eq!(all.collect(Ok::<_, ConfigError>(1)), Some(1));
        assert_eq!(all.collect::<u8>(Err(ConfigError::new("x", "bad"))), None);
        assert!(all.has_key("x"));
        assert!(all.into_result().is_err());
    }
}
