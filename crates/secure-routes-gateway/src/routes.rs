//! Route patterns and the table that picks the most specific one for a normalized path.
//!
//! A pattern is a path whose segments are literals, `{name}` (exactly one non-empty segment)
//! or, last, `{*name}` (the rest: zero or more segments). The most specific matching route
//! wins: an exact pattern (no parameters) first, then the longest literal prefix (the bytes
//! before the first `{`), then fewer parameters. Two patterns that rank the same and can match
//! one path are a configuration error, found when the table is built, so which policy guards
//! a path never depends on the order of the file.
//!
//! Two choices lean towards protection, because an unmatched path falls to the default
//! (usually weaker) policy while the upstream may still serve it:
//!
//! * `{*rest}` also matches nothing: `/admin/{*rest}` guards `/admin` itself;
//! * a trailing `/` does not change the match: `/admin/` is `/admin` (Express and many other
//!   servers answer both alike).
//!
//! Matching is case-sensitive, as Next.js's and most upstreams' routing is.
//!
//! ```
//! use secure_routes_gateway::routes::RouteTable;
//!
//! let table = RouteTable::new(["/api/user/{*rest}", "/api/user/profile", "/api/{name}"]).unwrap();
//! assert_eq!(table.find("/api/user/profile"), Some(1)); // exact first
//! assert_eq!(table.find("/api/user/notes/7"), Some(0)); // longest literal prefix
//! assert_eq!(table.find("/api/user"), Some(0)); // `{*rest}` matches nothing too
//! assert_eq!(table.find("/api/other/"), Some(2)); // a trailing slash does not matter
//! assert_eq!(table.find("/health"), None); // the default policy's
//! ```

use std::collections::HashMap;

/// One route pattern, parsed.
///
/// ```
/// use secure_routes_gateway::routes::Pattern;
/// let p = Pattern::parse("/api/user/{id}/{*rest}").unwrap();
/// assert_eq!(p.literal_prefix(), 10);
/// assert_eq!(p.parameters(), 2);
/// assert!(Pattern::parse("/api/{*rest}/x").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    segments: Vec<Segment>,
    literal_prefix: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Rest,
}

/// Why a pattern or a table was refused; `route` is the index of the offending pattern in
/// the order given.
///
/// ```
/// use secure_routes_gateway::routes::RouteTable;
/// let errors = RouteTable::new(["/a/{x}", "/a/{y}"]).unwrap_err();
/// assert_eq!(errors[0].route, 1);
/// assert!(errors[0].message.contains("ties with route 0"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("route {route}: {message}")]
pub struct RouteError {
    /// Index of the pattern in the list given to [`RouteTable::new`] (0 for [`Pattern::parse`]).
    pub route: usize,
    /// What is wrong, for a person.
    pub message: String,
}

