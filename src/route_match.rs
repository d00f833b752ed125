//! Route patterns shared by every layer that applies to some routes only.
//!
//! One syntax everywhere (`paths = [...]` in any config section):
//!
//! | pattern | matches |
//! |---|---|
//! | `/me` | exactly `/me` |
//! | `/items/{id}` | `/items/` plus one non-empty segment, like an axum route template |
//! | `/files/{*rest}` | `/files/` plus one or more segments (axum's catch-all) |
//! | `/admin/*` | `/admin` itself and everything below it, but not `/administrator` |
//! | `/*` | every path |
//!
//! Patterns match the request path exactly as axum's router sees it (no decoding, no
//! dot-segment removal), so a pattern and the route it protects can never disagree:
//! `/%61dmin/x` neither matches `/admin/*` nor reaches an `/admin/...` handler.
//! Patterns are compiled once, when the layer is built.

use http::Method;

use crate::error::ConfigError;

/// One compiled path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// Exactly this path.
    Exact(String),
    /// An axum-style route template, split into segments.
    Template(Vec<Segment>),
    /// This path and everything below it (`/admin/*`); the prefix has no trailing `/`.
    Prefix(String),
}

/// A segment of a route template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Literal text.
    Literal(String),
    /// `{name}`: any one non-empty segment.
    Param,
    /// `{*name}`: one or more remaining segments; only last.
    CatchAll,
}

impl PathPattern {
    /// Parses a pattern; the error message says what is wrong.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if !pattern.starts_with('/') {
            return Err(format!("path pattern {pattern:?} must start with '/'"));
        }
        if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("path pattern {pattern:?} contains white space"));
        }
        if let Some(prefix) = pattern.strip_suffix("/*") {
            if prefix.contains('*') || prefix.contains('{') {
                return Err(format!(
                    "path pattern {pattern:?}: a prefix glob cannot contain other wildcards"
                ));
            }
            return Ok(Self::Prefix(prefix.to_owned()));
        }
        if pattern.contains('*') && !pattern.contains("{*") {
            return Err(format!(
                "path pattern {pattern:?}: '*' is only allowed as a final '/*' or in '{{*name}}'"
            ));
        }
        if !pattern.contains('{') && !pattern.contains('}') {
            return Ok(Self::Exact(pattern.to_owned()));
        }
        let parts: Vec<&str> = pattern[1..].split('/').collect();
        let last = parts.len() - 1;
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if let Some(name) = inner.strip_prefix('*') {
                    if i != last {
                        return Err(format!(
                            "path pattern {pattern:?}: a catch-all must be the last segment"
                        ));
                    }
                    check_param_name(pattern, name)?;
                    segments.push(Segment::CatchAll);
                } else {
                    check_param_name(pattern, inner)?;
                    segments.push(Segment::Param);
                }
            } else if part.contains('{') || part.contains('}') {
                return Err(format!(
                    "path pattern {pattern:?}: a parameter must be a whole segment like {{id}}"
                ));
            } else {
                segments.push(Segment::Literal((*part).to_owned()));
            }
        }
        Ok(Self::Template(segments))
    }

    /// Whether `path` (the request URI's path) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => p == path,
            Self::Prefix(prefix) => match path.strip_prefix(prefix.as_str()) {
                Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
                None => false,
            },
            Self::Template(segments) => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                // Split as bytes: `/` never occurs inside a UTF-8 sequence, and a byte
                // loop beats the `char` searcher on segments this short.
                let mut parts = rest.as_bytes().split(|&b| b == b'/');
                for segment in segments {
                    match segment {
                        Segment::CatchAll => {
                            return parts.next().is_some_and(|first| !first.is_empty());
                        }
                        Segment::Param => match parts.next() {
                            Some(p) if !p.is_empty() => {}
                            _ => return false,
                        },
                        Segment::Literal(lit) => match parts.next() {
                            Some(p) if p == lit.as_bytes() => {}
                            _ => return false,
                        },
                    }
                }
                parts.next().is_none()
            }
        }
    }
}

fn check_param_name(pattern: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "path pattern {pattern:?}: parameter names are letters, digits and '_'"
        ));
    }
    Ok(())
}

/// A compiled set of path patterns plus an optional method filter.
///
/// An empty path list matches every path; an empty method list matches every method.
#[derive(Debug, Clone, Default)]
pub struct RouteMatcher {
    patterns: Vec<PathPattern>,
    methods: Vec<Method>,
}

impl RouteMatcher {
    /// A matcher that matches every request.
    pub fn any() -> Self {
        Self::default()
    }

    /// Compiles `paths` and `methods` from config; `key` is the dotted config key of the
    /// rule (e.g. `auth.rules[1]`), used to name problems as `key.paths[i]`.
    pub fn compile(key: &str, paths: &[String], methods: &[String]) -> Result<Self, ConfigError> {
        let mut errors = ConfigError::default();
        let mut patterns = Vec::with_capacity(paths.len());
        for (i, p) in paths.iter().enumerate() {
            match PathPattern::parse(p) {
                Ok(pattern) => patterns.push(pattern),
                Err(msg) => errors.push(format!("{key}.paths[{i}]"), msg),
            }
        }
        let mut parsed_methods = Vec::with_capacity(methods.len());
        for (i, m) in methods.iter().enumerate() {
            match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(method) => parsed_methods.push(method),
                Err(_) => errors.push(
                    format!("{key}.methods[{i}]"),
                    format!("{m:?} is not an HTTP method"),
                ),
            }
        }
        errors.and_ok(Self {
            patterns,
            methods: parsed_methods,
        })
    }

    /// Builds a matcher from already-parsed patterns (for code-first builders).
    pub fn from_patterns(patterns: Vec<PathPattern>, methods: Vec<Method>) -> Self {
        Self { patterns, methods }
    }

    /// Whether a request with this method and path is selected.
    #[inline]
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && (self.patterns.is_empty() || self.patterns.iter().any(|p| p.matches(path)))
    }

    /// Whether only the path part matches (ignoring methods).
    #[inline]
    pub fn matches_path(&self, path: &str) -> bool {
        self.patterns.is_empty() || self.patterns.iter().any(|p| p.matches(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, path: &str) -> bool {
        PathPattern::parse(p).unwrap().matches(path)
    }

    #[test]
    fn exact() {
        assert!(m("/me", "/me"));
        assert!(!m("/me", "/me/"));
        assert!(!m("/me", "/mex"));
    }

    #[test]
    fn template() {
        assert!(m("/items/{id}", "/items/42"));
        assert!(!m("/items/{id}", "/items/"));
        assert!(!m("/items/{id}", "/items"));
        assert!(!m("/items/{id}", "/items/42/x"));
        assert!(m("/a/{x}/b", "/a/1/b"));
        assert!(!m("/a/{x}/b", "/a/1/c"));
        assert!(m("/files/{*rest}", "/files/a/b/c"));
        assert!(!m("/files/{*rest}", "/files/"));
        assert!(!m("/files/{*rest}", "/files"));
    }

    #[test]
    fn prefix_glob_covers_the_prefix_itself_but_not_siblings() {
        assert!(m("/admin/*", "/admin"));
        assert!(m("/admin/*", "/admin/"));
        assert!(m("/admin/*", "/admin/stats/x"));
        assert!(!m("/admin/*", "/administrator"));
        assert!(!m("/admin/*", "/%61dmin/stats"));
        assert!(m("/*", "/"));
        assert!(m("/*", "/anything/at/all"));
    }

    #[test]
    fn bad_patterns_are_reported_with_their_keys() {
        let err = RouteMatcher::compile(
            "auth.rules[0]",
            &[
                "nope".into(),
                "/a/*/b".into(),
                "/x/{a-b}".into(),
                "/ok".into(),
            ],
            &["GET".into(), "BAD METHOD".into()],
        )
        .unwrap_err();
        assert!(err.has_key("auth.rules[0].paths[0]"));
        assert!(err.has_key("auth.rules[0].paths[1]"));
        assert!(err.has_key("auth.rules[0].paths[2]"));
        assert!(err.has_key("auth.rules[0].methods[1]"));
        assert_eq!(err.problems().len(), 4);
    }

    #[test]
    fn methods_filter() {
        let r = RouteMatcher::compile("r", &["/items/{id}".into()], &["put".into()]).unwrap();
        assert!(r.matches(&Method::PUT, "/items/1"));
        assert!(!r.matches(&Method::GET, "/items/1"));
        assert!(RouteMatcher::any().matches(&Method::DELETE, "/x"));
    }
}