impl Pattern {
    /// Parses `source` (see the module docs for the syntax). It must be a normalized path:
    /// no empty or dot segments, no trailing `/` (except `/` itself), no escapes that
    /// [`normalize`](crate::path::normalize) would change.
    pub fn parse(source: &str) -> Result<Pattern, RouteError> {
        let fail = |message: String| RouteError { route: 0, message };
        if !source.starts_with('/') {
            return Err(fail(format!("{source:?} does not start with '/'")));
        }
        if source != "/" && source.ends_with('/') {
            return Err(fail(format!(
                "{source:?} ends with '/' (a trailing slash never changes the match; drop it)"
            )));
        }
        let mut segments = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        let pieces: Vec<&str> = if source == "/" {
            Vec::new()
        } else {
            source[1..].split('/').collect()
        };
        for (i, piece) in pieces.iter().enumerate() {
            let segment = if let Some(name) =
                piece.strip_prefix("{*").and_then(|p| p.strip_suffix('}'))
            {
                if i + 1 != pieces.len() {
                    return Err(fail(format!(
                        "{source:?}: {{*{name}}} must be the last segment"
                    )));
                }
                names.push(name);
                Segment::Rest
            } else if let Some(name) = piece.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                names.push(name);
                Segment::One
            } else {
                if piece.is_empty() || *piece == "." || *piece == ".." {
                    return Err(fail(format!(
                        "{source:?} has an empty or dot segment (patterns are normalized paths)"
                    )));
                }
                if piece.contains(['{', '}']) {
                    return Err(fail(format!(
                        "{source:?}: a parameter must be a whole segment ({{name}} or {{*name}})"
                    )));
                }
                Segment::Literal((*piece).to_owned())
            };
            segments.push(segment);
        }
        if let Some(bad) = names
            .iter()
            .find(|n| n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return Err(fail(format!(
                "{source:?}: parameter name {bad:?} must be letters, digits or '_'"
            )));
        }
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return Err(fail(format!(
                    "{source:?}: parameter {name:?} appears twice"
                )));
            }
        }
        // Every literal must be spelled as a normalized path spells it, or the pattern could
        // never match one and its route would silently fall to the default policy.
        let literals = segments.iter().fold(String::new(), |mut s, segment| {
            s.push('/');
            s.push_str(match segment {
                Segment::Literal(l) => l,
                Segment::One | Segment::Rest => "p",
            });
            s
        });
        let literals = if literals.is_empty() {
            "/".to_owned()
        } else {
            literals
        };
        if crate::path::normalize(&literals).as_deref() != Ok(literals.as_str()) {
            return Err(fail(format!("{source:?} is not a normalized path")));
        }
        let literal_prefix = source.find('{').unwrap_or(source.len());
        Ok(Pattern {
            source: source.to_owned(),
            segments,
            literal_prefix,
        })
    }

    /// The pattern as written.
    ///
    /// ```
    /// # use secure_routes_gateway::routes::Pattern;
    /// assert_eq!(Pattern::parse("/a/{b}").unwrap().as_str(), "/a/{b}");
    /// ```
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Bytes before the first `{` (the whole pattern when it has no parameter).
    ///
    /// ```
    /// # use secure_routes_gateway::routes::Pattern;
    /// assert_eq!(Pattern::parse("/api/{x}").unwrap().literal_prefix(), 5);
    /// ```
    pub fn literal_prefix(&self) -> usize {
        self.literal_prefix
    }

    /// How many `{name}` and `{*name}` segments it has.
    ///
    /// ```
    /// # use secure_routes_gateway::routes::Pattern;
    /// assert_eq!(Pattern::parse("/exact").unwrap().parameters(), 0);
    /// ```
    pub fn parameters(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| !matches!(s, Segment::Literal(_)))
            .count()
    }

    /// Whether the normalized `path` matches (a trailing `/` ignored).
    ///
    /// ```
    /// # use secure_routes_gateway::routes::Pattern;
    /// let p = Pattern::parse("/files/{name}").unwrap();
    /// assert!(p.matches("/files/a.txt"));
    /// assert!(p.matches("/files/a.txt/"));
    /// assert!(!p.matches("/files"));
    /// assert!(!p.matches("/files/a/b"));
    /// ```
    pub fn matches(&self, path: &str) -> bool {
        let trimmed = path.strip_suffix('/').unwrap_or(path);
        let mut pieces = trimmed.split('/').skip(1).filter(|p| !p.is_empty());
        for segment in &self.segments {
            match segment {
                Segment::Rest => return true,
                Segment::One => {
                    if pieces.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if pieces.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        pieces.next().is_none()
    }

    /// Whether every path `other` matches, this pattern matches too.
    fn covers(&self, other: &Pattern) -> bool {
        let (mut a, mut b) = (self.segments.iter(), other.segments.iter());
        loop {
            match (a.next(), b.next()) {
                (Some(Segment::Rest), _) | (None, None) => return true,
                // `{x}` takes exactly one segment: not the zero or more of `{*r}`.
                (Some(Segment::One), Some(Segment::One | Segment::Literal(_))) => {}
                (Some(Segment::Literal(x)), Some(Segment::Literal(y))) if x == y => {}
                _ => return false,
            }
        }
    }

    /// Whether some path matches both patterns.
    fn overlaps(&self, other: &Pattern) -> bool {
        let (mut a, mut b) = (self.segments.iter(), other.segments.iter());
        loop {
            match (a.next(), b.next()) {
                (None, None) | (Some(Segment::Rest), _) | (_, Some(Segment::Rest)) => return true,
                (None, Some(_)) | (Some(_), None) => return false,
                (Some(Segment::Literal(x)), Some(Segment::Literal(y))) if x != y => return false,
                _ => {}
            }
        }
    }
}

/// Patterns in the order given, with the lookup that picks the most specific match.
///
/// ```
/// use secure_routes_gateway::routes::RouteTable;
/// let table = RouteTable::new(["/a/{x}", "/a/b"]).unwrap();
/// assert_eq!(table.find("/a/b"), Some(1));
/// assert_eq!(table.find("/a/c"), Some(0));
/// assert_eq!(table.pattern(0).as_str(), "/a/{x}");
/// ```
#[derive(Clone, Debug)]
pub struct RouteTable {
    patterns: Vec<Pattern>,
    exact: HashMap<String, usize>,
    /// Indexes of patterns with parameters, most specific first.
    ranked: Vec<usize>,
}

impl RouteTable {
    /// Parses every pattern and checks the table, reporting every problem at once (with the
    /// index of each offending pattern): a bad pattern, two equal exact patterns, two
    /// patterns that rank the same and overlap.
    pub fn new<'a>(
        sources: impl IntoIterator<Item = &'a str>,
    ) -> Result<RouteTable, Vec<RouteError>> {
        let mut errors = Vec::new();
        let mut patterns: Vec<Option<Pattern>> = Vec::new();
        for (route, source) in sources.into_iter().enumerate() {
            match Pattern::parse(source) {
                Ok(p) => patterns.push(Some(p)),
                Err(e) => {
                    errors.push(RouteError { route, ..e });
                    patterns.push(None);
                }
            }
        }
        let mut exact = HashMap::new();
        let mut ranked: Vec<usize> = Vec::new();
        for (i, pattern) in patterns.iter().enumerate() {
            let Some(p) = pattern else { continue };
            if p.parameters() == 0 {
                if let Some(first) = exact.insert(p.source.clone(), i) {
                    errors.push(RouteError {
                        route: i,
                        message: format!("{:?} is also route {first}", p.source),
                    });
                }
                continue;
            }
            for &j in &ranked {
                let Some(q) = &patterns[j] else { continue };
                if p.literal_prefix != q.literal_prefix || !p.overlaps(q) {
                    continue;
                }
                // With the same literal prefix the one with fewer parameters ranks first; if
                // it matches every path the other does, the other can never be chosen (a
                // protected `/t/{id}/admin/{*rest}` behind a public `/t/{*rest}`).
                let (first, second, first_i, second_i) = if p.parameters() < q.parameters() {
                    (p, q, i, j)
                } else {
                    (q, p, j, i)
                };
                if first.parameters() != second.parameters() && first.covers(second) {
                    errors.push(RouteError {
                        route: second_i,
                        message: format!(
                            "{:?} is never used: route {first_i} ({:?}) ranks first (same literal \
                             prefix, fewer parameters) and matches every path it does",
                            second.source, first.source
                        ),
                    });
                }
                if p.parameters() == q.parameters() {
                    errors.push(RouteError {
                        route: i,
                        message: format!(
                            "{:?} ties with route {j} ({:?}): same literal prefix and number of \
                             parameters, and one path can match both",
                            p.source, q.source
                        ),
                    });
                }
            }
            ranked.push(i);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let patterns: Vec<Pattern> = patterns.into_iter().flatten().collect();
        ranked.sort_by_key(|&i| {
            let p = &patterns[i];
            (std::cmp::Reverse(p.literal_prefix), p.parameters(), i)
        });
        Ok(RouteTable {
            patterns,
            exact,
            ranked,
        })
    }

    /// The index of the most specific pattern matching the normalized `path`, or `None`
    /// (the default policy's path).
    pub fn find(&self, path: &str) -> Option<usize> {
        let trimmed = match path.strip_suffix('/') {
            Some(t) if !t.is_empty() => t,
            _ => path,
        };
        if let Some(&i) = self.exact.get(trimmed) {
            return Some(i);
        }
        self.ranked
            .iter()
            .copied()
            .find(|&i| self.patterns[i].matches(path))
    }

    /// The pattern at `index` (as given to [`new`](Self::new)).
    ///
    /// # Panics
    ///
    /// If `index` is not below [`len`](Self::len).
    pub fn pattern(&self, index: usize) -> &Pattern {
        &self.patterns[index]
    }

    /// How many patterns the table has.
    ///
    /// ```
    /// # use secure_routes_gateway::routes::RouteTable;
    /// assert_eq!(RouteTable::new(["/a", "/b/{*r}"]).unwrap().len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether the table has no pattern (every path gets the default policy).
    ///
    /// ```
    /// # use secure_routes_gateway::routes::RouteTable;
    /// assert!(RouteTable::new([]).unwrap().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specificity_exact_then_longest_literal_prefix_then_fewer_parameters() {
        let t = RouteTable::new([
            "/{*all}",
            "/api/{*rest}",
            "/api/user/{id}",
            "/api/user/{id}/{*rest}",
            "/api/user/me",
        ])
        .unwrap();
        assert_eq!(t.find("/api/user/me"), Some(4));
        assert_eq!(t.find("/api/user/7"), Some(2));
        assert_eq!(t.find("/api/user/7/notes"), Some(3));
        assert_eq!(t.find("/api/other"), Some(1));
        assert_eq!(t.find("/api"), Some(1));
        assert_eq!(t.find("/"), Some(0));
        assert_eq!(t.find("/index.html"), Some(0));
    }

    #[test]
    fn ties_duplicates_and_bad_patterns_are_all_reported() {
        let errors = RouteTable::new([
            "/a/{x}",
            "/a/{y}",
            "/b",
            "/b",
            "/c/{*r}/d",
            "c",
            "/d/",
            "/e/{x}{y}",
            "/f/{x}/{x}",
            "/g//h",
            "/h/%61",
        ])
        .unwrap_err();
        let routes: Vec<usize> = errors.iter().map(|e| e.route).collect();
        assert_eq!(routes, vec![4, 5, 6, 7, 8, 9, 10, 1, 3], "{errors:#?}");
    }

    #[test]
    fn a_route_that_a_broader_one_always_takes_is_an_error() {
        for (protected, broad) in [
            ("/tenants/{id}/admin/{*rest}", "/tenants/{*rest}"),
            ("/{tenant}/admin/{*r}", "/{*r}"),
            ("/t/{a}/{b}", "/t/{*r}"),
        ] {
            let errors = RouteTable::new([protected, broad]).unwrap_err();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].route, 0, "{errors:?}");
            assert!(errors[0].message.contains("never used"), "{errors:?}");
        }
        // Partly overlapping is fine: each keeps the paths where it is the most specific.
        let t = RouteTable::new(["/t/{id}/{*rest}", "/t/{id}/admin"]).unwrap();
        assert_eq!(t.find("/t/1/admin"), Some(1));
        assert_eq!(t.find("/t/1/other"), Some(0));
        assert_eq!(t.find("/t/1"), Some(0));
    }

    #[test]
    fn a_pattern_must_be_spelled_as_a_normalized_path() {
        for bad in [
            "/%61dmin/{*rest}",
            "/q/%e2%82%ac/{x}",
            "/a b/{x}",
            "/a;b/{x}",
            "/{x}/../y",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
        assert!(Pattern::parse("/q/%E2%82%AC/{x}").is_ok());
    }

    #[test]
    fn same_rank_without_overlap_is_no_tie() {
        // Same literal prefix ("/a/") and one parameter each, but no path matches both.
        let t = RouteTable::new(["/a/{x}/b", "/a/{x}/c"]).unwrap();
        assert_eq!(t.find("/a/1/b"), Some(0));
        assert_eq!(t.find("/a/1/c"), Some(1));
        assert_eq!(t.find("/a/1/d"), None);
    }

    #[test]
    fn a_protected_prefix_covers_its_root_and_trailing_slashes() {
        let t = RouteTable::new(["/admin/{*rest}"]).unwrap();
        for path in ["/admin", "/admin/", "/admin/users", "/admin/users/"] {
            assert_eq!(t.find(path), Some(0), "{path}");
        }
        assert_eq!(t.find("/administrator"), None);
        assert_eq!(t.find("/Admin"), None);
    }
}
